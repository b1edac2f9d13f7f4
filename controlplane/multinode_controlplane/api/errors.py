"""Every failure answers ``{code, message, details}`` (``multinode.wire.ErrorBody``)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from multinode.errors import MultinodeError

log = logging.getLogger(__name__)


def install(app: FastAPI) -> None:
    """Register the handlers that turn errors into error bodies."""

    @app.exception_handler(MultinodeError)
    async def _multinode_error(_request: Request, exc: MultinodeError) -> JSONResponse:
        return JSONResponse(exc.to_body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # Only location, message and type: the offending input may be large or binary.
        errors = [
            {
                "loc": [str(p) for p in e.get("loc", ())],
                "msg": e.get("msg", ""),
                "type": e.get("type", ""),
            }
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(first["loc"][1:] if len(first["loc"]) > 1 else first["loc"])
        message = (
            f"invalid request: {where}: {first['msg']}"
            if where
            else f"invalid request: {first['msg']}"
        )
        return JSONResponse(
            {"code": "invalid", "message": message, "details": {"errors": errors}}, status_code=422
        )

    @app.exception_handler(HTTPException)
    async def _http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            {"code": code, "message": str(exc.detail), "details": {}}, status_code=exc.status_code
        )

    app.add_middleware(_AnswerUnexpected)


class _AnswerUnexpected:
    """Answers an unexpected exception with a 500 error body and keeps the connection.

    Starlette's own last-resort handler answers too, but then re-raises, and the server
    closes the connection: a client's next request on it would fail. This middleware sits
    inside that handler and does not re-raise.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            if started:
                raise  # too late to answer: the response is half sent
            log.exception("unhandled error", exc_info=exc)
            body = {"code": "internal", "message": f"internal error: {type(exc).__name__}"}
            await JSONResponse({**body, "details": {}}, status_code=500)(scope, receive, send)
