"""Worker processes driven directly, with real pickled functions."""

from __future__ import annotations

import os
import statistics
import threading
import time
from pathlib import Path

import cloudpickle
import pytest

from multinode_agent.worker import LogLine, Outcome, Worker, WorkerPool
from tests.agent import payloads
from tests.agent.conftest import make_job
from tests.support.procs import wait_until


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def run_in_thread(
    worker: Worker, job, logs: list[LogLine]
) -> tuple[threading.Thread, list[Outcome]]:
    outcomes: list[Outcome] = []
    thread = threading.Thread(target=lambda: outcomes.append(worker.run(job, on_logs=logs.extend)))
    thread.start()
    return thread, outcomes


def texts(logs: list[LogLine], attempt_id: str, stream: str = "stdout") -> list[str]:
    return [text for a, s, text, _ in list(logs) if a == attempt_id and s == stream]


def test_success_returns_the_pickled_value(worker: Worker) -> None:
    outcome = worker.run(make_job(payloads.add, 2, b=3), on_logs=lambda _: None)

    assert outcome.status == "succeeded"
    assert cloudpickle.loads(outcome.output) == 5


def test_exception_comes_back_with_type_traceback_and_pickle(worker: Worker) -> None:
    outcome = worker.run(make_job(payloads.fail, "bad input 7"), on_logs=lambda _: None)

    assert outcome.status == "failed"
    error = outcome.error
    assert error.type == "tests.agent.payloads.CustomError"
    assert error.message == "bad input 7"
    assert "in fail" in error.traceback and "in _inner" in error.traceback
    assert error.traceback.rstrip().endswith("CustomError: bad input 7")
    assert "runtime.py" not in error.traceback  # the worker's own frames are left out
    rebuilt = cloudpickle.loads(error.pickled)
    assert type(rebuilt).__name__ == "CustomError" and str(rebuilt) == "bad input 7"


def test_exception_that_cannot_be_pickled_still_reports_type_and_message(worker: Worker) -> None:
    outcome = worker.run(make_job(payloads.fail_unpicklable), on_logs=lambda _: None)

    assert outcome.status == "failed"
    assert outcome.error.type == "tests.agent.payloads.UnpicklableError"
    assert outcome.error.message == "cannot travel"
    assert outcome.error.pickled is None


def test_output_streams_while_the_call_runs(worker: Worker, tmp_path: Path) -> None:
    release = tmp_path / "release"
    job = make_job(payloads.print_then_wait, str(release))
    logs: list[LogLine] = []
    thread, outcomes = run_in_thread(worker, job, logs)
    try:
        wait_until(
            lambda: (
                "started" in texts(logs, job.attempt_id)
                and "raw fd line" in texts(logs, job.attempt_id)
                and "to stderr" in texts(logs, job.attempt_id, "stderr")
            ),
            timeout=10,
            what="output of a call still running",
        )
        assert outcomes == []  # the lines arrived before the call finished
    finally:
        release.touch()
        thread.join(30)
    assert outcomes[0].status == "succeeded"
    assert cloudpickle.loads(outcomes[0].output) == "released"
    # A last line without its newline is still delivered, before the result.
    assert texts(logs, job.attempt_id)[-1] == "no newline at the end"


def test_version_mismatch_fails_with_the_fix(worker: Worker) -> None:
    job = make_job(payloads.add, 1, 2, python_version="3.6.15", cloudpickle_version="1.6.0")

    outcome = worker.run(job, on_logs=lambda _: None)

    assert outcome.status == "failed"
    here = ".".join(__import__("platform").python_version().split(".")[:2])
    assert outcome.reason == (
        f"pickled with Python 3.6 / cloudpickle 1.6.0, this VM runs Python {here} / "
        f"cloudpickle {cloudpickle.__version__}; deploy from a matching Python"
    )
    assert outcome.final  # another attempt would fail the same way: no retry


def test_unpickling_failure_names_the_likely_cause(worker: Worker) -> None:
    job = make_job(payloads.noop)
    job = type(job)(**{**job.__dict__, "blob": b"not a pickle", "blob_hash": "0" * 64})

    outcome = worker.run(job, on_logs=lambda _: None)

    assert outcome.status == "failed"
    assert "cannot unpickle the function noop" in outcome.reason
    assert "the likely cause is a Python or cloudpickle version" in outcome.reason


def test_unpicklable_return_value_fails_naming_the_type(worker: Worker) -> None:
    from multinode.errors import SerializationError

    outcome = worker.run(make_job(payloads.return_lock), on_logs=lambda _: None)

    assert outcome.status == "failed"
    assert outcome.error.type == "multinode.errors.SerializationError"
    assert "_thread.lock" in outcome.error.message
    assert isinstance(cloudpickle.loads(outcome.error.pickled), SerializationError)


def test_environment_names_the_call_and_hides_the_agent_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MN_AGENT_BOOTSTRAP_TOKEN", "mnb_secret")
    names = (
        "MN_URL",
        "MN_API_KEY",
        "MN_APP",
        "MN_VERSION",
        "MN_CALL_ID",
        "MN_AGENT_BOOTSTRAP_TOKEN",
    )
    env = {
        "MN_URL": "http://cp",
        "MN_API_KEY": "mna_x",
        "MN_APP": "demo",
        "MN_VERSION": "3",
        "MN_CALL_ID": "c1",
    }
    worker = Worker()
    try:
        outcome = worker.run(make_job(payloads.env, *names, env=env), on_logs=lambda _: None)
    finally:
        worker.close()

    assert cloudpickle.loads(outcome.output) == {**env, "MN_AGENT_BOOTSTRAP_TOKEN": None}


def test_worker_is_reused_and_keeps_the_function(worker: Worker) -> None:
    first = make_job(payloads.getpid)
    second = make_job(payloads.getpid)
    second = type(second)(**{**second.__dict__, "blob": None})

    one = worker.run(first, on_logs=lambda _: None)
    assert worker.has_function(first.blob_hash)
    two = worker.run(second, on_logs=lambda _: None)

    assert cloudpickle.loads(one.output) == cloudpickle.loads(two.output) == worker.pid


def test_timeout_kills_the_worker_process(worker: Worker) -> None:
    outcome = worker.run(
        make_job(payloads.announce_then_sleep, 60, timeout_s=0.3), on_logs=lambda _: None
    )

    assert outcome.status == "timed_out"
    assert outcome.reason == "exceeded timeout of 0.3s"
    assert not worker.alive and pid_gone(worker.pid)


@pytest.mark.parametrize("ignore_sigterm", [False, True])
def test_cancel_kills_the_worker_process(worker: Worker, ignore_sigterm: bool) -> None:
    job = make_job(payloads.announce_then_sleep, 60, ignore_sigterm=ignore_sigterm)
    logs: list[LogLine] = []
    thread, outcomes = run_in_thread(worker, job, logs)
    wait_until(
        lambda: "sleeping" in texts(logs, job.attempt_id), timeout=10, what="the call to start"
    )

    worker.cancel(job.attempt_id)
    thread.join(10)

    assert outcomes[0].status == "cancelled"
    assert pid_gone(worker.pid)


def test_a_stale_cancel_does_not_touch_the_next_attempt(worker: Worker) -> None:
    worker.cancel("an-earlier-attempt")

    outcome = worker.run(make_job(payloads.add, 1, 1), on_logs=lambda _: None)

    assert outcome.status == "succeeded" and worker.alive


def test_a_worker_that_dies_fails_its_attempt_with_the_exit_code(worker: Worker) -> None:
    outcome = worker.run(make_job(payloads.exit_hard, 3), on_logs=lambda _: None)

    assert outcome.status == "failed"
    assert outcome.reason == "worker process exited with code 3"
    assert not worker.alive


def test_pool_reuses_idle_workers_and_replaces_killed_ones(pool: WorkerPool) -> None:
    first = pool.acquire()
    pool.release(first)
    again = pool.acquire()
    assert again is first

    again.run(make_job(payloads.announce_then_sleep, 60, timeout_s=0.2), on_logs=lambda _: None)
    pool.release(again)
    replacement = pool.acquire()

    assert replacement.pid != first.pid and replacement.alive
    pool.release(replacement)
    assert pool.counts() == (1, 0)


def test_pool_retires_idle_workers_beyond_the_warm_ones() -> None:
    pool = WorkerPool(idle_s=0.0, warm=1, kill_grace_s=0.5)
    try:
        workers = [pool.acquire() for _ in range(3)]
        for w in workers:
            pool.release(w)

        assert pool.reap_idle() == 2
        assert pool.counts() == (1, 0)
        assert [w.alive for w in workers] == [False, False, True]
    finally:
        pool.close()
    assert all(pid_gone(w.pid) for w in workers)


def test_a_no_op_call_through_a_warm_worker_costs_well_under_a_millisecond(worker: Worker) -> None:
    first = make_job(payloads.noop)
    worker.run(first, on_logs=lambda _: None)  # loads the function
    jobs = [make_job(payloads.noop) for _ in range(500)]
    jobs = [type(j)(**{**j.__dict__, "blob": None}) for j in jobs]

    costs = []
    for job in jobs:
        start = time.perf_counter()
        outcome = worker.run(job, on_logs=lambda _: None)
        costs.append(time.perf_counter() - start)
        assert outcome.status == "succeeded"

    # The median, so one descheduling on a busy machine does not decide the test.
    assert statistics.median(costs) < 0.001


def run_batch_in_thread(
    worker: Worker, jobs: list, logs: list[LogLine]
) -> tuple[threading.Thread, dict[str, Outcome], list]:
    outcomes: dict[str, Outcome] = {}
    left: list = []

    def run() -> None:
        left.extend(
            worker.run_batch(
                jobs,
                on_logs=logs.extend,
                on_done=lambda job, outcome: outcomes.__setitem__(job.attempt_id, outcome),
            )
        )

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcomes, left


def test_a_batch_runs_in_order_in_one_process_and_reports_each_call(worker: Worker) -> None:
    jobs = [make_job(payloads.add, i, b=1) for i in range(5)] + [make_job(payloads.getpid)]
    done: list[tuple[str, Outcome]] = []

    left = worker.run_batch(
        jobs, on_logs=lambda _: None, on_done=lambda job, o: done.append((job.attempt_id, o))
    )

    assert left == []
    assert [attempt for attempt, _ in done] == [job.attempt_id for job in jobs]
    values = [cloudpickle.loads(o.output) for _, o in done]
    assert values[:5] == [1, 2, 3, 4, 5]
    assert values[5] == worker.pid
    # Only the first job of each function carried the blob; the worker loaded it once.
    assert worker.has_function(jobs[0].blob_hash) and worker.alive


def test_a_call_timing_out_in_a_batch_hands_back_the_calls_after_it(worker: Worker) -> None:
    first = make_job(payloads.add, 1, b=1)
    slow = make_job(payloads.announce_then_sleep, 60, timeout_s=0.5)
    after = [make_job(payloads.add, 2, b=2), make_job(payloads.add, 3, b=3)]
    done: dict[str, Outcome] = {}

    left = worker.run_batch(
        [first, slow, *after],
        on_logs=lambda _: None,
        on_done=lambda job, o: done.__setitem__(job.attempt_id, o),
    )

    assert done[first.attempt_id].status == "succeeded"
    assert done[slow.attempt_id].status == "timed_out"
    assert set(done) == {first.attempt_id, slow.attempt_id}
    assert left == after  # never started: the caller runs them elsewhere
    assert not worker.alive


def test_cancelling_a_queued_call_of_a_batch_drops_it_and_the_batch_goes_on(
    worker: Worker, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    blocking = make_job(payloads.print_then_wait, str(release))
    dropped, kept = make_job(payloads.add, 1, b=1), make_job(payloads.add, 2, b=2)
    logs: list[LogLine] = []
    thread, done, left = run_batch_in_thread(worker, [blocking, dropped, kept], logs)
    wait_until(lambda: texts(logs, blocking.attempt_id) != [], timeout=10, what="first job")

    worker.cancel(dropped.attempt_id)
    release.touch()
    thread.join(10)

    assert done[blocking.attempt_id].status == "succeeded"
    assert done[dropped.attempt_id].status == "cancelled"
    assert cloudpickle.loads(done[kept.attempt_id].output) == 4
    assert left == [] and worker.alive


def test_cancelling_the_running_call_of_a_batch_kills_it_and_hands_back_the_rest(
    worker: Worker, tmp_path: Path
) -> None:
    blocking = make_job(payloads.print_then_wait, str(tmp_path / "never"))
    rest = make_job(payloads.add, 1, b=1)
    logs: list[LogLine] = []
    thread, done, left = run_batch_in_thread(worker, [blocking, rest], logs)
    wait_until(lambda: texts(logs, blocking.attempt_id) != [], timeout=10, what="first job")

    worker.cancel(blocking.attempt_id)
    thread.join(10)

    assert done[blocking.attempt_id].status == "cancelled"
    assert left == [rest] and not worker.alive


def test_an_async_function_runs_to_its_result(worker: Worker) -> None:
    outcome = worker.run(make_job(payloads.async_add, 2, b=3), on_logs=lambda _: None)

    assert outcome.status == "succeeded" and cloudpickle.loads(outcome.output) == 5


def test_an_async_function_raising_fails_with_its_exception_and_its_own_frames(
    worker: Worker,
) -> None:
    outcome = worker.run(make_job(payloads.async_fail, "async bad"), on_logs=lambda _: None)

    assert outcome.status == "failed" and outcome.error.message == "async bad"
    assert type(cloudpickle.loads(outcome.error.pickled)).__name__ == "CustomError"
    first_frame = outcome.error.traceback.splitlines()[1]
    assert "in async_fail" in first_frame  # not the event loop's frames


def test_cancelling_a_batched_call_as_it_starts_stops_it(worker: Worker) -> None:
    # The cancel may reach the worker as a skip after the call started (the previous
    # call's outcome is still on its way): the call must still be stopped, not run on.
    quick = make_job(payloads.add, 1, b=1)
    blocking = make_job(payloads.print_then_wait, "/nonexistent/never", bound_s=30.0)
    done: dict[str, Outcome] = {}

    def on_logs(lines: list[LogLine]) -> None:
        if any(a == blocking.attempt_id for a, _, _, _ in lines):
            worker.cancel(blocking.attempt_id)

    started = time.monotonic()
    left = worker.run_batch(
        [quick, blocking], on_logs=on_logs, on_done=lambda j, o: done.__setitem__(j.attempt_id, o)
    )

    assert done[quick.attempt_id].status == "succeeded"
    assert done[blocking.attempt_id].status == "cancelled"
    assert left == [] and time.monotonic() - started < 20  # not the job's own 30 s bound
