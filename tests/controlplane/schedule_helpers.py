"""Shortcuts of the scheduler tests: deploy scheduled functions, read fires and calls."""

from __future__ import annotations

import base64
import platform
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import select

from multinode import schedule_math, wire
from multinode_controlplane import models as m
from multinode_controlplane.services import deployments
from multinode_controlplane.services.auth import Principal
from multinode_controlplane.services.context import Context
from tests.controlplane.helpers import upload

HOUR = 3600.0
# A whole hour in UTC, so interval and cron rules have due times on round numbers.
T_HOUR = 1_700_002_800.0
NO_ARGS = b"pickled-((), {})"  # opaque to the control plane, as the SDK's bytes are


def interval_rule(seconds: float, reference: float = 0.0) -> dict[str, Any]:
    start = datetime.fromtimestamp(reference, tz=timezone.utc)
    return schedule_math.IntervalRule(start, timedelta(seconds=seconds)).to_json()


def cron_rule(expression: str, tz: str = "UTC") -> dict[str, Any]:
    return schedule_math.CronRule(expression, tz).to_json()


def schedule(function: str, rule: dict[str, Any], **policy: Any) -> wire.ScheduleUpload:
    return wire.ScheduleUpload(
        function=function, rule=rule, input=base64.b64encode(NO_ARGS), **policy
    )


def deploy(
    ctx: Context,
    principal: Principal,
    *schedules: wire.ScheduleUpload,
    app: str = "demo",
    functions: tuple[str, ...] = ("task", "crunch"),
) -> wire.DeploymentInfo:
    """Deploy ``app`` with ``functions`` and the given schedules."""
    sha = upload(ctx, f"blob-of-{app}".encode())
    req = wire.DeployRequest(
        functions=[
            wire.FunctionUpload(name=n, spec=wire.FunctionSpec(cpu=0.5), blob_hash=sha)
            for n in functions
        ],
        python_version=platform.python_version(),
        cloudpickle_version="3.1.2",
        schedules=list(schedules),
    )
    return deployments.deploy(ctx, principal, app, req)


def fires(ctx: Context, function: str = "task") -> list[tuple[float, str, str | None]]:
    """``(fire_time, status, call_id)`` of every fire of ``function``'s schedule, in time order."""
    f, s = m.schedule_fires.c, m.schedules.c
    with ctx.db.read() as session:
        rows = session.execute(
            select(f.fire_time, f.status, f.call_id)
            .join(m.schedules, s.id == f.schedule_id)
            .where(s.function == function)
            .order_by(f.fire_time)
        ).all()
    return [(r.fire_time, r.status, r.call_id) for r in rows]


def calls_of(ctx: Context, function: str = "task") -> list[m.CallRow]:
    with ctx.db.read() as session:
        return list(
            session.execute(
                select(m.CallRow)
                .where(m.CallRow.function == function)
                .order_by(m.CallRow.created_at)
            ).scalars()
        )


def next_fire_time(ctx: Context, function: str = "task") -> float | None:
    with ctx.db.read() as session:
        return session.execute(
            select(m.schedules.c.next_fire_time).where(m.schedules.c.function == function)
        ).scalar_one()
