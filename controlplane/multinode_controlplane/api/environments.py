"""Environments (requested by `mn deploy`, built by the builder loop)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from multinode import wire
from multinode_controlplane.api.deps import CtxDep, PrincipalDep, json_response
from multinode_controlplane.services import environments

router = APIRouter(prefix="/environments", tags=["environments"])


@router.post("")
def request_environment(
    body: wire.EnvironmentRequest, ctx: CtxDep, principal: PrincipalDep
) -> Response:
    return json_response(environments.request(ctx, principal, body))


@router.get("/{env_id}")
def get_environment(
    env_id: str, ctx: CtxDep, principal: PrincipalDep, log_offset: int = 0
) -> Response:
    return json_response(environments.get(ctx, principal, env_id, log_offset=log_offset))
