from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from multinode import wire
from multinode_controlplane.api.deps import (
    CtxDep,
    PrincipalDep,
    json_body,
    json_list,
    json_response,
)
from multinode_controlplane.services import calls

router = APIRouter(prefix="/calls", tags=["calls"])


@router.post("")
async def create_calls(
    ctx: CtxDep,
    principal: PrincipalDep,
    body: Annotated[wire.CallsCreate, json_body(wire.CallsCreate)],
) -> Response:
    return json_response(await calls.create_and_wait(ctx, principal, body))


@router.post("/outputs")
async def outputs(
    ctx: CtxDep,
    principal: PrincipalDep,
    body: Annotated[wire.OutputsRequest, json_body(wire.OutputsRequest)],
) -> Response:
    return json_response(await calls.wait_outputs(ctx, principal, body))


@router.get("")
def list_calls(
    ctx: CtxDep,
    principal: PrincipalDep,
    app: str | None = None,
    status: wire.CallStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> Response:
    return json_list(
        calls.list_calls(ctx, principal, app=app, status=status, limit=limit), wire.CallInfo
    )


@router.get("/{call_id}")
def get_call(call_id: str, ctx: CtxDep, principal: PrincipalDep) -> Response:
    return json_response(calls.get_call(ctx, principal, call_id))


@router.post("/{call_id}/cancel")
def cancel_call(call_id: str, ctx: CtxDep, principal: PrincipalDep) -> Response:
    return json_response(calls.cancel_call(ctx, principal, call_id))
