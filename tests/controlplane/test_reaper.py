"""Lost instances and overdue attempts."""

from __future__ import annotations

from multinode import wire
from multinode_controlplane.loops.reaper import Reaper
from multinode_controlplane.services import agents, calls
from multinode_controlplane.services.auth import Principal
from multinode_controlplane.services.context import Context
from tests.controlplane.helpers import ManualClock, add_instance, call_row, deploy, result, submit


def test_a_lost_instance_requeues_its_calls_without_spending_retries(
    ctx: Context, user: Principal, clock: ManualClock
) -> None:
    deploy(ctx, user, f=wire.FunctionSpec(retries=0))
    [call_id] = submit(ctx, user, 1)
    lost = add_instance(ctx, user)
    [a] = agents.poll_once(ctx, lost.instance_id, []).assignments
    clock.advance(10)
    healthy = add_instance(ctx, user)
    clock.advance(25)  # lost's last heartbeat is now 35 s old, healthy's 25 s
    report = Reaper(ctx, None).run_once()
    assert report.lost_cloud_ids == []  # no cloud id: never launched through a cloud
    row = call_row(ctx, call_id)
    assert (row.status, row.user_failures, row.infra_failures) == ("queued", 0, 1)
    assert agents.poll_once(ctx, lost.instance_id, [a.attempt_id]).shutdown
    # the late result of the lost attempt is refused; the new attempt runs elsewhere
    assert agents.report(ctx, lost, wire.ReportRequest(results=[result(a)])).rejected == [
        a.attempt_id
    ]
    [b] = agents.poll_once(ctx, healthy.instance_id, []).assignments
    assert (b.call_id, b.fence) == (call_id, 2)
    assert agents.report(ctx, healthy, wire.ReportRequest(results=[result(b)])).rejected == []
    assert call_row(ctx, call_id).status == "succeeded"


def test_a_call_fails_after_max_call_attempts_losses(
    ctx: Context, user: Principal, clock: ManualClock
) -> None:
    deploy(ctx, user, f=wire.FunctionSpec(retries=5))
    [call_id] = submit(ctx, user, 1)
    for _ in range(ctx.settings.max_call_attempts):
        agent = add_instance(ctx, user)
        assert agents.poll_once(ctx, agent.instance_id, []).assignments
        clock.advance(ctx.settings.agent_lost_after_s + 1)
        Reaper(ctx, None).run_once()
    row = call_row(ctx, call_id)
    assert (row.status, row.user_failures, row.infra_failures) == ("failed", 0, 3)
    assert row.failure_reason.startswith("infrastructure:")


def test_a_cancel_requested_call_on_a_lost_instance_is_cancelled(
    ctx: Context, user: Principal, clock: ManualClock
) -> None:
    deploy(ctx, user)
    [call_id] = submit(ctx, user, 1)
    agent = add_instance(ctx, user)
    agents.poll_once(ctx, agent.instance_id, [])
    calls.cancel_call(ctx, user, call_id)
    clock.advance(ctx.settings.agent_lost_after_s + 1)
    Reaper(ctx, None).run_once()
    assert call_row(ctx, call_id).status == "cancelled"


def test_an_attempt_far_past_its_timeout_times_out(
    ctx: Context, user: Principal, clock: ManualClock
) -> None:
    deploy(ctx, user, f=wire.FunctionSpec(timeout_s=10))
    [call_id] = submit(ctx, user, 1)
    agent = add_instance(ctx, user)
    [a] = agents.poll_once(ctx, agent.instance_id, []).assignments
    for _ in range(5):  # the agent keeps heart-beating but never reports
        clock.advance(10)
        agents.poll_once(ctx, agent.instance_id, [a.attempt_id])
    assert Reaper(ctx, None).run_once().overdue_attempts == 1
    assert call_row(ctx, call_id).status == "timed_out"
    assert agents.poll_once(ctx, agent.instance_id, [a.attempt_id]).cancel == [a.attempt_id]


def test_after_a_restart_no_instance_is_lost_before_the_grace_from_the_restart(
    ctx: Context, user: Principal, clock: ManualClock
) -> None:
    deploy(ctx, user, f=wire.FunctionSpec(retries=0))
    [call_id] = submit(ctx, user, 1)
    agent = add_instance(ctx, user)
    [a] = agents.poll_once(ctx, agent.instance_id, []).assignments
    clock.advance(45)  # the control plane was down: no heartbeat for 45 s
    ctx.started_at = clock()  # it starts serving again
    assert Reaper(ctx, None).run_once().lost_cloud_ids == []
    clock.advance(ctx.settings.agent_lost_after_s - 1)
    Reaper(ctx, None).run_once()
    assert call_row(ctx, call_id).status == "running"  # not requeued: it is still running
    agents.poll_once(ctx, agent.instance_id, [a.attempt_id])  # the agent is back
    assert agents.report(ctx, agent, wire.ReportRequest(results=[result(a)])).rejected == []
    assert call_row(ctx, call_id).status == "succeeded"
    assert call_row(ctx, call_id).infra_failures == 0


def test_after_a_restart_an_agent_that_never_comes_back_is_lost_after_the_grace(
    ctx: Context, user: Principal, clock: ManualClock
) -> None:
    deploy(ctx, user, f=wire.FunctionSpec(retries=0))
    [call_id] = submit(ctx, user, 1)
    agent = add_instance(ctx, user)
    agents.poll_once(ctx, agent.instance_id, [])
    clock.advance(45)
    ctx.started_at = clock()
    clock.advance(ctx.settings.agent_lost_after_s + 1)
    Reaper(ctx, None).run_once()
    assert call_row(ctx, call_id).status == "queued"  # requeued, without spending retries
    assert call_row(ctx, call_id).user_failures == 0
