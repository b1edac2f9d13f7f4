"""Dependencies shared by the routers, as ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import Depends, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, TypeAdapter, ValidationError

from multinode_controlplane.services.auth import Principal, authenticate, cached_principal
from multinode_controlplane.services.context import Context
from multinode_controlplane.settings import ServerSettings

M = TypeVar("M", bound=BaseModel)

# The dependencies are coroutines: FastAPI runs a plain ``def`` dependency in its thread
# pool, a hop that costs more than these functions do.


async def get_ctx(request: Request) -> Context:
    return request.app.state.ctx


CtxDep = Annotated[Context, Depends(get_ctx)]


async def get_settings(ctx: CtxDep) -> ServerSettings:
    return ctx.settings


SettingsDep = Annotated[ServerSettings, Depends(get_settings)]


async def get_principal(
    ctx: CtxDep, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    # A recently seen token is answered from memory; only a lookup goes to a thread.
    principal = cached_principal(ctx, authorization)
    if principal is not None:
        return principal
    return await anyio.to_thread.run_sync(authenticate, ctx, authorization)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def json_body(model: type[M]) -> Any:
    """A dependency that validates the request body straight from its JSON bytes.

    For the hot endpoints (agent polls and reports, outputs): pydantic parses the bytes in
    one pass, where FastAPI's own body handling decodes to Python objects first and then
    validates them. Invalid bodies answer 422 like FastAPI's.
    """

    async def parse(request: Request) -> M:
        try:
            return model.model_validate_json(await request.body())
        except ValidationError as exc:
            errors = [{**e, "loc": ("body", *e.get("loc", ()))} for e in exc.errors()]
            raise RequestValidationError(errors) from None

    return Depends(parse)


def json_response(model: BaseModel, status_code: int = 200) -> Response:
    """Serialise a wire model as is. Models holding raw bytes are built with
    ``model_construct`` and must not be validated again (validation reads bytes as base64)."""
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")


_ADAPTERS: dict[type, TypeAdapter[Any]] = {}


def json_list(items: Sequence[BaseModel], item_type: type[BaseModel]) -> Response:
    adapter = _ADAPTERS.setdefault(item_type, TypeAdapter(list[item_type]))  # type: ignore[valid-type]
    return Response(adapter.dump_json(list(items)), media_type="application/json")
