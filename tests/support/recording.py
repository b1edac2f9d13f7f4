"""An HTTP transport for tests that keeps what the SDK sends."""

from __future__ import annotations

import httpx


class RecordingTransport(httpx.HTTPTransport):
    """The real HTTP transport, keeping every request it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return super().handle_request(request)

    def sent(self, method: str, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method and r.url.path == path]
