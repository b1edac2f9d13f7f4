from __future__ import annotations

from fastapi import APIRouter, Request, Response

from multinode import wire
from multinode_controlplane import __version__
from multinode_controlplane.api.deps import CtxDep, json_response

router = APIRouter(tags=["health"])


@router.get("/health")
def health(ctx: CtxDep, request: Request) -> Response:
    """Up, with the database's kind and the AWS target's start-up check (None: not run)."""
    return json_response(
        wire.Health(
            version=__version__,
            database=ctx.db.dialect,
            aws=getattr(request.app.state, "aws_check", None),
        )
    )
