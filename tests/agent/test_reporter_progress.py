"""The reporter: jobs' progress (the latest value per attempt wins, and a value survives
reports the control plane refuses with 503, which the stub injects over real HTTP), and
how long results wait to share a report."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from multinode.wire import AttemptProgress, AttemptResult
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


def test_results_wait_longer_while_calls_queue_for_cpu(stub: StubControlPlane) -> None:
    queued = [True]  # calls wait here for CPU: a refill is not urgent
    client = ControlPlaneClient(stub.url, token=AGENT_TOKEN, reach=Reachability(30))
    reporter = Reporter(
        client,
        interval_s=0.01,
        busy=lambda: True,
        deep=lambda: queued[0],
        deep_interval_s=30.0,
        on_sent=lambda _ids: None,
        on_unauthorized=lambda: None,
    )
    reporter.start()
    try:
        for n in range(3):
            reporter.add_result(
                AttemptResult.model_construct(
                    attempt_id=f"att-{n}", fence=1, status="succeeded", output=b"x"
                )
            )
        # Far past interval_s, the results still wait to share a larger report...
        with pytest.raises(TimeoutError):
            wait_until(lambda: stub.reports != [], timeout=0.3, what="a report")
        # ...until no call waits for CPU any more: then they go within interval_s.
        queued[0] = False
        wait_until(lambda: stub.reports != [], timeout=10, what="the report")
        assert [len(r.results) for r in stub.reports] == [3]
    finally:
        reporter.stop()
        client.close()
