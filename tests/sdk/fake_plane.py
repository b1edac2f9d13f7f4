"""An in-memory control plane plus agent behind an httpx transport, for SDK unit tests.

The real control plane and agent are tested end to end in ``tests/e2e``; this fake lets
the SDK's own logic (ordering, error mapping, chunking) be checked in milliseconds. It
speaks exactly the bodies of ``multinode.wire`` and runs each call at submission, in
this process, the way an agent would: unpickle the function blob and the input, call it.
"""

from __future__ import annotations

import base64
import json
import re
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import cloudpickle
import httpx
from multinode import wire
from multinode.errors import NotFoundError


class FakePlane:
    """State of the fake; tests read the recorded requests and set outcomes."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.deployments: dict[str, wire.DeploymentInfo] = {}
        self.calls: dict[str, wire.CallInfo] = {}
        self.outputs: dict[str, wire.CallOutput] = {}
        self.requests: list[tuple[str, str]] = []
        self.create_sizes: list[int] = []
        self.outputs_sizes: list[int] = []
        self.parents: list[str | None] = []
        # function name -> (status, reason) to report instead of running it
        self.forced: dict[str, tuple[str, str]] = {}
        self.max_outputs_per_answer = 10_000
        self.undeployed: list[str] = []
        self.log_queries: list[dict[str, str]] = []
        self._next = 0

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/v1")
        self.requests.append((request.method, path))
        for method, pattern, handler in self._routes():
            match = re.fullmatch(pattern, path)
            if method == request.method and match:
                try:
                    return handler(request, *match.groups())
                except NotFoundError as exc:
                    return httpx.Response(404, json=exc.to_body())
        return httpx.Response(404, json={"code": "not_found", "message": f"no route {path}"})

    def _routes(self) -> list[tuple[str, str, Callable[..., httpx.Response]]]:
        return [
            ("GET", r"/health", lambda r: _ok(wire.Health(version="fake", database="memory"))),
            ("HEAD", r"/blobs/([0-9a-f]+)", self._head_blob),
            ("PUT", r"/blobs/([0-9a-f]+)", self._put_blob),
            ("POST", r"/apps/([^/]+)/deployments", self._deploy),
            (
                "GET",
                r"/apps",
                lambda r: httpx.Response(
                    200, json=[self._app(n).model_dump(mode="json") for n in self.deployments]
                ),
            ),
            ("GET", r"/apps/([^/]+)", lambda r, app: _ok(self._app(app))),
            ("GET", r"/apps/([^/]+)/functions/([^/]+)", self._get_function),
            ("POST", r"/calls", self._create_calls),
            ("POST", r"/calls/outputs", self._outputs),
            ("GET", r"/calls", self._list_calls),
            ("GET", r"/instances", lambda r: httpx.Response(200, json=[])),
            ("GET", r"/calls/([^/]+)", lambda r, cid: _ok(self.calls[cid])),
            ("POST", r"/calls/([^/]+)/cancel", self._cancel),
            ("DELETE", r"/apps/([^/]+)", self._undeploy),
            ("GET", r"/logs", self._logs),
        ]

    def _head_blob(self, request: httpx.Request, digest: str) -> httpx.Response:
        return httpx.Response(200 if digest in self.blobs else 404)

    def _put_blob(self, request: httpx.Request, digest: str) -> httpx.Response:
        self.blobs[digest] = request.content
        return httpx.Response(204)

    def _deploy(self, request: httpx.Request, app: str) -> httpx.Response:
        body = wire.DeployRequest.model_validate_json(request.content)
        missing = [f.blob_hash for f in body.functions if f.blob_hash not in self.blobs]
        if missing:
            return httpx.Response(
                422, json={"code": "invalid", "message": f"missing blobs {missing}"}
            )
        previous = self.deployments.get(app)
        version = previous.version + 1 if previous else 1
        info = wire.DeploymentInfo(
            app=app,
            version=version,
            created_at=_now(),
            python_version=body.python_version,
            cloudpickle_version=body.cloudpickle_version,
            functions=[
                wire.FunctionInfo(
                    app=app, name=f.name, version=version, spec=f.spec, blob_hash=f.blob_hash
                )
                for f in body.functions
            ],
        )
        self.deployments[app] = info
        return _ok(info)

    def _app(self, app: str) -> wire.AppInfo:
        info = self.deployments.get(app)
        if info is None:
            raise NotFoundError(f"no app {app!r}")
        return wire.AppInfo(
            name=app,
            status="deployed",
            version=info.version,
            created_at=info.created_at,
            ephemeral=False,
            functions=[f.name for f in info.functions],
        )

    def _function(self, app: str, name: str) -> wire.FunctionInfo:
        for fn in self._require(app).functions:
            if fn.name == name:
                return fn
        raise NotFoundError(f"app {app!r} has no function {name!r}")

    def _require(self, app: str) -> wire.DeploymentInfo:
        if app not in self.deployments:
            raise NotFoundError(f"no app {app!r}")
        return self.deployments[app]

    def _get_function(self, request: httpx.Request, app: str, name: str) -> httpx.Response:
        return _ok(self._function(app, name))

    def _create_calls(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        fn = self._function(body["app"], body["function"])
        self.create_sizes.append(len(body["inputs"]))
        self.parents.append(body.get("parent_call_id"))
        ids = []
        for encoded in body["inputs"]:
            self._next += 1
            call_id = f"c{self._next}"
            ids.append(call_id)
            self.calls[call_id] = wire.CallInfo(
                id=call_id, app=fn.app, function=fn.name, version=fn.version,
                status=wire.CallStatus.queued, created_at=_now(),
            )  # fmt: skip
            self._run(call_id, fn, base64.b64decode(encoded))
        created = wire.CallsCreated(app=fn.app, function=fn.name, version=fn.version, call_ids=ids)
        return _ok(created)

    def _run(self, call_id: str, fn: wire.FunctionInfo, data: bytes) -> None:
        forced = self.forced.get(fn.name)
        if forced is not None:
            status, reason = forced
            if status != "queued":
                self._finish(call_id, status, reason=reason)
            return
        func = cloudpickle.loads(self.blobs[fn.blob_hash])
        args, kwargs = cloudpickle.loads(data)
        try:
            value = func(*args, **kwargs)
        except Exception as exc:
            try:
                pickled = cloudpickle.dumps(exc)
            except Exception:
                pickled = None
            error = {
                "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
                "message": str(exc),
                "traceback": "".join(traceback.format_exception(exc)),
                "pickled": base64.b64encode(pickled).decode() if pickled else None,
            }
            self._finish(call_id, "failed", error=error)
        else:
            self._finish(call_id, "succeeded", output=cloudpickle.dumps(value))

    def _finish(self, call_id: str, status: str, **fields: Any) -> None:
        output = fields.pop("output", None)
        body = {"call_id": call_id, "status": status, **fields}
        if output is not None:
            body["output"] = base64.b64encode(output).decode()
        self.outputs[call_id] = wire.CallOutput.model_validate(body)
        self.calls[call_id] = self.calls[call_id].model_copy(
            update={"status": wire.CallStatus(status)}
        )

    def _outputs(self, request: httpx.Request) -> httpx.Response:
        body = wire.OutputsRequest.model_validate_json(request.content)
        self.outputs_sizes.append(len(body.call_ids))
        ready = [self.outputs[c] for c in body.call_ids if c in self.outputs]
        return _ok(wire.OutputsResponse(outputs=ready[: self.max_outputs_per_answer]))

    def _list_calls(self, request: httpx.Request) -> httpx.Response:
        app = request.url.params.get("app")
        limit = int(request.url.params.get("limit", 100))
        calls = [c for c in reversed(self.calls.values()) if app in (None, c.app)][:limit]
        return httpx.Response(200, json=[c.model_dump(mode="json") for c in calls])

    def _undeploy(self, request: httpx.Request, app: str) -> httpx.Response:
        info = self._app(app).model_copy(update={"status": "undeployed"})
        self.undeployed.append(app)
        return _ok(info)

    def _logs(self, request: httpx.Request) -> httpx.Response:
        self.log_queries.append(dict(request.url.params))
        return _ok(wire.LogsPage(lines=[], next_after=0))

    def _cancel(self, request: httpx.Request, call_id: str) -> httpx.Response:
        if call_id not in self.outputs:
            self._finish(call_id, "cancelled", reason="cancelled by the user")
        return _ok(self.calls[call_id])


def _ok(model: Any) -> httpx.Response:
    return httpx.Response(
        200, content=model.model_dump_json(), headers={"content-type": "application/json"}
    )


def _now() -> datetime:
    return datetime.now(timezone.utc)
