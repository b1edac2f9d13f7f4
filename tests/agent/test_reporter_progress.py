"""Jobs' progress in the reporter: the latest value per attempt wins, and a value survives
reports the control plane refuses with 503 (the stub injects them over real HTTP)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from multinode.wire import AttemptProgress
from multinode_agent.client import ControlPlaneClient, Reachability
from multinode_agent.reporter import Reporter
from tests.agent.stub_controlplane import AGENT_TOKEN, StubControlPlane
from tests.support.procs import wait_until


@pytest.fixture
def stub() -> Iterator[StubControlPlane]:
    with StubControlPlane() as s:
        yield s


@pytest.fixture
def reporter(stub: StubControlPlane) -> Iterator[Reporter]:
    client = ControlPlaneClient(stub.url, token=AGENT_TOKEN, reach=Reachability(30))
    reporter = Reporter(
        client, interval_s=0.01, on_sent=lambda _ids: None, on_unauthorized=lambda: None
    )
    try:
        yield reporter
    finally:
        reporter.stop()
        client.close()


def progress(attempt_id: str, seq: int) -> AttemptProgress:
    return AttemptProgress.model_construct(
        attempt_id=attempt_id, fence=1, seq=seq, value=f"value {seq}".encode()
    )


def sent(stub: StubControlPlane) -> list[tuple[str, int, bytes]]:
    return [(p.attempt_id, p.seq, p.value) for r in list(stub.reports) for p in r.progress]


def test_only_the_latest_value_of_each_attempt_is_sent(
    stub: StubControlPlane, reporter: Reporter
) -> None:
    for seq in (1, 2, 3):
        reporter.set_progress(progress("att-a", seq))
    reporter.set_progress(progress("att-b", 1))
    assert reporter.pending() == 2
    reporter.start()

    wait_until(lambda: len(sent(stub)) == 2, timeout=10, what="the progress report")
    assert sorted(sent(stub)) == [("att-a", 3, b"value 3"), ("att-b", 1, b"value 1")]
    wait_until(lambda: reporter.pending() == 0, timeout=10, what="nothing left to send")


def test_progress_is_kept_through_failing_reports(
    stub: StubControlPlane, reporter: Reporter
) -> None:
    stub.failing_reports = 2
    reporter.set_progress(progress("att-a", 7))
    reporter.start()

    wait_until(lambda: sent(stub) == [("att-a", 7, b"value 7")], timeout=20, what="the value")
    assert stub.failing_reports == 0
