"""The scheduler with an injected clock, on SQLite and PostgreSQL: fires, policies, redeploys."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import update

from multinode_controlplane import models as m
from multinode_controlplane.domain.fires import ON_TIME_GRACE_S
from multinode_controlplane.loops.scheduler import Scheduler
from multinode_controlplane.services import calls, deployments, firing, schedules
from multinode_controlplane.services.auth import Principal
from multinode_controlplane.services.context import Context
from tests.controlplane.helpers import ManualClock
from tests.controlplane.schedule_helpers import (
    HOUR,
    NO_ARGS,
    T_HOUR,
    calls_of,
    cron_rule,
    deploy,
    fires,
    interval_rule,
    next_fire_time,
    schedule,
)


@pytest.fixture
def start(clock: ManualClock) -> ManualClock:
    clock.now = T_HOUR - 10  # ten seconds before a whole hour
    return clock


def test_a_due_time_fires_once_as_a_call_of_the_function(
    ctx: Context, user: Principal, start: ManualClock
) -> None:
    deploy(ctx, user, schedule("task", interval_rule(HOUR)))
    scheduler = Scheduler(ctx)

    assert scheduler.run_once(T_HOUR - 1).dispatched == 0  # not yet due
    report = scheduler.run_once(T_HOUR)
    again = scheduler.run_once(T_HOUR + 0.5)

    assert report.dispatched == 1 and again.dispatched == 0
    [call] = calls_of(ctx)
    assert call.status == "queued" and bytes(call.input) == NO_ARGS and call.cpu == 0.5
    assert fires(ctx) == [(T_HOUR, "dispatched", call.id)]
    assert next_fire_time(ctx) == T_HOUR + HOUR
    assert report.next_due == T_HOUR + HOUR


def test_a_fire_is_recorded_when_dispatch_starts(
    ctx: Context, user: Principal, start: ManualClock
) -> None:
    deploy(ctx, user, schedule("task", interval_rule(HOUR)))
    Scheduler(ctx).run_once(T_HOUR + 0.04)

    [info] = schedules.list_fires(ctx, user, app="demo", function="task")
    lateness = (info.dispatched_at - info.fire_time).total_seconds()
    assert info.status.value == "dispatched" and lateness == pytest.approx(0.04, abs=1e-3)


@pytest.mark.parametrize(
    ("overlap", "expected"),
    [
        ("skip", ["dispatched", "skipped"]),
        ("queue", ["dispatched", "queued"]),
        ("allow", ["dispatched", "dispatched"]),
    ],
)
def test_overlap_policy_when_the_previous_run_is_still_going(
    ctx: Context, user: Principal, start: ManualClock, overlap: str, expected: list[str]
) -> None:
    deploy(ctx, user, schedule("task", interval_rule(HOUR), overlap=overlap))
    scheduler = Scheduler(ctx)
    scheduler.run_once(T_HOUR)  # its call stays queued: no instance runs it
    scheduler.run_once(T_HOUR + HOUR)

    assert [status for _, status, _ in fires(ctx)] == expected
    assert len(calls_of(ctx)) == expected.count("dispatched")


def test_a_queued_fire_runs_once_the_previous_run_ends_and_holds_only_one(
    ctx: Context, user: Principal, start: ManualClock
) -> None:
    deploy(ctx, user, schedule("task", interval_rule(HOUR), overlap="queue"))
    scheduler = Scheduler(ctx)
    scheduler.run_once(T_HOUR)
    scheduler.run_once(T_HOUR + HOUR)  # held
    scheduler.run_once(T_HOUR + 2 * HOUR)  # one is held already: skipped
    assert scheduler.run_once(T_HOUR + 2 * HOUR + 1).released == 0

    first = calls_of(ctx)[0]
    calls.cancel_call(ctx, user, first.id)
    report = scheduler.run_once(T_HOUR + 2 * HOUR + 2)

    assert report.released == 1
    statuses = [status for _, status, _ in fires(ctx)]
    assert statuses == ["dispatched", "dispatched", "skipped"]
    assert len(calls_of(ctx)) == 2


def test_catch_up_runs_the_latest_missed_time_and_records_the_others(
    ctx: Context, user: Principal, start: ManualClock
) -> None:
    deploy(ctx, user, schedule("task", interval_rule(HOUR)))
    # The control plane was down from before the first due time until 3h20m after it.
    report = Scheduler(ctx).run_once(T_HOUR + 3 * HOUR + 1200)

    assert report.dispatched == 1 and report.missed == 3
    assert [(t - T_HOUR, s) for t, s, _ in fires(ctx)] == [
        (0, "missed"),
        (HOUR, "missed"),
        (2 * HOUR, "missed"),
        (3 * HOUR, "dispatched"),
    ]
    assert len(calls_of(ctx)) == 1
    assert next_fire_time(ctx) == T_HOUR + 4 * HOUR


def test_no_catch_up_run_when_the_latest_missed_time_is_outside_the_window(
    ctx: Context, user: Principal, start: ManualClock
) -> None:
    deploy(ctx, user, schedule("task", interval_rule(24 * HOUR), catchup_window_s=1800))
    day_zero = next_fire_time(ctx)
    assert day_zero is not None
    report = Scheduler(ctx).run_once(day_zero + 2 * 24 * HOUR + HOUR)

    assert report.dispatched == 0 and report.missed == 3
    assert calls_of(ctx) == []
    assert [s for _, s, _ in fires(ctx)] == ["missed"] * 3


def test_a_slightly_late_scheduler_is_on_time_even_with_no_catch_up_window(
    ctx: Context, user: Principal, start: ManualClock
) -> None:
    deploy(ctx, user, schedule("task", interval_rule(HOUR), catchup_window_s=0))
    report = Scheduler(ctx).run_once(T_HOUR + ON_TIME_GRACE_S / 2)
    assert report.dispatched == 1


def test_redeploy_changed_rule_takes_effect_from_the_next_due_time(
    ctx: Context, user: Principal, start: ManualClock
) -> None:
    deploy(ctx, user, schedule("task", interval_rule(HOUR)))
    scheduler = Scheduler(ctx)
    scheduler.run_once(T_HOUR)
    start.now = T_HOUR + 600
    deploy(ctx, user, schedule("task", cron_rule("30 * * * *")))  # now at :30 past

    assert next_fire_time(ctx) == T_HOUR + 1800
    scheduler.run_once(T_HOUR + 1800)
    start.now = T_HOUR + 1900
    deploy(ctx, user, schedule("task", cron_rule("30 * * * *")))  # unchanged: kept
    deploy(ctx, user, schedule("task", interval_rule(1800)))  # would be due at :30 again
    scheduler.run_once(T_HOUR + 1900)

    times = [t - T_HOUR for t, _, _ in fires(ctx)]
    assert times == [0, 1800]  # the :30 due time did not fire twice across the redeploys
    assert next_fire_time(ctx) == T_HOUR + 3600


def test_a_due_time_reached_before_a_redeploy_still_fires(
    ctx: Context, user: Principal, start: ManualClock
) -> None:
    deploy(ctx, user, schedule("task", interval_rule(HOUR)))
    start.now = T_HOUR + 0.01  # due, but the scheduler has not acted yet
    deploy(ctx, user, schedule("task", interval_rule(HOUR, reference=1800)))  # now at :30
    Scheduler(ctx).run_once(T_HOUR + 0.02)

    assert [(t, s) for t, s, _ in fires(ctx)] == [(T_HOUR, "dispatched")]
    assert next_fire_time(ctx) == T_HOUR + 1800


def test_removing_the_decorator_or_undeploying_stops_the_schedule(
    ctx: Context, user: Principal, start: ManualClock
) -> None:
    deploy(
        ctx, user, schedule("task", interval_rule(HOUR)), schedule("crunch", interval_rule(HOUR))
    )
    deploy(ctx, user, schedule("crunch", interval_rule(HOUR)))  # task lost its decorator
    assert [s.function for s in schedules.list_schedules(ctx, user, app="demo")] == ["crunch"]

    deployments.undeploy(ctx, user, "demo")
    report = Scheduler(ctx).run_once(T_HOUR + 5)

    assert report.dispatched == 0 and calls_of(ctx, "task") == calls_of(ctx, "crunch") == []
    assert next_fire_time(ctx, "task") is None and next_fire_time(ctx, "crunch") is None


def test_pause_stops_fires_and_resume_continues_from_the_next_due_time(
    ctx: Context, user: Principal, start: ManualClock
) -> None:
    deploy(ctx, user, schedule("task", interval_rule(HOUR)))
    [paused] = schedules.set_paused(ctx, user, app="demo", function="task", paused=True)
    scheduler = Scheduler(ctx)
    scheduler.run_once(T_HOUR + 10)
    start.now = T_HOUR + HOUR + 10
    [resumed] = schedules.set_paused(ctx, user, app="demo", function=None, paused=False)
    scheduler.run_once(T_HOUR + 2 * HOUR)

    assert paused.status == "paused" and resumed.status == "active"
    assert [(t - T_HOUR, s) for t, s, _ in fires(ctx)] == [(2 * HOUR, "dispatched")]


def test_trigger_runs_one_now_and_counts_as_the_previous_run(
    ctx: Context, user: Principal, start: ManualClock
) -> None:
    deploy(ctx, user, schedule("task", interval_rule(HOUR)))
    started = firing.trigger(ctx, user, app="demo", function="task")
    Scheduler(ctx).run_once(T_HOUR)

    assert [c.id for c in calls_of(ctx)] == [started.call_id]
    assert [s for _, s, _ in fires(ctx)] == ["skipped"]


def test_preview_lists_the_times_the_scheduler_fires(
    ctx: Context, user: Principal, start: ManualClock
) -> None:
    deploy(
        ctx,
        user,
        schedule("task", cron_rule("0 1,13 * * *", "Europe/London"), overlap="allow"),
    )
    [info] = schedules.list_schedules(ctx, user, app="demo", count=5)
    scheduler = Scheduler(ctx)
    for due in info.next_fires:
        scheduler.run_once(due.timestamp())

    assert [t for t, _, _ in fires(ctx)] == [d.timestamp() for d in info.next_fires]
    assert info.timezone == "Europe/London" and "0 1,13 * * *" in info.description


def test_a_broken_schedule_does_not_stop_the_others(
    ctx: Context, user: Principal, start: ManualClock
) -> None:
    deploy(
        ctx, user, schedule("task", interval_rule(HOUR)), schedule("crunch", interval_rule(HOUR))
    )
    with ctx.db.write() as session:
        session.execute(
            update(m.schedules)
            .where(m.schedules.c.function == "task")
            .values(
                rule=json.dumps(
                    {"format": 1, "kind": "cron", "expression": "bad", "timezone": "UTC"}
                )
            )
        )
    report = Scheduler(ctx).run_once(T_HOUR)

    assert report.dispatched == 1 and len(calls_of(ctx, "crunch")) == 1
    assert next_fire_time(ctx, "task") is None
    with ctx.db.read() as session:
        error = session.query(m.ScheduleRow).filter_by(function="task").one().error
    assert error and "bad" in error
    listed = {s.function: s for s in schedules.list_schedules(ctx, user, app="demo")}
    assert listed["task"].status == "stopped" and listed["task"].error == error
    assert listed["crunch"].status == "active"


def test_a_replica_whose_lease_expired_cannot_fire_what_another_took_over(
    ctx: Context, user: Principal, start: ManualClock
) -> None:
    deploy(ctx, user, schedule("task", interval_rule(HOUR), overlap="allow"))
    stalled, other = Scheduler(ctx, owner="stalled"), Scheduler(ctx, owner="other")
    claims = firing.claim(ctx, owner=stalled.owner, now=T_HOUR, limit=10)
    assert len(claims) == 1
    # Within the lease nobody else may take it; after it, the next replica fires it.
    assert other.run_once(T_HOUR + 1).dispatched == 0
    late = T_HOUR + ctx.settings.scheduler_lease_s + 1
    assert other.run_once(late).dispatched == 1
    resumed = firing.dispatch(ctx, owner=stalled.owner, claims=claims, now=late + 1)

    assert resumed.rejected == 1 and resumed.dispatched == 0
    assert len(calls_of(ctx)) == 1 and [s for _, s, _ in fires(ctx)] == ["dispatched"]


def test_a_crash_before_dispatch_is_completed_once_by_the_next_replica(
    ctx: Context, user: Principal, start: ManualClock
) -> None:
    deploy(ctx, user, schedule("task", interval_rule(HOUR)))
    firing.claim(ctx, owner="crashed", now=T_HOUR, limit=10)  # and then it died
    successor = Scheduler(ctx, owner="successor")
    late = T_HOUR + ctx.settings.scheduler_lease_s + 1
    successor.run_once(late)
    successor.run_once(late + 1)

    assert [(t, s) for t, s, _ in fires(ctx)] == [(T_HOUR, "dispatched")]
    assert len(calls_of(ctx)) == 1


def test_many_schedules_due_together_fire_in_batches(
    ctx: Context, user: Principal, start: ManualClock
) -> None:
    ctx.settings = ctx.settings.model_copy(update={"scheduler_batch": 7})
    names = tuple(f"f{i}" for i in range(30))
    deploy(ctx, user, *(schedule(n, interval_rule(HOUR)) for n in names), functions=names)
    report = Scheduler(ctx).run_once(T_HOUR)
    assert report.dispatched == 30
    assert sum(len(calls_of(ctx, n)) for n in names) == 30
