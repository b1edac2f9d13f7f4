"""Jobs in a real worker process: generators driven to their end, progress throttled with
the latest value winning, the result rule, and failures while yielding."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import cloudpickle

from multinode_agent.worker import Outcome, Worker
from tests.agent import payloads
from tests.agent.conftest import make_job
from tests.support.procs import wait_until


def run_job(worker: Worker, job: Any, progress: list[tuple[int, Any]]) -> Outcome:
    return worker.run(
        job,
        on_logs=lambda _lines: None,
        on_progress=lambda seq, data: progress.append((seq, cloudpickle.loads(data))),
    )


def test_yielded_values_arrive_in_order_and_the_last_is_the_result(worker: Worker) -> None:
    progress: list[tuple[int, Any]] = []
    job = make_job(payloads.count_to, 5, kind="job", progress_interval_s=0)
    outcome = run_job(worker, job, progress)

    assert outcome.status == "succeeded"
    assert cloudpickle.loads(outcome.output) == 5  # returned None: the last value yielded
    assert progress[-1] == (5, 5)  # the latest is always sent before the result
    assert all(seq == value for seq, value in progress)
    assert [seq for seq, _ in progress] == sorted({seq for seq, _ in progress})


def test_a_returned_value_is_the_result(worker: Worker) -> None:
    progress: list[tuple[int, Any]] = []
    outcome = run_job(worker, make_job(payloads.count_and_return, 3, kind="job"), progress)

    assert cloudpickle.loads(outcome.output) == "3 done"
    assert progress[-1] == (3, 2)


def test_a_fast_generator_sends_one_value_per_interval(worker: Worker) -> None:
    progress: list[tuple[int, Any]] = []
    job = make_job(payloads.yield_fast, 1.0, kind="job", progress_interval_s=0.2)
    outcome = run_job(worker, job, progress)

    total = cloudpickle.loads(outcome.output)
    assert total > 10_000, "the generator should have yielded far more than was sent"
    # 1 s at one message per 0.2 s, the first at once and the last at the end.
    assert len(progress) <= 1.0 / 0.2 + 2
    assert progress[-1] == (total, total)


def test_a_value_yielded_before_a_pause_is_sent_during_the_pause(
    worker: Worker, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    progress: list[tuple[int, Any]] = []
    job = make_job(
        payloads.yield_twice_then_wait, str(release), kind="job", progress_interval_s=0.2
    )
    outcomes: list[Outcome] = []
    thread = threading.Thread(target=lambda: outcomes.append(run_job(worker, job, progress)))
    thread.start()
    try:
        # "second" replaced a pending value while the interval ran; it must still go out
        # while the job waits, not only when it ends.
        wait_until(lambda: (2, "second") in progress, timeout=10, what="the second value")
        assert not outcomes, "the job is still waiting for its release"
    finally:
        release.touch()
        thread.join(30)
    assert outcomes[0].status == "succeeded"


def test_an_unpicklable_value_fails_the_job_naming_its_step(worker: Worker, tmp_path: Path) -> None:
    marker = tmp_path / "closed"
    progress: list[tuple[int, Any]] = []
    outcome = run_job(
        worker, make_job(payloads.yield_unpicklable, str(marker), kind="job"), progress
    )

    assert outcome.status == "failed"
    assert outcome.error.type == "multinode.errors.SerializationError"
    assert "yielded at step 2" in outcome.error.message and "lock" in outcome.error.message
    assert progress == [(1, 1)]
    assert marker.read_text() == "closed", "the generator is closed, running its finally"


def test_an_exception_keeps_the_progress_and_a_traceback_from_the_generator(
    worker: Worker,
) -> None:
    progress: list[tuple[int, Any]] = []
    outcome = run_job(worker, make_job(payloads.yield_then_fail, kind="job"), progress)

    assert outcome.status == "failed"
    assert outcome.error.type == "tests.agent.payloads.CustomError"
    assert "in yield_then_fail" in outcome.error.traceback
    assert "runtime.py" not in outcome.error.traceback
    assert progress == [(1, "half")]


def test_a_plain_function_returning_a_generator_is_not_driven(worker: Worker) -> None:
    progress: list[tuple[int, Any]] = []
    outcome = run_job(worker, make_job(payloads.count_to, 3), progress)

    assert outcome.status == "failed"  # a generator object cannot be pickled as a result
    assert "could not be pickled" in outcome.error.message
    assert progress == []


def test_the_worker_is_reused_after_a_job(worker: Worker) -> None:
    progress: list[tuple[int, Any]] = []
    first = run_job(worker, make_job(payloads.count_to, 2, kind="job"), progress)
    second = worker.run(make_job(payloads.add, 1, 2), on_logs=lambda _lines: None)

    assert first.status == second.status == "succeeded" and worker.alive
    assert cloudpickle.loads(second.output) == 3


def test_an_async_generator_job_is_driven_like_a_plain_one(worker: Worker) -> None:
    progress: list[tuple[int, Any]] = []
    job = make_job(payloads.async_count_to, 4, kind="job", progress_interval_s=0)
    outcome = run_job(worker, job, progress)

    assert outcome.status == "succeeded"
    assert cloudpickle.loads(outcome.output) == 4
    assert progress[-1] == (4, 4)
