"""A whole local cloud (emulator, control plane, VM runner, agents) for end-to-end tests.

Started once per session through the same launcher `mn up` uses, on free ports, under a
temporary MN_HOME; stopped at the end, leaving no process behind.
"""

from __future__ import annotations

import contextlib
import json
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


@contextlib.contextmanager
def started_local_cloud(
    home: Path, *, server_env: dict[str, str] | None = None, database_url: str | None = None
) -> Iterator[dict]:
    """A local cloud under ``home`` on free ports, with the e2e timings; stopped after."""
    config = _localcloud.LocalCloudConfig(
        home=home,
        aws_port=free_port(),
        control_plane_port=free_port(),
        use_existing_aws=False,
        database_url=database_url,
        server_env={**E2E_SERVER_ENV, **(server_env or {})},
    )
    state = _localcloud.up(config, echo=lambda _m: None)
    try:
        yield {**state, "config": config}
    finally:
        _localcloud.down(config, echo=lambda _m: None)


@pytest.fixture(scope="session")
def local_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The session's local cloud; the SDK finds it through MN_HOME, as after `mn up`."""
    home = tmp_path_factory.mktemp("mn-home")
    # Agents cache blobs in this test session's home, where a test can inspect them.
    agent_env = json.dumps({"MN_AGENT_CACHE_DIR": str(home / "blobs")})
    with (
        started_local_cloud(home, server_env={"MN_SERVER_AGENT_EXTRA_ENV": agent_env}) as state,
        pytest.MonkeyPatch.context() as env,
    ):
        env.setenv("MN_HOME", str(home))
        env.delenv("MN_URL", raising=False)
        env.delenv("MN_API_KEY", raising=False)
        yield {**state, "blob_cache": home / "blobs"}


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
