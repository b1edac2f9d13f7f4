"""Firing schedules: claim the due ones, record each due time once, create its call.

Exactly once, across replicas and crashes:

1. :func:`claim` takes the lease of up to ``limit`` due schedules in one short
   transaction, bumping each one's ``fence`` (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so
   replicas claim disjoint sets; SQLite has one replica).
2. :func:`dispatch` then, in one transaction, re-reads those schedules under a row lock,
   drops every one whose fence moved (its lease expired and another replica claimed it),
   and for the rest writes the fire rows, the calls and the next due time together. The
   fire row is unique on ``(schedule_id, fire_time)`` and inserted with ``ON CONFLICT DO
   NOTHING``; a call is created only for a fire row this transaction inserted.

A replica that dies or stalls between the two steps leaves the schedule due with a lease
that expires; whichever replica claims it next fires it. Since the fire rows and the calls
commit together, there is no half-done dispatch to repair.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from multinode import schedule_math, wire
from multinode_controlplane import models as m
from multinode_controlplane.domain import fires, states
from multinode_controlplane.services import schedules
from multinode_controlplane.services.auth import Principal, resolve_app
from multinode_controlplane.services.context import Context
from multinode_controlplane.services.deployments import current_deployment, find_function

log = logging.getLogger(__name__)

_BUSY = (states.QUEUED, states.RUNNING)


@dataclass(frozen=True)
class Claim:
    schedule_id: int
    fence: int


@dataclass
class DispatchReport:
    """What one :func:`dispatch` did; counts are of fire rows written."""

    dispatched: int = 0
    skipped: int = 0
    missed: int = 0
    queued: int = 0
    rejected: int = 0  # claims whose fence had moved: another replica took them over
    call_ids: list[str] = field(default_factory=list)


def claim(ctx: Context, *, owner: str, now: float, limit: int) -> list[Claim]:
    """Lease up to ``limit`` schedules due at ``now``, earliest first, for ``owner``."""
    s = m.schedules.c
    query = (
        select(s.id)
        .where(s.next_fire_time <= now, or_(s.lease_until.is_(None), s.lease_until < now))
        .order_by(s.next_fire_time)
        .limit(limit)
    )
    if not ctx.db.is_sqlite:
        query = query.with_for_update(skip_locked=True)
    with ctx.db.write() as session:
        ids = list(session.execute(query).scalars())
        if not ids:
            return []
        rows = session.execute(
            update(m.schedules)
            .where(s.id.in_(ids))
            .values(
                lease_owner=owner,
                lease_until=now + ctx.settings.scheduler_lease_s,
                fence=s.fence + 1,
            )
            .returning(s.id, s.fence)
        ).all()
    return [Claim(row.id, row.fence) for row in rows]


def dispatch(ctx: Context, *, owner: str, claims: list[Claim], now: float) -> DispatchReport:
    """Act on the claimed schedules' due times at ``now``; see the module docstring.

    A schedule whose rule cannot be evaluated is stopped (its ``error`` says why) without
    affecting the others; one whose app was undeployed is deactivated.
    """
    report = DispatchReport()
    if not claims:
        return report
    fences = {c.schedule_id: c.fence for c in claims}
    s, a = m.schedules.c, m.apps.c
    query = (
        select(m.schedules, a.status.label("app_status"))
        .join(m.apps, a.id == s.app_id)
        .where(s.id.in_(list(fences)), s.lease_owner == owner)
    )
    if not ctx.db.is_sqlite:
        query = query.with_for_update(of=m.schedules)
    app_ids: set[int] = set()
    with ctx.db.write() as session:
        rows = [r for r in session.execute(query).all() if fences.get(r.id) == r.fence]
        report.rejected = len(claims) - len(rows)
        busy = _busy_calls(session, [r.last_call_id for r in rows if r.last_call_id])
        waiting = _schedules_with_queued_fire(session, [r.id for r in rows])
        targets = _current_functions(session, {r.app_id for r in rows})
        fire_rows: list[dict[str, Any]] = []
        calls: dict[tuple[int, float], dict[str, Any]] = {}
        changes: list[dict[str, Any]] = []
        for row in rows:
            change = {
                "_id": row.id,
                "_next": row.next_fire_time,
                "_last": row.last_fire_time,
                "_call": row.last_call_id,
                "_active": row.active,
                "_error": row.error,
            }
            changes.append(change)
            if row.app_status != "deployed" or not row.active:
                change.update(_active=False, _next=None)
                continue
            if row.next_fire_time is None or row.next_fire_time > now:
                continue  # redeployed or paused since the claim: nothing is due
            try:
                rule = schedule_math.rule_from_json(json.loads(row.rule))
                plan = fires.plan(
                    rule,
                    due=row.next_fire_time,
                    now=now,
                    catchup_window_s=row.catchup_window_s,
                    overlap=row.overlap,
                    previous_running=row.last_call_id in busy,
                    fire_queued=row.id in waiting,
                )
            except Exception as exc:  # a bad stored rule stops this schedule only
                log.error("schedule %s (%s) stopped: %s", row.id, row.function, exc)
                change.update(_next=None, _error=schedules.describe_error(exc))
                continue
            last = plan.run_time if plan.run_time is not None else plan.missed[-1]
            change.update(_next=plan.next_fire_time, _last=last)
            if plan.missed_not_recorded:
                log.warning(
                    "schedule %s (%s): %d older missed due times not recorded one by one",
                    row.id,
                    row.function,
                    plan.missed_not_recorded,
                )
            for missed in plan.missed:
                fire_rows.append(_fire(row.id, missed, "missed", now, reason=_MISSED))
            if plan.run_time is None:
                continue
            call_id = None
            reason = plan.reason
            if plan.run_status == "dispatched":
                target = targets.get((row.app_id, row.function))
                if target is None:
                    plan_status = "skipped"
                    reason = f"the app's current version has no function {row.function!r}"
                else:
                    plan_status = "dispatched"
                    call_id = new_call_id()
                    calls[(row.id, plan.run_time)] = call_row(
                        target, call_id=call_id, data=row.input, now=now
                    )
            else:
                plan_status = plan.run_status
            fire_rows.append(
                _fire(row.id, plan.run_time, plan_status, now, reason=reason, call_id=call_id)
            )
        inserted = _insert_fires(session, ctx, fire_rows)
        new_calls = [call for key, call in calls.items() if key in inserted]
        by_schedule = {key[0]: call["id"] for key, call in calls.items() if key in inserted}
        for change in changes:
            change["_call"] = by_schedule.get(change["_id"], change["_call"])
        if new_calls:
            session.execute(insert(m.calls), new_calls)
        if changes:
            session.execute(
                update(m.schedules)
                .where(s.id == bindparam("_id"))
                .values(
                    next_fire_time=bindparam("_next"),
                    last_fire_time=bindparam("_last"),
                    last_call_id=bindparam("_call"),
                    active=bindparam("_active"),
                    error=bindparam("_error"),
                    lease_owner=None,
                    lease_until=None,
                ),
                changes,
            )
        for row in fire_rows:
            if (row["schedule_id"], row["fire_time"]) in inserted:
                status = row["status"]
                setattr(report, status, getattr(report, status) + 1)
        report.call_ids = [call["id"] for call in new_calls]
        app_ids = {call["app_id"] for call in new_calls}
    for app_id in app_ids:
        ctx.notifier.calls_created(app_id)
    return report


def release_queued(ctx: Context, *, now: float) -> list[str]:
    """Start the held fires (``overlap="queue"``) whose previous run has ended.

    A held fire of a schedule that was removed or whose app was undeployed is recorded as
    skipped instead.

    Returns:
        The ids of the calls created.
    """
    f, s, a = m.schedule_fires.c, m.schedules.c, m.apps.c
    query = (
        select(
            f.id, f.schedule_id, s.app_id, s.function, s.input, s.active, s.last_call_id, a.status
        )
        .select_from(m.schedule_fires)
        .join(m.schedules, s.id == f.schedule_id)
        .join(m.apps, a.id == s.app_id)
        .where(f.status == "queued")
    )
    if not ctx.db.is_sqlite:
        query = query.with_for_update(of=m.schedule_fires, skip_locked=True)
    created: list[dict[str, Any]] = []
    with ctx.db.write() as session:
        rows = session.execute(query).all()
        if not rows:
            return []
        busy = _busy_calls(session, [r.last_call_id for r in rows if r.last_call_id])
        targets = _current_functions(session, {r.app_id for r in rows})
        for row in rows:
            target = targets.get((row.app_id, row.function))
            if not row.active or row.status != "deployed" or target is None:
                _set_fire(session, row.id, "skipped", now, reason="the schedule was stopped")
                continue
            if row.last_call_id in busy:
                continue
            call = call_row(target, call_id=new_call_id(), data=row.input, now=now)
            session.execute(insert(m.calls), [call])
            _set_fire(session, row.id, "dispatched", now, call_id=call["id"])
            session.execute(
                update(m.schedules).where(s.id == row.schedule_id).values(last_call_id=call["id"])
            )
            created.append(call)
    for app_id in {c["app_id"] for c in created}:
        ctx.notifier.calls_created(app_id)
    return [c["id"] for c in created]


def trigger(ctx: Context, principal: Principal, *, app: str, function: str) -> wire.TriggerResponse:
    """Run a scheduled function once now, whatever its schedule and overlap policy say.

    The run counts as the schedule's previous run for the overlap policy.

    Raises:
        NotFoundError: no such deployed app, or no schedule on ``function``.
    """
    now = ctx.clock()
    with ctx.db.write() as session:
        app_row = resolve_app(session, principal, app)
        deployment = current_deployment(session, app_row)
        schedule = schedules._schedule(session, app_row, function)
        row = find_function(session, app_row, deployment, function)
        target = _Target(app_row.id, deployment.version, row.id, row.name, row.spec)
        call = call_row(target, call_id=new_call_id(), data=schedule.input, now=now)
        session.execute(insert(m.calls), [call])
        schedule.last_call_id = call["id"]
    ctx.notifier.calls_created(app_row.id)
    return wire.TriggerResponse(app=app, function=function, call_id=call["id"])


def earliest_due(ctx: Context) -> tuple[float | None, bool]:
    """The earliest next fire time of any schedule, and whether any fire is held."""
    with ctx.db.read() as session:
        due = session.execute(select(func.min(m.schedules.c.next_fire_time))).scalar()
        held = session.execute(
            select(m.schedule_fires.c.id).where(m.schedule_fires.c.status == "queued").limit(1)
        ).first()
    return due, held is not None


@dataclass(frozen=True)
class _Target:
    app_id: int
    version: int
    function_id: int
    name: str
    spec: str


def new_call_id() -> str:
    return "c" + uuid.uuid4().hex[:28]


def call_row(target: _Target, *, call_id: str, data: bytes, now: float) -> dict[str, Any]:
    """A queued call of ``target``, as ``services.calls.create_calls`` writes one."""
    spec = wire.FunctionSpec.model_validate_json(target.spec)
    return {
        "id": call_id,
        "app_id": target.app_id,
        "version": target.version,
        "function_id": target.function_id,
        "function": target.name,
        "status": states.QUEUED,
        "input": bytes(data),
        "created_at": now,
        "parent_call_id": None,
        "cpu": spec.cpu,
        "memory_mib": spec.memory_mib,
        "gpu_count": spec.gpu_count,
        "timeout_s": spec.timeout_s,
        "retries": spec.retries,
    }


_MISSED = "due while no scheduler ran; only the latest missed time may run (catchup_window)"


def _fire(
    schedule_id: int,
    fire_time: float,
    status: str,
    now: float,
    *,
    reason: str | None = None,
    call_id: str | None = None,
) -> dict[str, Any]:
    return {
        "schedule_id": schedule_id,
        "fire_time": fire_time,
        "status": status,
        "call_id": call_id,
        "reason": reason,
        "dispatched_at": now,
    }


def _insert_fires(session, ctx: Context, rows: list[dict[str, Any]]) -> set[tuple[int, float]]:  # type: ignore[no-untyped-def]
    """Insert fire rows, skipping those that exist; return the keys actually inserted."""
    if not rows:
        return set()
    dialect = sqlite if ctx.db.is_sqlite else postgresql
    f = m.schedule_fires.c
    stmt = (
        dialect.insert(m.schedule_fires)
        .on_conflict_do_nothing(index_elements=["schedule_id", "fire_time"])
        .returning(f.schedule_id, f.fire_time)
    )
    result = session.execute(stmt, rows)
    return {(r.schedule_id, r.fire_time) for r in result}


def _set_fire(session, fire_id: int, status: str, now: float, **values: Any) -> None:  # type: ignore[no-untyped-def]
    session.execute(
        update(m.schedule_fires)
        .where(m.schedule_fires.c.id == fire_id)
        .values(status=status, dispatched_at=now, **values)
    )


def _busy_calls(session, call_ids: list[str]) -> set[str]:  # type: ignore[no-untyped-def]
    if not call_ids:
        return set()
    c = m.calls.c
    return set(
        session.execute(select(c.id).where(c.id.in_(call_ids), c.status.in_(_BUSY))).scalars()
    )


def _schedules_with_queued_fire(session, schedule_ids: list[int]) -> set[int]:  # type: ignore[no-untyped-def]
    if not schedule_ids:
        return set()
    f = m.schedule_fires.c
    return set(
        session.execute(
            select(f.schedule_id).where(f.schedule_id.in_(schedule_ids), f.status == "queued")
        ).scalars()
    )


def _current_functions(session, app_ids: set[int]) -> dict[tuple[int, str], _Target]:  # type: ignore[no-untyped-def]
    """The functions of each app's current version, by ``(app_id, name)``."""
    if not app_ids:
        return {}
    f, d, a = m.functions.c, m.deployments.c, m.apps.c
    rows = session.execute(
        select(f.id, f.name, f.spec, d.app_id, d.version)
        .join(m.deployments, d.id == f.deployment_id)
        .join(m.apps, (a.id == d.app_id) & (a.current_version == d.version))
        .where(d.app_id.in_(app_ids))
    )
    return {(r.app_id, r.name): _Target(r.app_id, r.version, r.id, r.name, r.spec) for r in rows}
