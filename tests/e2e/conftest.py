"""A whole local cloud (emulator, control plane, VM runner, agents) for end-to-end tests.

Started once per session through the same launcher `mn up` uses, on free ports, under a
temporary MN_HOME; stopped at the end, leaving no process behind.
"""

from __future__ import annotations

import json
import os
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from multinode import _localcloud
from tests.support.procs import free_port

# Short enough that lost-instance tests finish quickly, long enough for a loaded CI box.
E2E_SERVER_ENV = {
    "MN_SERVER_AGENT_LOST_AFTER_S": "4",
    "MN_SERVER_HEARTBEAT_INTERVAL_S": "1",
    "MN_SERVER_AGENT_POLL_TIMEOUT_S": "1",
    "MN_SERVER_PROVISIONER_INTERVAL_S": "0.2",
}


@pytest.fixture(scope="session")
def local_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    home = tmp_path_factory.mktemp("mn-home")
    config = _localcloud.LocalCloudConfig(
        home=home,
        aws_port=free_port(),
        control_plane_port=free_port(),
        use_existing_aws=False,
        # Agents cache blobs in this session's home, not in the developer's ~/.cache.
        server_env={
            **E2E_SERVER_ENV,
            "MN_SERVER_AGENT_EXTRA_ENV": json.dumps({"MN_AGENT_CACHE_DIR": str(home / "blobs")}),
        },
    )
    state = _localcloud.up(config, echo=lambda _m: None)
    state["blob_cache"] = home / "blobs"
    saved = {k: os.environ.get(k) for k in ("MN_HOME", "MN_URL", "MN_API_KEY")}
    os.environ["MN_HOME"] = str(home)
    os.environ.pop("MN_URL", None)
    os.environ.pop("MN_API_KEY", None)
    try:
        yield {**state, "config": config}
    finally:
        _localcloud.down(config, echo=lambda _m: None)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def write_app(tmp_path: Path) -> Callable[[str], Path]:
    """Write a user's app file (dedented source) and return its path."""

    def write(source: str, name: str | None = None) -> Path:
        path = tmp_path / f"{name or 'app_' + uuid.uuid4().hex[:8]}.py"
        path.write_text(textwrap.dedent(source))
        return path

    return write


@pytest.fixture
def app_name() -> str:
    return "e2e-" + uuid.uuid4().hex[:8]
