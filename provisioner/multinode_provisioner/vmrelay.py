"""Relays a VM's connections to ``127.0.0.1:<port>`` to the same port on the host.

A VM in its own network namespace has a loopback of its own, yet the URLs it is given
(the control plane's, the AWS endpoint's) name ``127.0.0.1``. For each relayed port the
relay listens on ``127.0.0.1:<port>`` *inside* each VM's namespace (the socket is made by
a thread that entered the namespace) and splices every accepted connection to a new
connection to the host's ``127.0.0.1:<port>``: one hop, no process per request, Nagle
off on both legs. Only the listed ports are relayed; nothing else leaves the namespace.

One thread waits on every listening socket (epoll); each relayed connection has two
threads, one per direction, which the kernel wakes as bytes arrive.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import threading
from collections.abc import Iterable

from multinode_provisioner.vmnet import in_netns

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
_CONNECT_TIMEOUT_S = 5.0
_BUFFER = 64 * 1024


class Relay:
    """Listens for the given ports inside VM namespaces and forwards to the host.

    Thread-safe. Call :meth:`close` to stop it; it closes every socket it opened.
    """

    def __init__(self, ports: Iterable[int]) -> None:
        """Start the relay's accept thread; ``ports`` are the host ports to relay."""
        self.ports = tuple(sorted(set(ports)))
        self._lock = threading.Condition()
        self._listeners: dict[int, tuple[str, int, socket.socket]] = {}  # fd -> (vm, port, sock)
        self._conns: dict[str, set[socket.socket]] = {}  # vm -> its open relayed sockets
        self._open_conns = 0  # relayed sockets not yet closed, across VMs
        self._epoll = select.epoll()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        self._epoll.register(self._wake_r, select.EPOLLIN)
        self._thread = threading.Thread(target=self._accept_loop, name="vm-relay", daemon=True)
        self._thread.start()

    def add(self, vm: str, netns: str) -> None:
        """Listen on every relayed port inside the namespace ``netns``, on behalf of ``vm``.

        Raises:
            OSError: a socket could not be made or bound (none is left open).
        """
        socks = in_netns(netns, lambda: _listen_all(self.ports))
        with self._lock:
            self._conns.setdefault(vm, set())
            for port, sock in zip(self.ports, socks, strict=True):
                self._listeners[sock.fileno()] = (vm, port, sock)
                self._epoll.register(sock.fileno(), select.EPOLLIN)

    def remove(self, vm: str) -> None:
        """Close ``vm``'s listening sockets at once and end its relayed connections."""
        with self._lock:
            for fd, (owner, _port, sock) in list(self._listeners.items()):
                if owner == vm:
                    self._epoll.unregister(fd)
                    del self._listeners[fd]
                    sock.close()
            conns = self._conns.pop(vm, set())
        for sock in conns:  # wakes both pump threads, which close the sockets
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def open_sockets(self) -> int:
        """How many sockets (listening and relayed) the relay holds open now."""
        with self._lock:
            return len(self._listeners) + self._open_conns

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, end every connection, and wait up to ``timeout`` s for them to close."""
        with self._lock:
            vms = list(self._conns)
        for vm in vms:
            self.remove(vm)
        os.write(self._wake_w, b"x")
        self._thread.join(timeout)
        with self._lock:
            self._lock.wait_for(lambda: self._open_conns == 0, timeout)
        self._epoll.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # -- threads -----------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while True:
            for fd, _ in self._epoll.poll():
                if fd == self._wake_r:
                    return
                with self._lock:
                    entry = self._listeners.get(fd)
                if entry is None:
                    continue
                vm, port, listener = entry
                try:
                    client, _ = listener.accept()
                except OSError:  # closed by remove() meanwhile, or nothing left to accept
                    continue
                threading.Thread(
                    target=self._serve, args=(vm, port, client), name="vm-relay-conn", daemon=True
                ).start()

    def _serve(self, vm: str, port: int, client: socket.socket) -> None:
        """Connect ``client`` to the host's ``port`` and copy bytes both ways until both end."""
        client.setblocking(True)
        if not self._track(vm, client):
            return
        try:
            upstream = socket.create_connection((HOST, port), timeout=_CONNECT_TIMEOUT_S)
        except OSError as exc:
            log.debug("relay to %s:%d failed: %s", HOST, port, exc)
            self._untrack(vm, client)
            return
        upstream.settimeout(None)
        if not self._track(vm, upstream):
            self._untrack(vm, client)
            return
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        back.start()
        _pump(client, upstream)
        back.join()
        self._untrack(vm, client)
        self._untrack(vm, upstream)

    def _track(self, vm: str, sock: socket.socket) -> bool:
        """Count ``sock`` as ``vm``'s; False (and ``sock`` closed) when ``vm`` was removed."""
        with self._lock:
            conns = self._conns.get(vm)
            if conns is not None:
                conns.add(sock)
                self._open_conns += 1
                return True
        sock.close()
        return False

    def _untrack(self, vm: str, sock: socket.socket) -> None:
        sock.close()
        with self._lock:
            self._conns.get(vm, set()).discard(sock)
            self._open_conns -= 1
            self._lock.notify_all()


def _listen_all(ports: tuple[int, ...]) -> list[socket.socket]:
    socks: list[socket.socket] = []
    try:
        for port in ports:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((HOST, port))
            sock.listen(128)
            sock.setblocking(False)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy ``src`` to ``dst`` until ``src`` ends, then end ``dst``'s sending side."""
    buf = bytearray(_BUFFER)
    view = memoryview(buf)
    try:
        while n := src.recv_into(buf):
            dst.sendall(view[:n])
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
