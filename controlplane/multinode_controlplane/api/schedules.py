"""Schedules: list with a preview of fire times, fire history, trigger, pause, resume."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response

from multinode import wire
from multinode_controlplane.api.deps import CtxDep, PrincipalDep, json_list, json_response
from multinode_controlplane.services import firing, schedules
from multinode_controlplane.services.auth import require_key

router = APIRouter(tags=["schedules"])

FromQuery = Annotated[
    datetime | None,
    Query(alias="from", description="preview fire times after this instant (naive = UTC)"),
]
CountQuery = Annotated[int, Query(ge=0, le=1000, description="fire times to preview")]


@router.get("/schedules")
def list_all(
    ctx: CtxDep, principal: PrincipalDep, after: FromQuery = None, count: CountQuery = 3
) -> Response:
    require_key(principal)
    items = schedules.list_schedules(ctx, principal, after=after, count=count)
    return json_list(items, wire.ScheduleInfo)


@router.get("/apps/{app}/schedules")
def list_for_app(
    app: str,
    ctx: CtxDep,
    principal: PrincipalDep,
    after: FromQuery = None,
    count: CountQuery = 3,
) -> Response:
    require_key(principal)
    items = schedules.list_schedules(ctx, principal, app=app, after=after, count=count)
    return json_list(items, wire.ScheduleInfo)


@router.get("/apps/{app}/schedules/{function}/fires")
def list_fires(
    app: str,
    function: str,
    ctx: CtxDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 50,
) -> Response:
    require_key(principal)
    items = schedules.list_fires(ctx, principal, app=app, function=function, limit=limit)
    return json_list(items, wire.FireInfo)


@router.post("/apps/{app}/schedules/{function}/trigger")
def trigger(app: str, function: str, ctx: CtxDep, principal: PrincipalDep) -> Response:
    require_key(principal)
    return json_response(firing.trigger(ctx, principal, app=app, function=function))


@router.post("/apps/{app}/schedules/pause")
def pause_all(app: str, ctx: CtxDep, principal: PrincipalDep) -> Response:
    require_key(principal)
    items = schedules.set_paused(ctx, principal, app=app, function=None, paused=True)
    return json_list(items, wire.ScheduleInfo)


@router.post("/apps/{app}/schedules/resume")
def resume_all(app: str, ctx: CtxDep, principal: PrincipalDep) -> Response:
    require_key(principal)
    items = schedules.set_paused(ctx, principal, app=app, function=None, paused=False)
    return json_list(items, wire.ScheduleInfo)


@router.post("/apps/{app}/schedules/{function}/pause")
def pause(app: str, function: str, ctx: CtxDep, principal: PrincipalDep) -> Response:
    require_key(principal)
    items = schedules.set_paused(ctx, principal, app=app, function=function, paused=True)
    return json_list(items, wire.ScheduleInfo)


@router.post("/apps/{app}/schedules/{function}/resume")
def resume(app: str, function: str, ctx: CtxDep, principal: PrincipalDep) -> Response:
    require_key(principal)
    items = schedules.set_paused(ctx, principal, app=app, function=function, paused=False)
    return json_list(items, wire.ScheduleInfo)
