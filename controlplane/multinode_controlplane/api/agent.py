from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Response

from multinode import wire
from multinode_controlplane.api.deps import CtxDep, PrincipalDep, json_body, json_response
from multinode_controlplane.services import agents

router = APIRouter(prefix="/agent", tags=["agent"])


@router.post("/register")
def register(body: wire.RegisterRequest, ctx: CtxDep) -> Response:
    return json_response(agents.register(ctx, body))


@router.post("/poll")
async def poll(
    ctx: CtxDep,
    principal: PrincipalDep,
    body: Annotated[wire.PollRequest, json_body(wire.PollRequest)],
) -> Response:
    return json_response(await agents.poll(ctx, principal, body))


@router.post("/report")
def report(
    ctx: CtxDep,
    principal: PrincipalDep,
    body: Annotated[wire.ReportRequest, json_body(wire.ReportRequest)],
) -> Response:
    return json_response(agents.report(ctx, principal, body))
