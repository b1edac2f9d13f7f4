"""The agent under failures the real control plane cannot produce on demand.

Its normal work against the real control plane (results, logs, environment, cancel,
timeout, the blob cache, a refused registration) is tested in ``tests/e2e``
(``test_functions_e2e.py``, ``test_sdk_e2e.py``, ``test_agent_e2e.py``). Here it runs
in-process against :class:`StubControlPlane`, which injects 503s, rejected results, a
shutdown order and a revoked token; and as a process with no control plane at all.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from multinode.wire import Assignment, EnvironmentRef, PollResponse
from multinode_agent.agent import Agent, StopReason
from multinode_agent.settings import AgentSettings
from tests.agent import payloads
from tests.agent.conftest import blob_of
from tests.agent.stub_controlplane import BOOTSTRAP_TOKEN, StubControlPlane
from tests.support.procs import free_port, wait_until

_ids = itertools.count()


def assignment(
    stub: StubControlPlane, func: Any, *args: Any, timeout_s: float = 30.0, **kwargs: Any
) -> Assignment:
    blob_hash, blob = blob_of(func)
    stub.blobs[blob_hash] = blob
    n = next(_ids)
    return Assignment.model_construct(
        attempt_id=f"att-{n}",
        call_id=f"call-{n}",
        fence=n + 100,
        app="demo",
        function=func.__name__,
        version=1,
        blob_hash=blob_hash,
        input=cloudpickle.dumps((args, kwargs)),
        timeout_s=timeout_s,
        cpu=1.0,
        python_version=".".join(map(str, sys.version_info[:3])),
        cloudpickle_version=cloudpickle.__version__,
    )


class Running:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.reason: StopReason | None = None
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        self.reason = self.agent.run()

    def wait(self, timeout: float = 20.0) -> StopReason | None:
        self.thread.join(timeout)
        return self.reason


@pytest.fixture
def stub() -> Iterator[StubControlPlane]:
    with StubControlPlane() as s:
        yield s


def settings(url: str, tmp_path: Path, **overrides: Any) -> AgentSettings:
    values: dict[str, Any] = {
        "url": url,
        "bootstrap_token": BOOTSTRAP_TOKEN,
        "cache_dir": tmp_path / "blobs",
        "kill_grace_s": 0.5,
        "unreachable_limit_s": 30,
    }
    return AgentSettings(**(values | overrides))


@pytest.fixture
def running(stub: StubControlPlane, tmp_path: Path) -> Iterator[Running]:
    run = Running(Agent(settings(stub.url, tmp_path)))
    try:
        assert run.agent.registered.wait(20), "the agent never registered"
        yield run
    finally:
        run.agent.stop()
        run.wait()
        assert not run.thread.is_alive()


def test_reports_are_retried_until_the_server_takes_them(
    stub: StubControlPlane, running: Running
) -> None:
    stub.failing_reports = 3
    a = assignment(stub, payloads.add, 2, 2)
    stub.push(PollResponse(assignments=[a]))

    wait_until(lambda: a.attempt_id in stub.results(), timeout=20, what="the result")
    assert stub.failing_reports == 0
    assert cloudpickle.loads(stub.results()[a.attempt_id].output) == 4


def test_a_rejected_result_is_dropped(stub: StubControlPlane, running: Running) -> None:
    a = assignment(stub, payloads.add, 1, 2)
    stub.reject.add(a.attempt_id)
    stub.push(PollResponse(assignments=[a]))

    wait_until(lambda: a.attempt_id in stub.results(), timeout=20, what="the result")
    wait_until(
        lambda: running.agent.unreported_attempts == [],
        timeout=10,
        what="the attempt to be dropped",
    )
    sent = [r for report in stub.reports for r in report.results if r.attempt_id == a.attempt_id]
    assert len(sent) == 1


def test_shutdown_from_the_server_runs_the_shutdown_command(
    stub: StubControlPlane, tmp_path: Path
) -> None:
    marker = tmp_path / "powered-off"
    run = Running(Agent(settings(stub.url, tmp_path, shutdown_command=f"touch {marker}")))
    assert run.agent.registered.wait(20)

    stub.push(PollResponse(shutdown=True))

    assert run.wait() is StopReason.shutdown
    assert marker.exists()


def test_a_revoked_token_stops_the_agent(stub: StubControlPlane, tmp_path: Path) -> None:
    run = Running(Agent(settings(stub.url, tmp_path)))
    assert run.agent.registered.wait(20)

    stub.revoked = True

    assert run.wait() is StopReason.unauthorized


def test_the_agent_process_shuts_down_when_the_control_plane_is_unreachable(tmp_path: Path) -> None:
    marker = tmp_path / "powered-off"
    env = {
        **os.environ,
        "MN_AGENT_URL": f"http://127.0.0.1:{free_port()}",
        "MN_AGENT_BOOTSTRAP_TOKEN": BOOTSTRAP_TOKEN,
        "MN_AGENT_UNREACHABLE_LIMIT_S": "1",
        "MN_AGENT_CACHE_DIR": str(tmp_path / "blobs"),
        "MN_AGENT_SHUTDOWN_COMMAND": f"touch {marker}",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "multinode_agent"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert proc.returncode == 0, proc.stderr
    assert "unreachable for" in proc.stderr and "stopping workers and shutting down" in proc.stderr
    assert f"running shutdown command: touch {marker}" in proc.stderr
    assert marker.exists()


def test_work_beyond_the_slots_waits_and_is_given_back_if_no_slot_frees(
    stub: StubControlPlane, tmp_path: Path
) -> None:
    # Two vCPUs: two cpu=1 calls run; a third waits for a slot, and is given back
    # unstarted once it has waited prefetch_max_wait_s, so another instance can run it.
    release = tmp_path / "release"
    run = Running(Agent(settings(stub.url, tmp_path, prefetch_max_wait_s=0.5)))
    try:
        assert run.agent.registered.wait(20)
        blockers = [assignment(stub, payloads.print_then_wait, str(release)) for _ in range(2)]
        extra = assignment(stub, payloads.add, 1, 1)
        stub.push(PollResponse(assignments=[*blockers, extra]))
        wait_until(
            lambda: any(extra.attempt_id in r.released for r in stub.reports),
            timeout=20,
            what="the third call to be given back",
        )
        assert extra.attempt_id not in stub.results()  # it never ran
        release.write_text("go")
        wait_until(
            lambda: all(b.attempt_id in stub.results() for b in blockers),
            timeout=20,
            what="the two running calls to finish",
        )
        assert {stub.results()[b.attempt_id].status for b in blockers} == {"succeeded"}
    finally:
        run.agent.stop()
        run.wait()


def test_a_functions_environment_is_downloaded_once_and_its_packages_import(
    stub: StubControlPlane, running: Running, tmp_path: Path
) -> None:
    packed = tmp_path / "environment.tar.gz"
    module = tmp_path / "onlyhere.py"
    module.write_text("WHERE = 'the environment'\n")
    with tarfile.open(packed, "w:gz") as tar:
        tar.add(module, arcname="onlyhere.py")
    data = packed.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    stub.blobs[digest] = data
    stub.environments[("from_environment", 1)] = EnvironmentRef(
        id="e" * 64, url=f"{stub.url}/v1/blobs/{digest}", sha256=digest, size=len(data)
    )
    first, second = (assignment(stub, payloads.from_environment) for _ in range(2))
    stub.push(PollResponse(assignments=[first]))
    wait_until(lambda: first.attempt_id in stub.results(), timeout=20, what="the result")
    stub.push(PollResponse(assignments=[second]))
    wait_until(lambda: second.attempt_id in stub.results(), timeout=20, what="the result")
    for a in (first, second):
        assert cloudpickle.loads(stub.results()[a.attempt_id].output) == "the environment"
    assert len(stub.env_requests) == 1  # read once for the function's version


def test_an_environment_that_cannot_be_downloaded_fails_the_call(
    stub: StubControlPlane, running: Running
) -> None:
    stub.environments[("add", 1)] = EnvironmentRef(
        id="e" * 64, url=f"{stub.url}/v1/blobs/{'0' * 64}", sha256="0" * 64, size=1
    )
    a = assignment(stub, payloads.add, 2, 2)
    stub.push(PollResponse(assignments=[a]))
    wait_until(lambda: a.attempt_id in stub.results(), timeout=60, what="the failure")
    result = stub.results()[a.attempt_id]
    assert result.status == "failed" and "the function's packages" in result.reason
