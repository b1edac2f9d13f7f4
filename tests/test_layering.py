"""The import rules of docs/architecture.md, checked in fresh interpreters."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# package -> (modules that must be importable, modules it must never load)
RULES = {
    "multinode": (
        ["multinode", "multinode.cli", "multinode.wire", "multinode.errors"],
        [
            "fastapi",
            "sqlmodel",
            "sqlalchemy",
            "uvicorn",
            "multinode_controlplane",
            "multinode_provisioner",
            "multinode_agent",
            "moto",
        ],
    ),
    "multinode_controlplane": (
        ["multinode_controlplane.app"],
        ["cloudpickle", "multinode_agent"],
    ),
    "multinode_provisioner": (
        [
            "multinode_provisioner.sizing",
            "multinode_provisioner.catalog",
            "multinode_provisioner.aws",
            "multinode_provisioner.vmrunner",
        ],
        ["multinode_controlplane", "multinode_agent", "fastapi", "cloudpickle"],
    ),
    "multinode_agent": (
        ["multinode_agent.agent"],
        ["multinode_controlplane", "multinode_provisioner", "fastapi", "sqlmodel"],
    ),
}

_BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = set({blocked!r})
    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED or name in BLOCKED:
                raise ImportError(f"layering: {{name}} must not be imported here")
            return None
    sys.meta_path.insert(0, Blocker())
    import importlib
    for module in {modules!r}:
        importlib.import_module(module)
    """
)


@pytest.mark.parametrize("package", sorted(RULES))
def test_package_never_imports_what_its_layer_forbids(package: str) -> None:
    modules, blocked = RULES[package]
    script = _BLOCKER.format(blocked=blocked, modules=modules)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_blocker_catches_a_forbidden_import() -> None:
    """The check itself can fail: importing a blocked module is reported."""
    script = _BLOCKER.format(blocked=["json"], modules=["json"])
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode != 0 and "layering: json" in proc.stderr


def test_control_plane_source_never_unpickles() -> None:
    """The control plane stores opaque bytes: no pickle module anywhere in its source."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "controlplane"
    offenders = [
        str(p)
        for p in root.rglob("*.py")
        if any(
            line.strip().startswith(
                ("import pickle", "from pickle", "import cloudpickle", "from cloudpickle")
            )
            for line in p.read_text().splitlines()
        )
    ]
    assert offenders == []
