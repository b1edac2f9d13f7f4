"""Schedules: checked and stored at deploy, listed with their next fire times, paused.

A schedule belongs to an app and is named by its function, so it keeps its identity (and
its fire history) across redeploys. Deploying a version that changes a rule makes the new
rule take effect from its next due time after the deploy; a version without the schedule
deactivates it. The firing itself is in :mod:`multinode_controlplane.services.firing`.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import event, select, update
from sqlalchemy.orm import Session

from multinode import schedule_math, wire
from multinode.errors import InvalidRequestError, MultinodeError, NotFoundError
from multinode_controlplane import models as m
from multinode_controlplane.clock import to_datetime
from multinode_controlplane.domain import fires
from multinode_controlplane.services.auth import Principal, allowed_app_ids, resolve_app
from multinode_controlplane.services.context import Context

log = logging.getLogger(__name__)

SCHEDULER = "scheduler"
"""Notifier key that wakes the scheduler loop (a schedule was added, changed or resumed)."""

_RULE_KEYS = {
    "interval": {"format", "kind", "reference_time", "fold", "timezone", "interval_seconds"},
    "cron": {"format", "kind", "expression", "timezone"},
}


def validate_uploads(
    req: wire.DeployRequest, settings: Any, *, function_names: set[str]
) -> dict[str, schedule_math.ScheduleRule]:
    """Check every schedule of a deploy request, with the server's minimum interval.

    Returns:
        The rule of each scheduled function, by function name.

    Raises:
        InvalidRequestError: (422) naming the function, the field and the reason: a
            malformed or conflicting rule, an unknown timezone, a cron expression that
            never fires, a gap under the minimum, a function not in the deployment, or a
            function scheduled twice.
    """
    minimum = timedelta(seconds=settings.min_schedule_interval_s)
    rules: dict[str, schedule_math.ScheduleRule] = {}
    for upload in req.schedules:
        name = upload.function
        if name not in function_names:
            raise InvalidRequestError(
                f"schedule of {name!r}: the deployment has no function {name!r}",
                details={"function": name, "field": "function", "reason": "unknown_function"},
            )
        if name in rules:
            raise InvalidRequestError(
                f"{name!r} is scheduled twice; a function takes one schedule",
                details={"function": name, "field": "function", "reason": "duplicate"},
            )
        rules[name] = parse_rule(upload.rule, function=name, min_interval=minimum)
    return rules


def parse_rule(
    data: dict[str, Any], *, function: str, min_interval: timedelta
) -> schedule_math.ScheduleRule:
    """Read a rule sent as ``schedule_math``'s ``to_json()`` dict and validate it.

    Raises:
        InvalidRequestError: with ``details`` ``{function, field, reason}``.
    """
    kind = data.get("kind") if isinstance(data, dict) else None
    extra = sorted(set(data) - _RULE_KEYS[kind]) if kind in _RULE_KEYS else []
    if extra:
        raise InvalidRequestError(
            f"schedule of {function!r}: a {kind} rule takes no {', '.join(extra)}; give "
            "either an interval or a cron expression",
            details={"function": function, "field": extra[0], "reason": "conflicting_arguments"},
        )
    try:
        rule = schedule_math.rule_from_json(data)
        return schedule_math.validate(rule, min_interval=min_interval)
    except InvalidRequestError as exc:
        raise InvalidRequestError(
            f"schedule of {function!r}: {exc.message}",
            details={**exc.details, "function": function},
        ) from None
    except Exception as exc:  # crafted input the parser did not foresee: still the caller's
        raise InvalidRequestError(
            f"schedule of {function!r}: the rule is malformed ({type(exc).__name__})",
            details={"function": function, "field": "rule", "reason": "malformed_json"},
        ) from None


def sync(
    session: Session,
    ctx: Context,
    *,
    app_id: int,
    uploads: list[wire.ScheduleUpload],
    rules: dict[str, schedule_math.ScheduleRule],
    now: float,
) -> None:
    """Make the app's schedules those of the version being deployed, in its transaction.

    A new or reactivated schedule is first due at its rule's first fire after ``now`` (and
    after its last fire, so no due time fires twice). A changed rule takes effect from its
    next fire after ``now``; a due time already reached under the old rule still fires.
    An unchanged one keeps its next fire time. Pause survives redeploys.
    """
    existing = {
        row.function: row
        for row in session.execute(
            select(m.ScheduleRow).where(m.ScheduleRow.app_id == app_id)
        ).scalars()
    }
    for upload in uploads:
        rule = rules[upload.function]
        rule_json = json.dumps(rule.to_json(), sort_keys=True)
        row = existing.pop(upload.function, None)
        if row is None:
            row = m.ScheduleRow(
                app_id=app_id,
                function=upload.function,
                rule=rule_json,
                input=upload.input,
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            reschedule = True
        else:
            pending = row.next_fire_time is not None and row.next_fire_time <= now
            reschedule = not row.active or row.rule != rule_json or row.next_fire_time is None
            reschedule = reschedule and not (row.active and pending)
        row.rule = rule_json
        row.overlap = upload.overlap
        row.catchup_window_s = upload.catchup_window_s
        row.input = upload.input
        row.active = True
        row.error = None
        row.updated_at = now
        if reschedule:
            after = max(now, row.last_fire_time or now)
            row.next_fire_time = None if row.paused else fires.next_after(rule, after)
    for row in existing.values():  # scheduled before, not in this version
        row.active = False
        row.next_fire_time = None
        row.updated_at = now
    if uploads:
        wake_after_commit(session, ctx)


def wake_after_commit(session: Session, ctx: Context) -> None:
    """Wake the scheduler once ``session`` commits (before, it would see nothing new)."""
    event.listen(session, "after_commit", lambda _s: ctx.notifier.notify((SCHEDULER,)), once=True)


def list_schedules(
    ctx: Context,
    principal: Principal,
    *,
    app: str | None = None,
    after: datetime | None = None,
    count: int = 3,
) -> list[wire.ScheduleInfo]:
    """The active and paused schedules (of ``app``, or of all the caller's apps), each
    with its next ``count`` fire times after ``after`` (default: now).

    Raises:
        NotFoundError: ``app`` is not the caller's.
        InvalidRequestError: ``count`` outside 0..1000.
    """
    if not 0 <= count <= 1000:
        raise InvalidRequestError(
            "count must be between 0 and 1000", details={"field": "count", "reason": "range"}
        )
    start = after or to_datetime(ctx.clock())
    with ctx.db.read() as session:
        if app is not None:
            app_ids = [resolve_app(session, principal, app).id]
        else:
            app_ids = allowed_app_ids(session, principal)
        s, a = m.schedules.c, m.apps.c
        rows = session.execute(
            select(m.schedules, a.name.label("app_name"), a.status.label("app_status"))
            .join(m.apps, a.id == s.app_id)
            .where(s.app_id.in_(app_ids), s.active.is_(True))
            .order_by(a.name, s.function)
        ).all()
        last = _last_fires(session, [r.id for r in rows])
    return [_info(row, last.get(row.id), start, count) for row in rows]


def _info(row: Any, last: Any, start: datetime, count: int) -> wire.ScheduleInfo:
    data = json.loads(row.rule)
    status = "paused" if row.paused else "active"
    if row.app_status != "deployed":
        status = "inactive"
    error = row.error
    try:
        rule = schedule_math.rule_from_json(data)
        description, zone = rule.describe(), rule.timezone
        upcoming = fires.upcoming(rule, start, count)
    except Exception as exc:  # one unreadable rule must not hide the other schedules
        error = error or describe_error(exc)
        description, zone, upcoming = "unreadable rule", str(data.get("timezone", "")), []
    if error:
        status = "stopped"
    return wire.ScheduleInfo(
        app=row.app_name,
        function=row.function,
        kind=data.get("kind", "cron"),
        description=description,
        timezone=zone,
        rule=data,
        overlap=row.overlap,
        catchup_window_s=row.catchup_window_s,
        status=status,
        next_fires=upcoming,
        last_fire=_fire_info(row.app_name, row.function, last),
        error=error,
    )


def list_fires(
    ctx: Context, principal: Principal, *, app: str, function: str, limit: int = 50
) -> list[wire.FireInfo]:
    """The newest ``limit`` fires of one schedule, newest first.

    Raises:
        NotFoundError: no such app or schedule.
    """
    with ctx.db.read() as session:
        app_row = resolve_app(session, principal, app)
        schedule = _schedule(session, app_row, function)
        f = m.schedule_fires.c
        rows = session.execute(
            select(m.schedule_fires)
            .where(f.schedule_id == schedule.id)
            .order_by(f.fire_time.desc())
            .limit(limit)
        ).all()
    return [_fire_info(app, function, row) for row in rows]  # type: ignore[misc]


def set_paused(
    ctx: Context, principal: Principal, *, app: str, function: str | None, paused: bool
) -> list[wire.ScheduleInfo]:
    """Pause or resume one schedule of ``app`` (or all of them when ``function`` is None).

    Paused, a schedule does not fire and records nothing; resumed, it is next due at its
    first fire time after now (due times that passed while paused are not run). Idempotent.

    Raises:
        NotFoundError: no such app or schedule.
    """
    now = ctx.clock()
    with ctx.db.write() as session:
        app_row = resolve_app(session, principal, app)
        if function is None:
            rows = list(
                session.execute(
                    select(m.ScheduleRow).where(
                        m.ScheduleRow.app_id == app_row.id, m.ScheduleRow.active.is_(True)
                    )
                ).scalars()
            )
        else:
            rows = [_schedule(session, app_row, function)]
        for row in rows:
            if row.paused == paused:
                continue
            row.paused = paused
            row.updated_at = now
            if paused:
                row.next_fire_time = None
            else:
                rule = schedule_math.rule_from_json(json.loads(row.rule))
                row.next_fire_time = fires.next_after(rule, max(now, row.last_fire_time or now))
        if not paused:
            wake_after_commit(session, ctx)
    return list_schedules(ctx, principal, app=app)


def deactivate_app(session: Session, app_id: int, now: float) -> None:
    """Stop every schedule of an undeployed app (a redeploy brings them back)."""
    session.execute(
        update(m.schedules)
        .where(m.schedules.c.app_id == app_id)
        .values(active=False, next_fire_time=None, updated_at=now)
    )


def _schedule(session: Session, app: m.AppRow, function: str) -> m.ScheduleRow:
    row = session.execute(
        select(m.ScheduleRow).where(
            m.ScheduleRow.app_id == app.id,
            m.ScheduleRow.function == function,
            m.ScheduleRow.active.is_(True),
        )
    ).scalar_one_or_none()
    if row is None:
        names = sorted(
            session.execute(
                select(m.ScheduleRow.function).where(
                    m.ScheduleRow.app_id == app.id, m.ScheduleRow.active.is_(True)
                )
            ).scalars()
        )
        raise NotFoundError(
            f"app {app.name!r} has no schedule on {function!r}; its schedules: "
            f"{', '.join(names) or 'none'}",
            details={"app": app.name, "function": function, "schedules": names},
        )
    return row


def _last_fires(session: Session, schedule_ids: list[int]) -> dict[int, Any]:
    if not schedule_ids:
        return {}
    f = m.schedule_fires.c
    s = m.schedules.c
    rows = session.execute(
        select(m.schedule_fires)
        .join(m.schedules, (s.id == f.schedule_id) & (s.last_fire_time == f.fire_time))
        .where(f.schedule_id.in_(schedule_ids))
    ).all()
    return {row.schedule_id: row for row in rows}


def _fire_info(app: str, function: str, row: Any) -> wire.FireInfo | None:
    if row is None:
        return None
    return wire.FireInfo(
        app=app,
        function=function,
        fire_time=to_datetime(row.fire_time),
        status=wire.FireStatus(row.status),
        call_id=row.call_id,
        reason=row.reason,
        dispatched_at=to_datetime(row.dispatched_at),
    )


def describe_error(exc: Exception) -> str:
    """A one-line reason a stored schedule could not be evaluated."""
    if isinstance(exc, MultinodeError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"
