from __future__ import annotations

import anyio
from fastapi import APIRouter, Request, Response

from multinode import wire
from multinode_controlplane.api.deps import CtxDep, PrincipalDep
from multinode_controlplane.services import blobs
from multinode_controlplane.services.auth import require_key

router = APIRouter(prefix="/blobs", tags=["blobs"])


@router.post("/missing")
def missing_blobs(
    body: wire.BlobsMissingRequest, ctx: CtxDep, principal: PrincipalDep
) -> wire.BlobsMissingResponse:
    require_key(principal)
    return wire.BlobsMissingResponse(missing=blobs.missing(ctx, body.hashes))


@router.put("/{sha256}", status_code=201)
async def put_blob(sha256: str, request: Request, ctx: CtxDep, principal: PrincipalDep) -> Response:
    require_key(principal)
    data = await request.body()
    created = await anyio.to_thread.run_sync(blobs.put_blob, ctx, sha256, data)
    return Response(status_code=201 if created else 200)


@router.head("/{sha256}")
def head_blob(sha256: str, ctx: CtxDep, principal: PrincipalDep) -> Response:
    require_key(principal)
    return Response(status_code=200 if blobs.has_blob(ctx, sha256) else 404)


@router.get("/{sha256}")
def get_blob(sha256: str, ctx: CtxDep, principal: PrincipalDep) -> Response:
    return Response(blobs.get_blob(ctx, sha256), media_type="application/octet-stream")
