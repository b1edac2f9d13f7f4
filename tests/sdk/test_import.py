"""``import multinode`` stays light: the heavy side and cloudpickle load only on demand."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = [
    "fastapi",
    "sqlmodel",
    "sqlalchemy",
    "cloudpickle",
    "multinode_controlplane",
    "httpx",
    "rich",
]


def test_import_multinode_loads_no_heavy_module() -> None:
    script = f"import json, sys, multinode; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert json.loads(proc.stdout) == []


def test_wire_and_errors_import_without_cloudpickle() -> None:
    script = (
        "import sys; sys.modules['cloudpickle'] = None\n"
        "import multinode.wire, multinode.errors, multinode\n"
        "print('ok')"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
