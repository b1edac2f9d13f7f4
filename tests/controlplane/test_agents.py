"""The agent protocol: registration, claims, fences, reports, retries, logs."""

from __future__ import annotations

import platform
import threading

import pytest

from multinode import wire
from multinode.errors import AuthError
from multinode_controlplane.services import agents, calls, logs
from multinode_controlplane.services.auth import Principal
from multinode_controlplane.services.context import Context
from tests.controlplane.helpers import add_instance, call_row, deploy, result, submit


def claim(ctx: Context, agent: Principal, running: list[str] | None = None) -> wire.PollResponse:
    return agents.poll_once(ctx, agent.instance_id, running or [])


def test_a_bootstrap_token_is_single_use(ctx: Context, user: Principal) -> None:
    deploy(ctx, user)
    agent = add_instance(ctx, user)
    assert agent.kind == "agent" and agent.instance_id
    with pytest.raises(AuthError):
        agents.register(
            ctx,
            wire.RegisterRequest(
                bootstrap_token="mnb_unknown",
                python_version="3",
                cloudpickle_version="3",
                hostname="h",
                agent_version="t",
            ),
        )


@pytest.mark.parametrize(("cpu", "expected"), [(1.0, 2), (0.1, 20), (4.0, 0)])
def test_claims_respect_capacity(ctx: Context, user: Principal, cpu: float, expected: int) -> None:
    deploy(ctx, user, f=wire.FunctionSpec(cpu=cpu))
    ids = submit(ctx, user, 50)
    agent = add_instance(ctx, user, vcpus=2)
    first = claim(ctx, agent)
    assert len(first.assignments) == expected
    assert [a.call_id for a in first.assignments] == ids[:expected]  # oldest first, in order
    assert claim(ctx, agent).assignments == []  # full until something finishes
    if expected:
        a = first.assignments[0]
        assert (a.input, a.fence, a.cpu, a.python_version) == (
            b"in-0",
            1,
            cpu,
            platform.python_version(),
        )
        assert call_row(ctx, a.call_id).status == "running"


def test_success_is_stored_and_frees_capacity(ctx: Context, user: Principal) -> None:
    deploy(ctx, user)
    ids = submit(ctx, user, 3)
    agent = add_instance(ctx, user, vcpus=2)
    a1, a2 = claim(ctx, agent).assignments
    reply = agents.report(
        ctx, agent, wire.ReportRequest(results=[result(a1, output=b"\x80\x05out")])
    )
    assert reply.rejected == []
    [out] = calls.terminal_outputs(ctx, user, ids)
    assert (out.call_id, out.status, out.output) == (
        a1.call_id,
        wire.CallStatus.succeeded,
        b"\x80\x05out",
    )
    # The freed capacity is refilled in the report's own answer, with no extra poll.
    [a3] = reply.assignments
    assert a3.call_id == ids[2]
    assert claim(ctx, agent, running=[a2.attempt_id, a3.attempt_id]).assignments == []


def test_a_stale_fence_is_rejected(ctx: Context, user: Principal) -> None:
    deploy(ctx, user)
    submit(ctx, user, 1)
    agent = add_instance(ctx, user)
    [a] = claim(ctx, agent).assignments
    stale = result(a).model_copy(update={"fence": a.fence + 1})
    assert agents.report(ctx, agent, wire.ReportRequest(results=[stale])).rejected == [a.attempt_id]
    assert call_row(ctx, a.call_id).status == "running"
    other = add_instance(ctx, user)
    assert agents.report(ctx, other, wire.ReportRequest(results=[result(a)])).rejected == [
        a.attempt_id
    ]
    assert agents.report(ctx, agent, wire.ReportRequest(results=[result(a)])).rejected == []
    # a second report of the same attempt is refused: it is no longer running
    assert agents.report(ctx, agent, wire.ReportRequest(results=[result(a)])).rejected == [
        a.attempt_id
    ]


def _error() -> wire.CallError:
    return wire.CallError(type="builtins.ValueError", message="boom", traceback="Traceback ...")


def test_user_failures_spend_retries_then_fail(ctx: Context, user: Principal) -> None:
    deploy(ctx, user, f=wire.FunctionSpec(retries=2))
    [call_id] = submit(ctx, user, 1)
    agent = add_instance(ctx, user)
    fences = []
    [a] = claim(ctx, agent).assignments
    for attempt in range(3):
        fences.append(a.fence)
        reply = agents.report(
            ctx, agent, wire.ReportRequest(results=[result(a, "failed", error=_error())])
        )
        if attempt < 2:  # requeued while retries last, and handed straight back
            [a] = reply.assignments
    assert reply.assignments == []
    row = call_row(ctx, call_id)
    assert fences == [1, 2, 3]
    assert (row.status, row.user_failures, row.attempts) == ("failed", 3, 3)
    [out] = calls.terminal_outputs(ctx, user, [call_id])
    assert out.error.type == "builtins.ValueError" and "boom" in out.reason
    assert claim(ctx, agent).assignments == []


def test_timed_out_is_final_once_retries_are_spent(ctx: Context, user: Principal) -> None:
    deploy(ctx, user, f=wire.FunctionSpec(retries=0))
    [call_id] = submit(ctx, user, 1)
    agent = add_instance(ctx, user)
    [a] = claim(ctx, agent).assignments
    agents.report(
        ctx, agent, wire.ReportRequest(results=[result(a, "timed_out", reason="ran 300s")])
    )
    assert call_row(ctx, call_id).status == "timed_out"


def test_cancel_of_a_running_call_reaches_its_agent(ctx: Context, user: Principal) -> None:
    deploy(ctx, user)
    [call_id] = submit(ctx, user, 1)
    agent = add_instance(ctx, user)
    [a] = claim(ctx, agent).assignments
    assert calls.cancel_call(ctx, user, call_id).status == wire.CallStatus.running
    assert claim(ctx, agent, running=[a.attempt_id]).cancel == [a.attempt_id]
    agents.report(ctx, agent, wire.ReportRequest(results=[result(a, "cancelled")]))
    assert call_row(ctx, call_id).status == "cancelled"


def test_logs_are_stored_and_paged(ctx: Context, user: Principal) -> None:
    deploy(ctx, user)
    [call_id] = submit(ctx, user, 1)
    agent = add_instance(ctx, user)
    [a] = claim(ctx, agent).assignments
    lines = [
        wire.AgentLog(attempt_id=a.attempt_id, stream="stdout", text=f"line {i}", ts=1.0)
        for i in range(5)
    ]
    agents.report(ctx, agent, wire.ReportRequest(logs=lines))
    page = logs.list_logs(ctx, user, call_id=call_id, limit=3)
    assert [x.text for x in page.lines] == ["line 0", "line 1", "line 2"]
    rest = logs.list_logs(ctx, user, app="demo", after=page.next_after)
    assert [x.text for x in rest.lines] == ["line 3", "line 4"]


def test_concurrent_claimers_never_share_a_call(ctx: Context, user: Principal) -> None:
    deploy(ctx, user, f=wire.FunctionSpec(cpu=0.25))
    submit(ctx, user, 400)
    agents_ = [add_instance(ctx, user, vcpus=4) for _ in range(8)]
    claimed: list[list[str]] = [[] for _ in agents_]
    errors: list[BaseException] = []
    start = threading.Barrier(len(agents_))

    def work(i: int) -> None:
        try:
            start.wait()
            refill: list[wire.Assignment] = []
            while True:
                # Work comes from a poll, or from the answer to the previous report.
                assignments = refill or claim(ctx, agents_[i]).assignments
                if not assignments:
                    return
                claimed[i] += [a.call_id for a in assignments]
                refill = agents.report(
                    ctx, agents_[i], wire.ReportRequest(results=[result(a) for a in assignments])
                ).assignments
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(agents_))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    everything = [c for ids in claimed for c in ids]
    assert len(everything) == len(set(everything)) == 400


def test_prefetch_claims_one_instance_more_and_released_work_is_requeued_free(
    ctx: Context, user: Principal
) -> None:
    deploy(ctx, user, f=wire.FunctionSpec(cpu=1.0, retries=0))
    ids = submit(ctx, user, 6)
    agent = add_instance(ctx, user, vcpus=2)
    running = agents.poll_once(ctx, agent.instance_id, [], prefetch=True).assignments
    assert [a.call_id for a in running] == ids[:4]  # two slots, plus two to start next
    assert agents.poll_once(ctx, agent.instance_id, [], prefetch=True).assignments == []
    # The agent could not start the last two in time: they go back, unspent.
    reply = agents.report(
        ctx,
        agent,
        wire.ReportRequest(released=[running[2].attempt_id, running[3].attempt_id], prefetch=True),
    )
    assert reply.assignments == []  # released work is not handed straight back
    for call_id in ids[2:4]:
        row = call_row(ctx, call_id)
        assert (row.status, row.user_failures, row.infra_failures) == ("queued", 0, 0)
    other = add_instance(ctx, user, vcpus=2)
    taken = claim(ctx, other).assignments
    assert [a.call_id for a in taken] == ids[2:4]
    assert [a.fence for a in taken] == [2, 2]  # a new attempt; the stale fence is refused
    stale = result(running[2])
    assert agents.report(ctx, agent, wire.ReportRequest(results=[stale])).rejected == [
        running[2].attempt_id
    ]


def test_deep_prefetch_claims_oldest_first_within_capacity_and_the_poll_limit(
    ctx: Context, user: Principal
) -> None:
    deploy(ctx, user, f=wire.FunctionSpec(cpu=0.25))
    ids = submit(ctx, user, 100)
    ctx.clock.advance(1)  # type: ignore[attr-defined]
    ids += submit(ctx, user, 200)
    agent = add_instance(ctx, user, vcpus=2)  # 8 slots
    taken = agents.poll_once(ctx, agent.instance_id, [], prefetch=wire.MAX_PREFETCH).assignments
    assert [a.call_id for a in taken] == ids[:136]  # 8 slots, plus 16 instance-sizes more
    ctx.settings = ctx.settings.model_copy(update={"max_assignments_per_poll": 50})
    other = add_instance(ctx, user, vcpus=2)
    taken = agents.poll_once(ctx, other.instance_id, [], prefetch=wire.MAX_PREFETCH).assignments
    assert [a.call_id for a in taken] == ids[136:186]


def test_a_final_failure_fails_the_call_at_once_with_its_retries_unspent(
    ctx: Context, user: Principal
) -> None:
    deploy(ctx, user, f=wire.FunctionSpec(retries=3))
    [call_id] = submit(ctx, user, 1)
    agent = add_instance(ctx, user)
    [a] = agents.poll_once(ctx, agent.instance_id, []).assignments
    reason = "pickled with Python 3.12 / cloudpickle 3.1.2, this VM runs Python 3.11"
    failed = result(a, "failed", reason=reason, final=True)
    assert agents.report(ctx, agent, wire.ReportRequest(results=[failed])).rejected == []
    row = call_row(ctx, call_id)
    assert (row.status, row.failure_reason) == ("failed", reason)
    assert agents.poll_once(ctx, agent.instance_id, []).assignments == []  # not queued again
