"""Jobs in the control plane: the status mapping (pure), and on SQLite and PostgreSQL the
job rows, progress ordering, listing, cancelling and undeploying."""

from __future__ import annotations

import pytest

from multinode import wire
from multinode.errors import InvalidRequestError, NotFoundError
from multinode.wire import CallStatus, JobStatus
from multinode_controlplane.domain import jobs as domain
from multinode_controlplane.services import agents, calls, deployments, jobs
from multinode_controlplane.services.auth import Principal
from multinode_controlplane.services.context import Context
from tests.controlplane.helpers import add_instance, deploy, result, submit

JOB = wire.FunctionSpec(kind="job", cpu=1, timeout_s=3600)

# ------------------------------------------------------------------ pure status mapping


@pytest.mark.parametrize(
    ("call_status", "cancel_requested", "expected"),
    [
        ("queued", False, JobStatus.pending),
        ("running", False, JobStatus.running),
        ("running", True, JobStatus.cancelling),
        ("succeeded", False, JobStatus.succeeded),
        ("succeeded", True, JobStatus.succeeded),  # finished before the cancel took
        ("failed", False, JobStatus.failed),
        ("timed_out", False, JobStatus.failed),
        ("cancelled", True, JobStatus.cancelled),
        ("cancelled", False, JobStatus.cancelled),  # cancelled while queued
    ],
)
def test_job_status_of_a_call(
    call_status: str, cancel_requested: bool, expected: JobStatus
) -> None:
    assert domain.job_status(call_status, cancel_requested) is expected


def test_every_call_status_maps_and_filters_round_trip() -> None:
    for status in JobStatus:
        wanted = domain.call_filter(status)
        flags = (False, True) if wanted.cancel_requested is None else (wanted.cancel_requested,)
        for call_status in wanted.statuses:
            for flag in flags:
                if call_status == "running" and flag != wanted.cancel_requested:
                    continue
                assert domain.job_status(call_status, flag) is status
    mapped = {domain.job_status(c.value, False) for c in CallStatus}
    assert mapped | {JobStatus.cancelling} == set(JobStatus)
    with pytest.raises(ValueError, match="unknown call status"):
        domain.job_status("exploded", False)


def test_terminal_job_statuses() -> None:
    assert {s for s in JobStatus if s.terminal} == {
        JobStatus.succeeded,
        JobStatus.failed,
        JobStatus.cancelled,
    }


# ------------------------------------------------------------------ services


def start_jobs(ctx: Context, user: Principal, n: int = 1) -> list[str]:
    deploy(ctx, user, job=JOB, f=wire.FunctionSpec())
    return submit(ctx, user, n, function="job")


def progress(a: wire.Assignment, seq: int, value: bytes, fence: int | None = None):  # type: ignore[no-untyped-def]
    return wire.AttemptProgress.model_construct(
        attempt_id=a.attempt_id, fence=a.fence if fence is None else fence, seq=seq, value=value
    )


def report(ctx: Context, agent: Principal, **kw) -> wire.ReportResponse:  # type: ignore[no-untyped-def]
    return agents.report(
        ctx,
        agent,
        wire.ReportRequest.model_construct(**{"results": [], "logs": [], "progress": [], **kw}),
    )


def test_only_calls_of_jobs_are_jobs(ctx: Context, user: Principal) -> None:
    (job_id,) = start_jobs(ctx, user)
    (call_id,) = submit(ctx, user, 1, function="f")

    info = jobs.get_job(ctx, user, job_id)
    assert (info.status, info.function, info.result, info.yields) == (
        JobStatus.pending,
        "job",
        None,
        0,
    )
    assert [j.id for j in jobs.list_jobs(ctx, user)] == [job_id]
    with pytest.raises(InvalidRequestError, match="not a job") as caught:
        jobs.get_job(ctx, user, call_id)
    assert caught.value.details["function"] == "f"
    with pytest.raises(NotFoundError, match="no job"):
        jobs.get_job(ctx, user, "c-unknown")


def test_the_assignment_of_a_job_says_so(ctx: Context, user: Principal) -> None:
    start_jobs(ctx, user)
    submit(ctx, user, 1, function="f")
    agent = add_instance(ctx, user, vcpus=2)
    kinds = {a.function: a.kind for a in agents.poll_once(ctx, agent.instance_id, []).assignments}
    assert kinds == {"job": "job", "f": "function"}


def test_progress_keeps_the_newest_value_and_the_result_replaces_it(
    ctx: Context, user: Principal
) -> None:
    (job_id,) = start_jobs(ctx, user)
    agent = add_instance(ctx, user)
    (a,) = agents.poll_once(ctx, agent.instance_id, []).assignments

    report(ctx, agent, progress=[progress(a, 2, b"two")])
    running = jobs.get_job(ctx, user, job_id)
    assert (running.status, running.result, running.yields) == (JobStatus.running, b"two", 2)
    assert running.result_at is not None

    report(ctx, agent, progress=[progress(a, 1, b"one")])  # late, older: ignored
    assert jobs.get_job(ctx, user, job_id).result == b"two"
    report(ctx, agent, progress=[progress(a, 3, b"three", fence=a.fence + 1)])  # not its fence
    assert jobs.get_job(ctx, user, job_id).result == b"two"

    report(ctx, agent, progress=[progress(a, 4, b"four")], results=[result(a, output=b"final")])
    done = jobs.get_job(ctx, user, job_id)
    assert (done.status, done.result, done.yields) == (JobStatus.succeeded, b"final", 4)
    report(ctx, agent, progress=[progress(a, 5, b"five")])  # after the result: dropped
    assert jobs.get_job(ctx, user, job_id).yields == 4


def test_progress_from_another_instance_is_dropped(ctx: Context, user: Principal) -> None:
    (job_id,) = start_jobs(ctx, user)
    agent = add_instance(ctx, user)
    other = add_instance(ctx, user)
    (a,) = agents.poll_once(ctx, agent.instance_id, []).assignments

    report(ctx, other, progress=[progress(a, 1, b"forged")])
    assert jobs.get_job(ctx, user, job_id).result is None


def test_a_failed_job_keeps_its_latest_value_and_its_error(ctx: Context, user: Principal) -> None:
    (job_id,) = start_jobs(ctx, user)
    agent = add_instance(ctx, user)
    (a,) = agents.poll_once(ctx, agent.instance_id, []).assignments
    error = wire.CallError(type="builtins.ValueError", message="bad row", traceback="Traceback")

    report(
        ctx, agent, progress=[progress(a, 1, b"row 1")], results=[result(a, "failed", error=error)]
    )
    info = jobs.get_job(ctx, user, job_id)
    assert (info.status, info.call_status, info.result) == (
        JobStatus.failed,
        CallStatus.failed,
        b"row 1",
    )
    assert info.error is not None and info.error.message == "bad row"


def test_a_timed_out_job_is_failed(ctx: Context, user: Principal) -> None:
    (job_id,) = start_jobs(ctx, user)
    agent = add_instance(ctx, user)
    (a,) = agents.poll_once(ctx, agent.instance_id, []).assignments
    report(ctx, agent, results=[result(a, "timed_out", reason="exceeded timeout of 3600s")])

    info = jobs.get_job(ctx, user, job_id)
    assert (info.status, info.call_status) == (JobStatus.failed, CallStatus.timed_out)
    assert "timeout" in (info.reason or "")


def test_a_retry_replaces_the_progress_of_the_failed_attempt(ctx: Context, user: Principal) -> None:
    deploy(ctx, user, job=JOB.model_copy(update={"retries": 1}))
    (job_id,) = submit(ctx, user, 1, function="job")
    agent = add_instance(ctx, user)
    (first,) = agents.poll_once(ctx, agent.instance_id, []).assignments
    report(ctx, agent, progress=[progress(first, 9, b"attempt 1 step 9")])
    # The failure requeues the call, and the report's answer claims it again at once.
    (second,) = report(ctx, agent, results=[result(first, "failed", reason="boom")]).assignments
    assert (second.call_id, second.fence) == (job_id, 2)
    assert jobs.get_job(ctx, user, job_id).result == b"attempt 1 step 9"
    report(ctx, agent, progress=[progress(second, 1, b"attempt 2 step 1")])
    info = jobs.get_job(ctx, user, job_id)
    assert (info.result, info.yields, info.attempts) == (b"attempt 2 step 1", 1, 2)


def test_cancel_a_pending_job_at_once_and_a_running_one_through_cancelling(
    ctx: Context, user: Principal
) -> None:
    running_id, pending_id = start_jobs(ctx, user, 2)
    agent = add_instance(ctx, user, vcpus=1)
    (a,) = agents.poll_once(ctx, agent.instance_id, []).assignments
    assert a.call_id == running_id

    assert jobs.cancel_job(ctx, user, pending_id).status is JobStatus.cancelled
    assert jobs.cancel_job(ctx, user, running_id).status is JobStatus.cancelling
    assert jobs.cancel_job(ctx, user, running_id).status is JobStatus.cancelling  # idempotent
    assert [j.id for j in jobs.list_jobs(ctx, user, status=JobStatus.cancelling)] == [running_id]

    poll = agents.poll_once(ctx, agent.instance_id, [a.attempt_id])
    assert poll.cancel == [a.attempt_id]  # the agent is told to kill it
    report(ctx, agent, results=[result(a, "cancelled", reason="cancelled on request")])
    assert jobs.get_job(ctx, user, running_id).status is JobStatus.cancelled
    with pytest.raises(InvalidRequestError):
        jobs.cancel_job(ctx, user, submit(ctx, user, 1, function="f")[0])


def test_list_filters_by_app_and_status_newest_first(ctx: Context, user: Principal, clock) -> None:  # type: ignore[no-untyped-def]
    deploy(ctx, user, "one", job=JOB)
    deploy(ctx, user, "two", job=JOB)
    first = submit(ctx, user, 1, app="one", function="job")
    clock.advance(1)
    second = submit(ctx, user, 1, app="one", function="job")
    other = submit(ctx, user, 1, app="two", function="job")

    assert [j.id for j in jobs.list_jobs(ctx, user, app="one")] == second + first
    assert {j.id for j in jobs.list_jobs(ctx, user)} == set(first + second + other)
    assert len(jobs.list_jobs(ctx, user, app="one", limit=1)) == 1
    assert [j.id for j in jobs.list_jobs(ctx, user, status=JobStatus.pending, app="two")] == other
    assert jobs.list_jobs(ctx, user, status=JobStatus.running) == []
    with pytest.raises(NotFoundError):
        jobs.list_jobs(ctx, user, app="three")
    with pytest.raises(InvalidRequestError):
        jobs.list_jobs(ctx, user, limit=0)


def test_undeploy_cancels_pending_jobs_and_stops_running_ones(
    ctx: Context, user: Principal
) -> None:
    running_id, pending_id = start_jobs(ctx, user, 2)
    agent = add_instance(ctx, user, vcpus=1)
    (a,) = agents.poll_once(ctx, agent.instance_id, []).assignments

    deployments.undeploy(ctx, user, "demo")
    assert jobs.get_job(ctx, user, pending_id).status is JobStatus.cancelled
    assert jobs.get_job(ctx, user, running_id).status is JobStatus.cancelling
    poll = agents.poll_once(ctx, agent.instance_id, [a.attempt_id])
    assert poll.shutdown and poll.cancel == [a.attempt_id]


def test_a_job_is_also_a_call(ctx: Context, user: Principal) -> None:
    (job_id,) = start_jobs(ctx, user)
    assert calls.get_call(ctx, user, job_id).function == "job"
    calls.cancel_call(ctx, user, job_id)
    assert jobs.get_job(ctx, user, job_id).status is JobStatus.cancelled
