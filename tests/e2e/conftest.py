"""A whole local cloud (AWS endpoint, control plane, VM runner, agents) for end-to-end tests.

Every end-to-end test runs once per AWS target, its id ending in ``[emulator]`` or
``[localstack]``:

- ``emulator``: the embedded emulator (moto's server), as `mn up` starts it;
- ``localstack``: real LocalStack (the session's ``localstack_endpoint``, host mode),
  found by `mn up`'s launcher as a user's LocalStack would be, with DynamoDB on the
  embedded emulator beside it.

``MN_E2E_TARGETS=emulator`` (or ``localstack``, or both, comma-separated) picks targets;
``-k emulator`` works too. The local cloud is started once per session and target through
the same launcher `mn up` uses, on free ports, under a temporary MN_HOME; stopped at the
end, leaving no process behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import textwrap
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

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


TARGETS = ("emulator", "localstack")


def selected_targets() -> list[str]:
    """The targets named by ``MN_E2E_TARGETS`` (default: all), in a stable order."""
    raw = os.environ.get("MN_E2E_TARGETS", ",".join(TARGETS))
    names = [name.strip() for name in raw.split(",") if name.strip()]
    unknown = sorted(set(names) - set(TARGETS))
    if unknown or not names:
        raise pytest.UsageError(
            f"MN_E2E_TARGETS={raw!r}: use a comma-separated subset of {', '.join(TARGETS)}"
        )
    return [name for name in TARGETS if name in names]


@dataclass(frozen=True)
class AwsTarget:
    """Where a local cloud's AWS calls go: ``endpoint`` is None for a fresh emulator."""

    name: str
    endpoint: str | None = None


@pytest.fixture(scope="session", params=selected_targets(), autouse=True)
def aws_target(request: pytest.FixtureRequest) -> AwsTarget:
    """The AWS target of this run of the test (see the module docstring)."""
    if request.param == "localstack":
        return AwsTarget("localstack", request.getfixturevalue("localstack_endpoint"))
    return AwsTarget("emulator")


@contextlib.contextmanager
def started_local_cloud(
    home: Path,
    target: AwsTarget,
    *,
    server_env: dict[str, str] | None = None,
    database_url: str | None = None,
) -> Iterator[dict]:
    """A local cloud under ``home`` on free ports, with the e2e timings; stopped after.

    On LocalStack, each local cloud tags its instances with a cluster of its own, since
    several share the session's LocalStack.
    """
    if target.endpoint:
        aws = {
            "aws_port": urlsplit(target.endpoint).port,
            "use_existing_aws": True,
            "cluster": "e2e-" + uuid.uuid4().hex[:8],
        }
    else:
        aws = {"aws_port": free_port(), "use_existing_aws": False}
    config = _localcloud.LocalCloudConfig(
        home=home,
        control_plane_port=free_port(),
        gateway_port=free_port(),
        dynamodb_port=free_port(),
        database_url=database_url,
        server_env={**E2E_SERVER_ENV, **(server_env or {})},
        **aws,
    )
    state = _localcloud.up(config, echo=lambda _m: None)
    # The target in the test's id is the one in use: `mn up` never fell back silently.
    assert state["aws"] == ("localstack" if target.endpoint else "moto"), state
    try:
        yield {**state, "config": config}
    finally:
        _localcloud.down(config, echo=lambda _m: None)


@pytest.fixture(scope="session")
def local_cloud(tmp_path_factory: pytest.TempPathFactory, aws_target: AwsTarget) -> Iterator[dict]:
    """The session's local cloud; the SDK finds it through MN_HOME, as after `mn up`."""
    home = tmp_path_factory.mktemp("mn-home")
    # Agents cache blobs in this test session's home, where a test can inspect them.
    agent_env = json.dumps({"MN_AGENT_CACHE_DIR": str(home / "blobs")})
    with (
        started_local_cloud(
            home, aws_target, server_env={"MN_SERVER_AGENT_EXTRA_ENV": agent_env}
        ) as state,
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
