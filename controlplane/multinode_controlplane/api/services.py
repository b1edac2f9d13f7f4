"""Services: their replicas, where they answer, and how they fare."""

from __future__ import annotations

from fastapi import APIRouter, Response

from multinode import wire
from multinode_controlplane.api.deps import CtxDep, PrincipalDep, json_list
from multinode_controlplane.services import service_replicas

router = APIRouter(tags=["services"])


@router.get("/services")
def list_services(
    ctx: CtxDep, principal: PrincipalDep, app: str | None = None, all: bool = False
) -> Response:
    """Live replicas of every service (of ``app``); ``all`` adds the stopped ones."""
    items = service_replicas.list_services(ctx, principal, app=app, include_stopped=all)
    return json_list(items, wire.ServiceInfo)


@router.get("/apps/{app}/services/{name}")
def get_service(app: str, name: str, ctx: CtxDep, principal: PrincipalDep) -> Response:
    """The replicas of one service (agents of the app may ask too: a function can find it)."""
    return json_list(service_replicas.get_service(ctx, principal, app, name), wire.ServiceInfo)
