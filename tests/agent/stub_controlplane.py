"""An HTTP stand-in for the agent endpoints, for failures the real one will not give on demand.

Everything the real control plane does in normal operation (assignments, results and logs,
the callers' environment, cancel, timeout, blob download and caching, refusing a bad
bootstrap token) is tested against it in ``tests/e2e``. This stand-in exists only to inject,
over real HTTP with the exact ``multinode.wire`` bodies:

- ``failing_reports``: answer the next reports with 503 (a control plane that is busy or
  restarting), so the agent must keep its results and retry;
- ``reject``: refuse results by attempt id (a fence that went stale because the attempt was
  reassigned), so the agent must drop them instead of retrying forever;
- ``push(PollResponse(shutdown=True))``: order a shutdown at once (the real one does so
  only after an idle cooldown, and local-cloud agents run no shutdown command);
- ``revoked``: answer 401 to a token that worked a moment ago (an instance declared lost).
"""

from __future__ import annotations

import json
import queue
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from multinode.wire import (
    EnvironmentRef,
    FunctionEnv,
    FunctionEnvRequest,
    PollRequest,
    PollResponse,
    RegisterRequest,
    RegisterResponse,
    ReportRequest,
    ReportResponse,
)

AGENT_TOKEN = "mna_test_token"
BOOTSTRAP_TOKEN = "mnb_test_bootstrap"


class StubControlPlane:
    """Serves ``/v1/agent/*`` and ``/v1/blobs/*`` on a free loopback port.

    Registration always succeeds. Tests queue :class:`PollResponse` objects with
    :meth:`push`; each long poll hands out the next one (or an empty answer after the
    request's ``wait``). Reports are recorded for assertions.
    """

    def __init__(self, *, poll_timeout_s: float = 0.5) -> None:
        self.poll_timeout_s = poll_timeout_s
        self.blobs: dict[str, bytes] = {}
        self.reports: list[ReportRequest] = []
        self.reject: set[str] = set()
        self.revoked = False
        self.failing_reports = 0  # answer this many reports with 503 first
        self.envs: dict[tuple[str, int], dict[str, str]] = {}  # (function, version) -> env
        self.environments: dict[tuple[str, int], EnvironmentRef] = {}
        self.env_requests: list[FunctionEnvRequest] = []
        self._answers: queue.Queue[PollResponse] = queue.Queue()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        # The agent drops its long poll when it stops; that reset is expected, not news.
        self._server.handle_error = lambda request, address: None  # type: ignore[method-assign]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> StubControlPlane:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def push(self, answer: PollResponse) -> None:
        self._answers.put(answer)

    def results(self) -> dict:
        with self._lock:
            return {r.attempt_id: r for report in self.reports for r in report.results}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; with Nagle on, the body would wait
            # for a delayed ACK (~40 ms) and the stub, not the agent, would set the pace.
            disable_nagle_algorithm = True

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                blob_hash = self.path.rsplit("/", 1)[-1]
                if blob_hash not in stub.blobs:
                    self._reply(404, b'{"code":"not_found","message":"no blob","details":{}}')
                else:
                    self._reply(200, stub.blobs[blob_hash], "application/octet-stream")

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == "/v1/agent/register":
                    RegisterRequest.model_validate_json(body)
                    answer = RegisterResponse(
                        instance_id="i-1",
                        agent_token=AGENT_TOKEN,
                        app="demo",
                        vcpus=2,
                        memory_mib=4096,
                        heartbeat_interval_s=5,
                        poll_timeout_s=stub.poll_timeout_s,
                    )
                    return self._reply(200, answer.model_dump_json().encode())
                if stub.revoked or self.headers.get("Authorization") != f"Bearer {AGENT_TOKEN}":
                    return self._reply(
                        401, b'{"code":"unauthorized","message":"revoked","details":{}}'
                    )
                if self.path == "/v1/agent/poll":
                    request = PollRequest.model_validate_json(body)
                    try:
                        answer = stub._answers.get(timeout=request.wait)
                    except queue.Empty:
                        answer = PollResponse()
                    return self._reply(200, answer.model_dump_json().encode())
                if self.path == "/v1/agent/function-env":
                    request = FunctionEnvRequest.model_validate_json(body)
                    with stub._lock:
                        stub.env_requests.append(request)
                    key = (request.function, request.version)
                    answer = FunctionEnv(
                        env=stub.envs.get(key, {}), environment=stub.environments.get(key)
                    )
                    return self._reply(200, answer.model_dump_json().encode())
                if self.path == "/v1/agent/report" and stub.failing_reports > 0:
                    stub.failing_reports -= 1
                    return self._reply(503, b'{"code":"unreachable","message":"busy","details":{}}')
                if self.path == "/v1/agent/report":
                    request = ReportRequest.model_validate_json(body)
                    with stub._lock:
                        stub.reports.append(request)
                    rejected = [
                        r.attempt_id for r in request.results if r.attempt_id in stub.reject
                    ]
                    return self._reply(
                        200, ReportResponse(rejected=rejected).model_dump_json().encode()
                    )
                self._reply(
                    404,
                    json.dumps({"code": "not_found", "message": self.path, "details": {}}).encode(),
                )

            def _reply(
                self, status: int, body: bytes, content_type: str = "application/json"
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler
