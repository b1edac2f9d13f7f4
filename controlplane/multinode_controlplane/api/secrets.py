"""Named secrets (``mn secret``) and the agent's read of one function's setup."""

from __future__ import annotations

from fastapi import APIRouter, Response

from multinode import wire
from multinode_controlplane.api.deps import CtxDep, PrincipalDep, json_list, json_response
from multinode_controlplane.api.dicts import StorageDep
from multinode_controlplane.services import function_env as function_env_service
from multinode_controlplane.services import secrets

router = APIRouter(tags=["secrets"])


@router.put("/secrets/{name}")
def set_secret(name: str, body: wire.SecretSet, ctx: CtxDep, principal: PrincipalDep) -> Response:
    return json_response(secrets.set_secret(ctx, principal, name, body.values))


@router.get("/secrets")
def list_secrets(ctx: CtxDep, principal: PrincipalDep) -> Response:
    return json_list(secrets.list_secrets(ctx, principal), wire.SecretInfo)


@router.delete("/secrets/{name}")
def delete_secret(name: str, ctx: CtxDep, principal: PrincipalDep) -> Response:
    return json_response(secrets.delete_secret(ctx, principal, name))


@router.post("/agent/function-env")
def function_env(
    body: wire.FunctionEnvRequest, ctx: CtxDep, principal: PrincipalDep, storage: StorageDep
) -> Response:
    return json_response(function_env_service.function_env(ctx, storage, principal, body))
