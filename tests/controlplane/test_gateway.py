"""The gateway over real sockets: replicas are small HTTP servers, the route table comes
from a stand-in for ``GET /v1/services`` that a test changes at will."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from multinode_controlplane.gateway import Gateway
from tests.support.procs import free_port, wait_until


class Replica:
    """An HTTP server answering ``{"name": ..., "path": ..., "body": n}``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.connections: list[socket.socket] = []
        replica = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                replica.connections.append(self.connection)

            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, body_size: int) -> None:
                data = json.dumps(
                    {"name": replica.name, "path": self.path, "body": body_size}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._answer(0)

            def do_POST(self) -> None:
                if self.headers.get("Transfer-Encoding") == "chunked":
                    size = 0
                    while (n := int(self.rfile.readline().strip(), 16)) > 0:
                        size += len(self.rfile.read(n))
                        self.rfile.readline()
                    self.rfile.readline()
                else:
                    size = len(self.rfile.read(int(self.headers["Content-Length"])))
                self._answer(size)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        """Stop as a replica's process does: no new connection, kept-alive ones closed."""
        self.server.shutdown()
        self.server.server_close()
        for connection in self.connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class Routes:
    """The stand-in control plane: serves ``items`` as ``GET /v1/services``."""

    def __init__(self) -> None:
        self.items: list[dict] = []
        routes = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                assert self.headers["Authorization"] == "Bearer mnk_gateway-test"
                data = json.dumps(routes.items).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def set(self, *replicas: tuple[Replica, int, str], app: str = "shop") -> None:
        self.items = [
            {"app": app, "name": "web", "version": version, "state": state, "url": r.url}
            for r, version, state in replicas
        ]


@pytest.fixture
def routes() -> Iterator[Routes]:
    stand_in = Routes()
    yield stand_in
    stand_in.server.shutdown()


@pytest.fixture
def gateway(routes: Routes) -> Iterator[str]:
    port = free_port()
    gw = Gateway(
        host="127.0.0.1",
        port=port,
        control_plane=f"http://127.0.0.1:{routes.server.server_address[1]}",
        api_key="mnk_gateway-test",
        refresh_s=0.05,
        hold_s=0.3,
    )
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(target=lambda: loop.run_until_complete(gw.serve(stop)), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: _answers(url), timeout=10, what="the gateway to listen")
    yield url
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)
    loop.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/_gateway/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def names(client: httpx.Client, url: str, n: int) -> list[str]:
    return [client.get(url).json()["name"] for _ in range(n)]


def test_requests_take_turns_over_the_ready_replicas_of_the_newest_version(
    routes: Routes, gateway: str
) -> None:
    a, b, old, starting = Replica("a"), Replica("b"), Replica("old"), Replica("starting")
    routes.set((old, 1, "ready"), (a, 2, "ready"), (b, 2, "ready"), (starting, 3, "starting"))
    with httpx.Client(timeout=5) as client:
        wait_until(lambda: client.get(f"{gateway}/shop/web/x").status_code == 200, timeout=5,
                   what="the route")  # fmt: skip
        assert sorted(names(client, f"{gateway}/shop/web/x", 4)) == ["a", "a", "b", "b"]
        answer = client.get(f"{gateway}/shop/web/items/7?q=1").json()
        assert answer["path"] == "/items/7?q=1"  # the prefix is removed, the query kept
        # By Host, without a prefix.
        by_host = client.get(f"{gateway}/items", headers={"Host": "web.shop.localhost"})
        assert by_host.json()["path"] == "/items"


def test_a_replica_that_stops_fails_no_request(routes: Routes, gateway: str) -> None:
    a, b = Replica("a"), Replica("b")
    routes.set((a, 1, "ready"), (b, 1, "ready"))
    with httpx.Client(timeout=5) as client:
        wait_until(lambda: client.get(f"{gateway}/shop/web/").status_code == 200, timeout=5,
                   what="the route")  # fmt: skip
        names(client, f"{gateway}/shop/web/", 4)  # kept-alive connections to both
        b.stop()  # the route table still lists it
        assert names(client, f"{gateway}/shop/web/", 10) == ["a"] * 10


def test_bodies_pass_through_whole_and_chunked(routes: Routes, gateway: str) -> None:
    a = Replica("a")
    routes.set((a, 1, "ready"))
    with httpx.Client(timeout=5) as client:
        wait_until(lambda: client.get(f"{gateway}/shop/web/").status_code == 200, timeout=5,
                   what="the route")  # fmt: skip
        sized = client.post(f"{gateway}/shop/web/up", content=b"x" * 300_000)
        assert sized.json()["body"] == 300_000
        chunked = client.post(f"{gateway}/shop/web/up", content=iter([b"ab", b"cde"] * 1000))
        assert chunked.json()["body"] == 5000


def test_no_service_is_404_and_no_ready_replica_is_503_with_retry_after(
    routes: Routes, gateway: str
) -> None:
    starting = Replica("starting")
    routes.set((starting, 1, "starting"))
    with httpx.Client(timeout=5) as client:
        wait_until(lambda: client.get(f"{gateway}/shop/web/").status_code == 503, timeout=5,
                   what="the service to be known")  # fmt: skip
        answer = client.get(f"{gateway}/shop/web/")
        assert answer.headers["retry-after"] == "1" and answer.json()["code"] == "gateway"
        assert client.get(f"{gateway}/shop/nothing/").status_code == 404
        assert client.get(f"{gateway}/other/web/").status_code == 404
        assert client.get(f"{gateway}/").status_code == 404
        routes.set((starting, 1, "ready"))  # it becomes ready: the held request is served
        assert client.get(f"{gateway}/shop/web/", timeout=5).json()["name"] == "starting"
