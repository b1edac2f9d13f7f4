"""``mn.get_dict`` support: credential vending and deleting an app's dicts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from multinode import wire
from multinode_controlplane.api.deps import CtxDep, PrincipalDep, json_response
from multinode_controlplane.services import dict_credentials
from multinode_controlplane.services.auth import require_key, resolve_app
from multinode_controlplane.services.dict_storage import DictStorage

router = APIRouter(prefix="/apps", tags=["dicts"])


def get_dict_storage(request: Request) -> DictStorage:
    return request.app.state.dict_storage


StorageDep = Annotated[DictStorage, Depends(get_dict_storage)]


@router.post("/{app}/dict-credentials")
def vend_credentials(
    app: str, ctx: CtxDep, principal: PrincipalDep, storage: StorageDep
) -> Response:
    return json_response(dict_credentials.vend(ctx, storage, principal, app))


@router.delete("/{app}/dicts")
def delete_dicts(app: str, ctx: CtxDep, principal: PrincipalDep, storage: StorageDep) -> Response:
    require_key(principal)
    with ctx.db.read() as session:
        name = resolve_app(session, principal, app).name
    names, items, objects = storage.delete_app_data(name)
    return json_response(wire.DictsDeleted(app=name, dicts=names, items=items, objects=objects))
