from __future__ import annotations

from fastapi import APIRouter, Response

from multinode import wire
from multinode_controlplane.api.deps import CtxDep, PrincipalDep, json_response
from multinode_controlplane.services import agents

router = APIRouter(prefix="/agent", tags=["agent"])


@router.post("/register")
def register(body: wire.RegisterRequest, ctx: CtxDep) -> Response:
    return json_response(agents.register(ctx, body))


@router.post("/poll")
async def poll(body: wire.PollRequest, ctx: CtxDep, principal: PrincipalDep) -> Response:
    return json_response(await agents.poll(ctx, principal, body))


@router.post("/report")
def report(body: wire.ReportRequest, ctx: CtxDep, principal: PrincipalDep) -> Response:
    return json_response(agents.report(ctx, principal, body))
