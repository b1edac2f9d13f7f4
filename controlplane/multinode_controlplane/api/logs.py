from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from multinode_controlplane.api.deps import CtxDep, PrincipalDep, json_response
from multinode_controlplane.services import logs
from multinode_controlplane.services.auth import require_key

router = APIRouter(prefix="/logs", tags=["logs"])


@router.get("")
def list_logs(
    ctx: CtxDep,
    principal: PrincipalDep,
    app: str | None = None,
    function: str | None = None,
    call_id: str | None = None,
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> Response:
    require_key(principal)
    page = logs.list_logs(
        ctx, principal, app=app, function=function, call_id=call_id, after=after, limit=limit
    )
    return json_response(page)
