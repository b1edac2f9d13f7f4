"""``@mn.job``: the decorator's validation, local calls, pickling of handles, and how a run's
record becomes ``result`` and ``error`` (no server: records are built here)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import cloudpickle
import pytest

import multinode as mn
from multinode import wire
from multinode.functions import registered_functions
from multinode.jobs import DEFAULT_TIMEOUT_S, JobRun

NOW = datetime(2025, 1, 1, tzinfo=timezone.utc)


def test_bare_and_parenthesised_decorators_give_job_handles() -> None:
    @mn.job
    def bare(x: int) -> int:
        return x + 1

    @mn.job(cpu=8, memory="16GiB", gpu="T4", timeout=timedelta(hours=2), retries=1, cooldown=0)
    def sized(x: int) -> int:
        return x + 2

    for handle in (bare, sized):
        assert isinstance(handle, mn.Job) and isinstance(handle, mn.Function)
        assert handle.spec.kind == "job"
    assert bare.spec.timeout_s == DEFAULT_TIMEOUT_S == 86_400
    assert (sized.spec.cpu, sized.spec.memory_mib, sized.spec.gpu_type) == (8.0, 16_384, "T4")
    assert (sized.spec.timeout_s, sized.spec.retries, sized.spec.cooldown_s) == (7200, 1, 0)
    assert registered_functions(__name__)["sized"] is sized


def test_calling_a_job_runs_it_here_and_a_generator_job_returns_its_generator() -> None:
    @mn.job
    def total(values: list[int]) -> int:
        return sum(values)

    @mn.job
    def steps(n: int):  # type: ignore[no-untyped-def]
        yield from range(n)
        return "done"

    assert total([1, 2, 3]) == 6
    generator = steps(3)
    assert list(generator) == [0, 1, 2]


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda: mn.job(cpu=0), "@mn.job(...) on the decorated function: cpu=0 is not valid"),
        (lambda: mn.job(memory="lots"), 'e.g. "512MiB"'),
        (lambda: mn.job(timeout=-5), "timeout must be more than 0 seconds"),
        (lambda: mn.job(retries=50), "retries must be from 0 to 20"),
        (lambda: mn.job(gpu="B200"), "one of the known GPU types"),
        (lambda: mn.job(42), "@mn.job got 42 instead of a function"),
        (lambda: mn.job(len, cpu=4), "write @mn.job(cpu=4) above def len"),
        (lambda: mn.job(lambda x: x), "not '<lambda>'"),
        (lambda: mn.job(mn.job(len)), "decorated with @mn.job twice"),
        (lambda: mn.job(mn.function(len)), "decorated with @mn.function and @mn.job"),
    ],
    ids=[
        "cpu",
        "memory",
        "timeout",
        "retries",
        "gpu",
        "number",
        "function-with-options",
        "lambda",
        "twice",
        "function-and-job",
    ],
)
def test_mistakes_fail_at_decoration_with_the_fix(make, fragment: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(mn.InvalidRequestError) as caught:
        make()
    assert fragment in str(caught.value)


def test_an_unbound_job_cannot_start_and_says_how_to_deploy() -> None:
    @mn.job
    def orphan() -> None:
        return None

    with pytest.raises(mn.InvalidRequestError, match="mn deploy"):
        orphan.start()


def test_a_job_handle_stays_a_job_when_pickled() -> None:
    @mn.job(cpu=2)
    def shipped(x: int) -> int:
        return x * 2

    shipped._bind("named-app", travels=True)
    copy = cloudpickle.loads(cloudpickle.dumps(shipped))
    assert isinstance(copy, mn.Job)
    assert (copy.app, copy.name, copy.spec.kind, copy(4)) == ("named-app", "shipped", "job", 8)


# ------------------------------------------------------------------ runs


def info(**fields) -> wire.JobInfo:  # type: ignore[no-untyped-def]
    base = {
        "id": "c1",
        "app": "demo",
        "function": "process",
        "version": 1,
        "status": wire.JobStatus.running,
        "call_status": wire.CallStatus.running,
        "created_at": NOW,
    }
    return wire.JobInfo.model_construct(**{**base, **fields})


def test_a_running_run_shows_its_latest_value() -> None:
    run = JobRun(info(result=cloudpickle.dumps({"done": 3}), yields=3, result_at=NOW))
    assert (run.result, run.yields, run.error, run.done) == ({"done": 3}, 3, None, False)
    assert repr(run) == "<mn.JobRun c1 process running>"


def test_a_failed_run_gives_back_the_jobs_own_exception() -> None:
    error = wire.CallError.model_construct(
        type="builtins.KeyError",
        message="'row'",
        traceback="Traceback ...\nKeyError: 'row'",
        pickled=cloudpickle.dumps(KeyError("row")),
    )
    run = JobRun(
        info(status=wire.JobStatus.failed, call_status=wire.CallStatus.failed, error=error)
    )
    assert isinstance(run.error, KeyError) and run.error is run.error  # built once
    assert "Traceback" in run.traceback
    assert any("job process" in note for note in run.error.__notes__)
    assert run.done and run.result is None


@pytest.mark.parametrize(
    ("call_status", "reason", "expected"),
    [
        (wire.CallStatus.timed_out, "exceeded timeout of 60s", mn.CallTimeoutError),
        (wire.CallStatus.failed, "infrastructure: 3 attempts lost", mn.InfrastructureError),
    ],
)
def test_a_run_that_failed_without_an_exception_gets_a_platform_error(
    call_status: wire.CallStatus, reason: str, expected: type
) -> None:
    run = JobRun(info(status=wire.JobStatus.failed, call_status=call_status, reason=reason))
    assert isinstance(run.error, expected) and reason in str(run.error)


def test_a_cancelled_run_has_no_error_and_keeps_its_latest_value() -> None:
    run = JobRun(
        info(
            status=wire.JobStatus.cancelled,
            call_status=wire.CallStatus.cancelled,
            result=cloudpickle.dumps(41),
            reason="cancelled",
        )
    )
    assert (run.error, run.result, run.done) == (None, 41, True)


def test_a_result_that_cannot_be_unpickled_here_says_why() -> None:
    run = JobRun(info(result=b"not a pickle"))
    with pytest.raises(mn.SerializationError, match="job process run c1"):
        _ = run.result
