"""The loopback relay with real sockets in a real network namespace: bytes arrive intact
both ways, half-closes pass through, many connections run at once, and removing a VM
closes everything it had open."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest

from multinode_provisioner.vmnet import in_netns
from multinode_provisioner.vmrelay import Relay
from tests.provisioner.conftest import needs_namespaces

pytestmark = needs_namespaces


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"mn-test-{os.urandom(4).hex()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=True)


class EchoServer:
    """A host loopback server that echoes, or with ``reply_after_eof`` answers the sha256
    of everything it read once the client half-closes."""

    def __init__(self, *, reply_after_eof: bool = False) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.reply_after_eof = reply_after_eof
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            digest = hashlib.sha256()
            while data := conn.recv(1 << 16):
                if self.reply_after_eof:
                    digest.update(data)
                else:
                    conn.sendall(data)
            if self.reply_after_eof:
                conn.sendall(digest.hexdigest().encode())

    def close(self) -> None:
        # shutdown() wakes the accept() blocked in _serve; close() alone would not, and the
        # port would keep listening until it returned.
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()


def _connect_inside(netns: str, port: int) -> socket.socket:
    """A socket connected from inside ``netns`` to its 127.0.0.1:``port``."""
    sock = in_netns(netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    return sock


def _ended(sock: socket.socket) -> bool:
    """Whether the other end closed ``sock`` (end of stream or reset) without sending."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def _recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while data := sock.recv(1 << 16):
        chunks.append(data)
    return b"".join(chunks)


@pytest.fixture
def relay_and_servers(netns: str) -> Iterator[tuple[Relay, EchoServer, EchoServer]]:
    echo, digest = EchoServer(), EchoServer(reply_after_eof=True)
    relay = Relay([echo.port, digest.port])
    relay.add("vm", netns)
    try:
        yield relay, echo, digest
    finally:
        relay.close()
        echo.close()
        digest.close()


def test_bulk_bytes_arrive_intact_and_a_half_close_passes_through(
    netns: str, relay_and_servers: tuple[Relay, EchoServer, EchoServer]
) -> None:
    _relay, _echo, digest = relay_and_servers
    payload = os.urandom(24 << 20)
    with _connect_inside(netns, digest.port) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        sender.join()
        sock.shutdown(socket.SHUT_WR)  # the server answers only after end of stream
        assert _recv_all(sock).decode() == hashlib.sha256(payload).hexdigest()


def test_many_connections_echo_at_once(
    netns: str, relay_and_servers: tuple[Relay, EchoServer, EchoServer]
) -> None:
    _relay, echo, _digest = relay_and_servers
    results: dict[int, bool] = {}

    def client(n: int) -> None:
        payload = os.urandom(256 << 10)
        with _connect_inside(netns, echo.port) as sock:
            reader = threading.Thread(
                target=lambda: results.__setitem__(n, _recv_all(sock) == payload)
            )
            reader.start()
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            reader.join()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {n: True for n in range(20)}


def test_an_unrelayed_or_closed_host_port_is_refused_or_ended(
    netns: str, relay_and_servers: tuple[Relay, EchoServer, EchoServer]
) -> None:
    _relay, echo, _digest = relay_and_servers
    with socket.socket() as spare:  # a port nobody is told about
        spare.bind(("127.0.0.1", 0))
        with pytest.raises(ConnectionRefusedError):
            _connect_inside(netns, spare.getsockname()[1])
    echo.close()  # relayed, but nothing answers on the host any more
    with _connect_inside(netns, echo.port) as sock:
        assert _ended(sock)


def test_removing_a_vm_closes_its_listeners_and_connections(
    netns: str, relay_and_servers: tuple[Relay, EchoServer, EchoServer]
) -> None:
    relay, echo, _digest = relay_and_servers
    with _connect_inside(netns, echo.port) as sock:
        sock.sendall(b"ping")
        assert sock.recv(4) == b"ping"
        assert relay.open_sockets() == 2 + 2  # two listeners, one relayed pair
        relay.remove("vm")
        assert relay.open_sockets() == 0
        assert _ended(sock)
    with pytest.raises(ConnectionRefusedError):
        _connect_inside(netns, echo.port)
