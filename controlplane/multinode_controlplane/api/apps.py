from __future__ import annotations

from fastapi import APIRouter, Response

from multinode import wire
from multinode_controlplane.api.deps import CtxDep, PrincipalDep, json_list, json_response
from multinode_controlplane.services import deployments
from multinode_controlplane.services.auth import require_key

router = APIRouter(prefix="/apps", tags=["apps"])


@router.post("/{app}/deployments")
def deploy(app: str, body: wire.DeployRequest, ctx: CtxDep, principal: PrincipalDep) -> Response:
    require_key(principal)
    return json_response(deployments.deploy(ctx, principal, app, body))


@router.get("")
def list_apps(ctx: CtxDep, principal: PrincipalDep) -> Response:
    require_key(principal)
    return json_list(deployments.list_apps(ctx, principal), wire.AppInfo)


@router.get("/{app}")
def get_app(app: str, ctx: CtxDep, principal: PrincipalDep) -> Response:
    require_key(principal)
    return json_response(deployments.get_app(ctx, principal, app))


@router.delete("/{app}")
def undeploy(app: str, ctx: CtxDep, principal: PrincipalDep) -> Response:
    require_key(principal)
    return json_response(deployments.undeploy(ctx, principal, app))


@router.get("/{app}/functions/{name}")
def get_function(app: str, name: str, ctx: CtxDep, principal: PrincipalDep) -> Response:
    return json_response(deployments.get_function(ctx, principal, app, name))
