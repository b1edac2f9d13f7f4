from __future__ import annotations

from fastapi import APIRouter, Response

from multinode import wire
from multinode_controlplane.api.deps import CtxDep, PrincipalDep, json_list
from multinode_controlplane.services import instances
from multinode_controlplane.services.auth import require_key

router = APIRouter(prefix="/instances", tags=["instances"])


@router.get("")
def list_instances(ctx: CtxDep, principal: PrincipalDep, app: str | None = None) -> Response:
    require_key(principal)
    return json_list(instances.list_instances(ctx, principal, app=app), wire.InstanceInfo)
