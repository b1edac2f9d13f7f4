"""The docker-compose set-up in localstack/ (no Docker engine here: checked as a file)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "localstack"


def test_compose_pins_the_launchers_version_on_loopback_with_the_hooks_mounted() -> None:
    service = yaml.safe_load((FOLDER / "docker-compose.yml").read_text())["services"]["localstack"]

    pinned = re.search(
        r"^localstack-core\[runtime\]==(\S+)$",
        (FOLDER / "requirements-host.txt").read_text(),
        re.M,
    )
    assert pinned, "requirements-host.txt pins localstack-core[runtime]"
    # Docker users and the host-mode launcher run the same LocalStack.
    assert service["image"] == f"localstack/localstack:{pinned.group(1)}"
    assert service["ports"] == ["127.0.0.1:4566:4566"]

    # "source:target[:mode]": the hooks the launcher also runs are where LocalStack looks.
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in service["volumes"]}
    hooks = FOLDER / mounts["/etc/localstack/init/ready.d"]
    assert (hooks / "multinode.py").is_file()
