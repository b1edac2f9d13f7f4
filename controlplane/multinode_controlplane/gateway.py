"""The gateway: one stable address per service, balanced over its ready replicas.

A replica's own address (``http://<VM address>:<port>``) changes with every redeploy; the
gateway's does not. It serves every service of the control plane it follows at

    http://<gateway>/<app>/<service>/<path>     (the prefix is removed before forwarding)
    http://<service>.<app>.localhost:<port>/<path>   (by Host header, where names resolve)

and forwards each request to a ready replica of the service's newest version that has one,
in turn (a request for a service with no ready replica waits up to ``hold_s`` for one).
So a redeploy moves traffic to the new version the moment one of its replicas is
ready, a version that never becomes ready (crash loop) never takes traffic, and the old
version's replicas, which the control plane stops only after its drain period, finish
what they were sent. The route table is read from ``GET /v1/services`` every
``refresh_s``.

A request that cannot reach a replica before anything was sent to it (connection refused,
or a kept-alive connection the replica closed) is tried on the next replica, so a
replica stopping between two refreshes fails no request; a replica that refused a
connection gets no requests for ``_EJECT_S`` unless no other is left. No replica: 503 with
``Retry-After``; no such service: 404. HTTP/1.1 with keep-alive on both sides; request and
response bodies stream through (``Content-Length`` or chunked); an ``Upgrade`` (WebSocket)
becomes a two-way pipe.

Run by the local cloud (`mn up`) as ``python -m multinode_controlplane.gateway``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from urllib.parse import urlsplit

log = logging.getLogger("multinode.gateway")

_MAX_HEAD = 64 * 1024
_CONNECT_TIMEOUT_S = 5.0
_IDLE_TIMEOUT_S = 75.0  # a client's kept-alive connection with no request is closed
_REPLAYABLE = 1 << 20  # request bodies up to this size are kept to be sent again
_EJECT_S = 5.0  # a replica that refused a connection gets no requests for this long
_HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer"}


class BadRequest(Exception):
    """The client sent something that is not HTTP/1.x we can forward."""


@dataclass
class Routes:
    """Ready replica addresses by ``(app, service)``, newest ready version only."""

    table: dict[tuple[str, str], list[tuple[str, int]]] = field(default_factory=dict)
    known: set[tuple[str, str]] = field(default_factory=set)

    @classmethod
    def from_replicas(cls, replicas: list[dict]) -> Routes:
        """Build the table from ``GET /v1/services`` items."""
        newest: dict[tuple[str, str], int] = {}
        ready: dict[tuple[str, str, int], list[tuple[str, int]]] = defaultdict(list)
        known = set()
        for item in replicas:
            key = (item["app"], item["name"])
            known.add(key)
            if item["state"] != "ready" or not item.get("url"):
                continue
            parts = urlsplit(item["url"])
            ready[(*key, item["version"])].append((parts.hostname or "", parts.port or 80))
            newest[key] = max(newest.get(key, 0), item["version"])
        table = {key: sorted(ready[(*key, version)]) for key, version in newest.items()}
        return cls(table=table, known=known)

    def replicas(self, app: str, service: str, turn: int) -> list[tuple[str, int]]:
        """The service's ready replicas, starting with the ``turn``-th."""
        found = self.table.get((app, service), [])
        if not found:
            return []
        start = turn % len(found)
        return found[start:] + found[:start]


class Gateway:
    """Accepts clients on ``port`` and forwards to replicas; ``routes`` is refreshed from
    the control plane at ``control_plane`` (``/v1/services`` with ``api_key``)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        control_plane: str,
        api_key: str,
        refresh_s: float = 0.25,
        hold_s: float = 5.0,
    ) -> None:
        self.host, self.port = host, port
        self.control_plane = control_plane.rstrip("/")
        self.api_key = api_key
        self.refresh_s = refresh_s
        self.hold_s = hold_s
        self.routes = Routes()
        self._clients: set[asyncio.Task] = set()
        # Turns outlive the route table, which is rebuilt on every refresh.
        self._turns: dict[tuple[str, str], itertools.count] = defaultdict(itertools.count)
        # Replicas that refused a connection are skipped for _EJECT_S, unless none is left.
        self._refused: dict[tuple[str, int], float] = {}
        self._pools: dict[
            tuple[str, int], list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
        ] = defaultdict(list)

    async def serve(self, stop: asyncio.Event) -> None:
        server = await asyncio.start_server(self._client, self.host, self.port, limit=_MAX_HEAD)
        refresher = asyncio.create_task(self._refresh_forever())
        log.info("gateway on http://%s:%s for %s", self.host, self.port, self.control_plane)
        try:
            await stop.wait()
        finally:
            refresher.cancel()
            server.close()
            clients = list(self._clients)
            for task in clients:  # kept-alive clients would otherwise hold on
                task.cancel()
            await asyncio.gather(refresher, *clients, return_exceptions=True)
            with contextlib.suppress(Exception):
                await server.wait_closed()

    # ------------------------------------------------------------------ routes

    async def _refresh_forever(self) -> None:
        while True:
            try:
                items = await asyncio.to_thread(self._fetch)
                self.routes = Routes.from_replicas(items)
            except Exception as exc:  # keep the last table while the control plane is away
                log.warning("could not refresh the routes: %s", exc)
            await asyncio.sleep(self.refresh_s)

    def _fetch(self) -> list[dict]:
        request = urllib.request.Request(
            f"{self.control_plane}/v1/services",
            headers={"Authorization": f"Bearer {self.api_key}"},
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            return json.loads(answer.read())

    def _route(self, host: bytes, target: bytes) -> tuple[str, str, bytes] | None:
        """``(app, service, path to forward)`` for a request, or None."""
        name = host.split(b":")[0].decode("latin-1").lower()
        labels = name.split(".")
        if len(labels) >= 3 and labels[-1] == "localhost":
            return labels[-2], labels[-3], target
        path, sep, query = target.partition(b"?")
        parts = path.split(b"/", 3)  # b"", app, service, rest
        if len(parts) < 3 or not parts[1] or not parts[2]:
            return None
        rest = b"/" + (parts[3] if len(parts) > 3 else b"")
        return parts[1].decode("latin-1"), parts[2].decode("latin-1"), rest + sep + query

    # ------------------------------------------------------------------ one client

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _IDLE_TIMEOUT_S)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                    return
                except asyncio.LimitOverrunError:
                    await _answer(writer, 431, "request head too large")
                    return
                if not await self._one(head, reader, writer, peer):
                    return
        except (BadRequest, ValueError) as exc:
            with contextlib.suppress(Exception):
                await _answer(writer, 400, f"bad request: {exc}")
        except ConnectionError:
            pass
        finally:
            if task is not None:
                self._clients.discard(task)
            writer.close()

    async def _one(self, head: bytes, reader, writer, peer) -> bool:  # type: ignore[no-untyped-def]
        """Forward one request; True if the client's connection may carry another."""
        method, target, version, headers = _parse_request(head)
        if target == b"/_gateway/health":
            await _answer(writer, 200, "ok")
            return True
        host = _header(headers, b"host") or b""
        route = self._route(host, target)
        if route is None:
            await _answer(writer, 404, "no service here: use /<app>/<service>/...")
            return True
        app, service, path = route
        if (app, service) not in self.routes.known:
            await _answer(writer, 404, f"no service {service!r} in app {app!r}")
            return _skip_body(headers) and await _drain_body(reader, headers)
        turn = next(self._turns[(app, service)])
        replicas = self.routes.replicas(app, service, turn)
        # A service that has no ready replica yet (just deployed, or restarting) is given a
        # few seconds before the client is told to come back.
        deadline = asyncio.get_running_loop().time() + self.hold_s
        while not replicas and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            replicas = self.routes.replicas(app, service, turn)
        if not replicas:
            await _answer(
                writer, 503, f"service {service!r} of {app!r} has no ready replica", retry_after=1
            )
            return _skip_body(headers) and await _drain_body(reader, headers)
        client_ip = peer[0] if peer else ""
        out_headers = [
            (k, v)
            for k, v in headers
            if k.lower() not in _HOP_BY_HOP and k.lower() != b"x-forwarded-for"
        ]
        upgrade = _header(headers, b"upgrade") is not None
        if upgrade:
            out_headers += [(b"Connection", b"Upgrade")]
        out_headers += [
            (b"X-Forwarded-For", client_ip.encode()),
            (b"X-Forwarded-Prefix", f"/{app}/{service}".encode()),
        ]
        request_head = (
            b"%s %s HTTP/1.1\r\n" % (method, path)
            + b"".join(k + b": " + v + b"\r\n" for k, v in out_headers)
            + b"\r\n"
        )
        # A small body is read first, so the request can be sent again to another
        # connection or replica if the first never answers; a large or chunked one streams.
        length = _header(headers, b"content-length")
        chunked = _header(headers, b"transfer-encoding") is not None
        streaming = chunked or (length is not None and int(length) > _REPLAYABLE)
        body = b"" if streaming or length is None else await reader.readexactly(int(length))
        now = asyncio.get_running_loop().time()
        healthy = [a for a in replicas if self._refused.get(a, 0.0) <= now]
        for address in healthy or replicas:
            for reuse in (True, False):  # a kept-alive connection first, then a new one
                upstream = await self._connect(address, reuse=reuse)
                if upstream is None:
                    # It does not accept connections: skip it for a while, try the next.
                    self._refused[address] = asyncio.get_running_loop().time() + _EJECT_S
                    break
                up_reader, up_writer = upstream
                try:
                    up_writer.write(request_head + body)
                    if streaming:
                        await _copy_body(reader, up_writer, headers)
                    await up_writer.drain()
                    response_head = await up_reader.readuntil(b"\r\n\r\n")
                except (ConnectionError, asyncio.IncompleteReadError):
                    up_writer.close()
                    if streaming:
                        await _answer(writer, 502, "the replica closed the connection")
                        return False
                    continue  # nothing was answered: send it again
                return await self._respond(
                    reader, writer, up_reader, up_writer, address, response_head, headers,
                    method, version, upgrade,
                )  # fmt: skip
        await _answer(writer, 503, f"no replica of {service!r} answered", retry_after=1)
        return not streaming

    async def _respond(  # type: ignore[no-untyped-def]
        self,
        reader,
        writer,
        up_reader,
        up_writer,
        address,
        response_head,
        headers,
        method,
        version,
        upgrade,
    ) -> bool:
        try:
            status, response_headers = _parse_response(response_head)
            writer.write(response_head)
            await writer.drain()
            if upgrade and status == 101:
                await _pipe(reader, writer, up_reader, up_writer)
                return False
            ended_by_close = await _copy_response_body(
                up_reader, writer, response_headers, method, status
            )
            await writer.drain()
            if ended_by_close or _wants_close(response_headers):
                up_writer.close()
            else:
                self._pools[address].append((up_reader, up_writer))
            client_close = _wants_close(headers) or version == b"HTTP/1.0"
            return not (ended_by_close or client_close)
        except (ConnectionError, asyncio.IncompleteReadError):
            up_writer.close()
            return False

    async def _connect(self, address: tuple[str, int], *, reuse: bool):  # type: ignore[no-untyped-def]
        pool = self._pools[address]
        while reuse and pool:
            up_reader, up_writer = pool.pop()
            if not up_reader.at_eof() and not up_writer.is_closing():
                return up_reader, up_writer
            up_writer.close()
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(*address, limit=_MAX_HEAD), _CONNECT_TIMEOUT_S
            )
        except (OSError, asyncio.TimeoutError):
            return None


# ---------------------------------------------------------------------- HTTP/1.1 pieces


def _parse_request(head: bytes) -> tuple[bytes, bytes, bytes, list[tuple[bytes, bytes]]]:
    lines = head[:-4].split(b"\r\n")
    try:
        method, target, version = lines[0].split(b" ")
    except ValueError:
        raise BadRequest("malformed request line") from None
    if not version.startswith(b"HTTP/1."):
        raise BadRequest("only HTTP/1.x is served")
    return method, target, version, _parse_headers(lines[1:])


def _parse_response(head: bytes) -> tuple[int, list[tuple[bytes, bytes]]]:
    lines = head[:-4].split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    return status, _parse_headers(lines[1:])


def _parse_headers(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    headers = []
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise BadRequest(f"malformed header line {line[:40]!r}")
        headers.append((name, value.strip()))
    return headers


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _wants_close(headers: list[tuple[bytes, bytes]]) -> bool:
    return (_header(headers, b"connection") or b"").lower() == b"close"


def _skip_body(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the connection can be kept after refusing a request (its body is known)."""
    return _header(headers, b"transfer-encoding") is None


async def _drain_body(reader: asyncio.StreamReader, headers: list[tuple[bytes, bytes]]) -> bool:
    length = int(_header(headers, b"content-length") or 0)
    if length:
        await reader.readexactly(length)
    return True


async def _copy_body(reader, writer, headers) -> None:  # type: ignore[no-untyped-def]
    """Forward a request body: ``Content-Length`` bytes, or chunks up to the last."""
    if (_header(headers, b"transfer-encoding") or b"").lower() == b"chunked":
        await _copy_chunked(reader, writer)
        return
    length = _header(headers, b"content-length")
    if length is not None:
        await _copy_exactly(reader, writer, int(length))


async def _copy_response_body(up_reader, writer, headers, method: bytes, status: int) -> bool:  # type: ignore[no-untyped-def]
    """Forward a response body; True if it ends only when the replica closes."""
    if method == b"HEAD" or status in (204, 304) or 100 <= status < 200:
        return False
    if (_header(headers, b"transfer-encoding") or b"").lower() == b"chunked":
        await _copy_chunked(up_reader, writer)
        return False
    length = _header(headers, b"content-length")
    if length is not None:
        await _copy_exactly(up_reader, writer, int(length))
        return False
    while chunk := await up_reader.read(65536):
        writer.write(chunk)
        await writer.drain()
    return True


async def _copy_exactly(reader, writer, length: int) -> None:  # type: ignore[no-untyped-def]
    while length > 0:
        chunk = await reader.read(min(length, 65536))
        if not chunk:
            raise asyncio.IncompleteReadError(b"", length)
        writer.write(chunk)
        length -= len(chunk)
        await writer.drain()


async def _copy_chunked(reader, writer) -> None:  # type: ignore[no-untyped-def]
    while True:
        size_line = await reader.readuntil(b"\r\n")
        writer.write(size_line)
        size = int(size_line.split(b";")[0].strip(), 16)
        if size == 0:
            while True:  # trailers, then the empty line
                line = await reader.readuntil(b"\r\n")
                writer.write(line)
                if line == b"\r\n":
                    await writer.drain()
                    return
        await _copy_exactly(reader, writer, size + 2)


async def _pipe(reader, writer, up_reader, up_writer) -> None:  # type: ignore[no-untyped-def]
    async def one_way(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await src.read(65536):
                dst.write(chunk)
                await dst.drain()
        with contextlib.suppress(Exception):
            dst.write_eof()

    await asyncio.gather(one_way(reader, up_writer), one_way(up_reader, writer))
    up_writer.close()


async def _answer(
    writer: asyncio.StreamWriter, status: int, message: str, *, retry_after: int | None = None
) -> None:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 431: "Request Header Fields Too Large",
              502: "Bad Gateway", 503: "Service Unavailable"}.get(status, "Error")  # fmt: skip
    body = json.dumps({"code": "gateway", "message": message, "details": {}}).encode()
    extra = f"Retry-After: {retry_after}\r\n" if retry_after is not None else ""
    writer.write(
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n".encode()
        + body
    )
    await writer.drain()


def main() -> None:
    """``python -m multinode_controlplane.gateway``: serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description="Multinode's service gateway")
    parser.add_argument("--host", default=os.environ.get("MN_GATEWAY_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("MN_GATEWAY_PORT", "7700")))
    parser.add_argument("--control-plane", default=os.environ.get("MN_GATEWAY_CONTROL_PLANE"))
    args = parser.parse_args()
    api_key = os.environ.get("MN_GATEWAY_API_KEY", "")
    if not args.control_plane or not api_key:
        parser.error(
            "MN_GATEWAY_CONTROL_PLANE (or --control-plane) and MN_GATEWAY_API_KEY are needed"
        )
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        gateway = Gateway(
            host=args.host, port=args.port, control_plane=args.control_plane, api_key=api_key
        )
        await gateway.serve(stop)

    try:  # libuv's event loop: the gateway's own cost per request is most of its overhead
        import uvloop
    except ImportError:
        asyncio.run(run())
    else:
        uvloop.run(run())


if __name__ == "__main__":
    main()
