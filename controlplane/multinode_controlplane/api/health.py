from __future__ import annotations

from fastapi import APIRouter, Response

from multinode import wire
from multinode_controlplane import __version__
from multinode_controlplane.api.deps import CtxDep, json_response

router = APIRouter(tags=["health"])


@router.get("/health")
def health(ctx: CtxDep) -> Response:
    return json_response(wire.Health(version=__version__, database=ctx.db.dialect))
