"""Relays a VM's connections to ``127.0.0.1:<port>`` to the same port on the host.

A VM in its own network namespace has a loopback of its own, yet the URLs it is given
(the control plane's, the AWS endpoint's) name ``127.0.0.1``. For each relayed port the
relay listens on ``127.0.0.1:<port>`` *inside* each VM's namespace (the socket is made by
a thread that entered the namespace) and joins every accepted connection to a new
connection to the host's ``127.0.0.1:<port>``: one hop, no process or thread per
request or connection, Nagle off on both legs. Only the listed ports are relayed;
nothing else leaves the namespace.

One thread runs an epoll loop over every socket. Bytes read from one side are written to
the other; when the other side cannot take them all, reading stops until it has (so a
slow reader holds back its writer instead of filling memory). End of stream on one side
becomes ``shutdown(SHUT_WR)`` on the other, and a pair is closed once both directions
have ended or either side fails.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import threading
from collections.abc import Callable, Iterable

from multinode_provisioner.vmnet import in_netns

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
_CHUNK = 256 * 1024
_IN, _OUT = select.EPOLLIN, select.EPOLLOUT


class _Leg:
    """One socket of a relayed pair, and what is still to be written to it."""

    __slots__ = ("sock", "peer", "pending", "read_done", "connected", "mask")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.peer: _Leg | None = None
        self.pending = b""  # read from the peer, not yet written here
        self.read_done = False  # this side sent end of stream
        self.connected = True
        self.mask = 0  # the events epoll watches for on this socket


class Relay:
    """Listens for the given ports inside VM namespaces and forwards to the host.

    :meth:`add`, :meth:`remove`, :meth:`open_sockets` and :meth:`close` may be called from
    any thread; the relaying itself happens on the relay's own thread. :meth:`close`
    closes every socket the relay opened.
    """

    def __init__(self, ports: Iterable[int]) -> None:
        """Start the relay thread; ``ports`` are the host loopback ports to relay."""
        self.ports = tuple(sorted(set(ports)))
        self._lock = threading.Lock()
        self._calls: list[Callable[[], None]] = []  # run on the relay thread, in order
        self._listeners: dict[int, tuple[str, int, socket.socket]] = {}  # fd -> vm, port
        self._legs: dict[int, _Leg] = {}  # fd -> leg, relay thread only
        self._owner: dict[int, str] = {}  # leg fd -> vm, relay thread only
        self._epoll = select.epoll()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._epoll.register(self._wake_r, _IN)
        self._stopping = False
        self._buf = bytearray(_CHUNK)  # every read lands here; only unsent bytes are copied
        self._view = memoryview(self._buf)
        self._thread = threading.Thread(target=self._loop, name="vm-relay", daemon=True)
        self._thread.start()

    def add(self, vm: str, netns: str) -> None:
        """Listen on every relayed port inside the namespace ``netns``, on behalf of ``vm``.

        Raises:
            OSError: a socket could not be made or bound (none is left open).
        """
        socks = in_netns(netns, lambda: _listen_all(self.ports))
        if not self._call(lambda: self._add(vm, socks)):
            for sock in socks:
                sock.close()
            raise OSError(errno.ESHUTDOWN, "the relay is closed")

    def remove(self, vm: str) -> None:
        """Close ``vm``'s listening sockets and relayed connections before returning."""
        self._call(lambda: self._remove(vm))

    def open_sockets(self) -> int:
        """How many sockets (listening and relayed) the relay holds open now."""
        box: list[int] = []
        self._call(lambda: box.append(len(self._listeners) + len(self._legs)))
        return box[0] if box else 0

    def close(self, timeout: float = 5.0) -> None:
        """Close every socket and stop the relay thread. Idempotent."""
        if not self._thread.is_alive():
            return

        def stop() -> None:
            for vm in {owner for owner, _, _ in self._listeners.values()} | set(
                self._owner.values()
            ):
                self._remove(vm)
            self._stopping = True

        self._call(stop)
        self._thread.join(timeout)
        self._epoll.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # -- the relay thread --------------------------------------------------------------

    def _call(self, fn: Callable[[], None]) -> bool:
        """Run ``fn`` on the relay thread and wait for it; False if the relay has stopped."""
        if not self._thread.is_alive():
            return False
        done = threading.Event()

        def run() -> None:
            try:
                fn()
            finally:
                done.set()

        with self._lock:
            self._calls.append(run)
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")
        while not done.wait(0.5):
            if not self._thread.is_alive():
                return False
        return True

    def _loop(self) -> None:
        while not self._stopping:
            for fd, events in self._epoll.poll():
                if fd == self._wake_r:
                    self._run_calls()
                elif fd in self._listeners:
                    self._accept(fd)
                elif (leg := self._legs.get(fd)) is not None:
                    self._on_event(leg, events)

    def _run_calls(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 4096)
        with self._lock:
            calls, self._calls = self._calls, []
        for call in calls:
            call()

    def _add(self, vm: str, socks: list[socket.socket]) -> None:
        for port, sock in zip(self.ports, socks, strict=True):
            self._listeners[sock.fileno()] = (vm, port, sock)
            self._epoll.register(sock.fileno(), _IN)

    def _remove(self, vm: str) -> None:
        for fd, (owner, _port, sock) in list(self._listeners.items()):
            if owner == vm:
                self._epoll.unregister(fd)
                del self._listeners[fd]
                sock.close()
        for fd, owner in list(self._owner.items()):
            if owner == vm and fd in self._legs:
                self._close_pair(self._legs[fd])

    def _accept(self, fd: int) -> None:
        vm, port, listener = self._listeners[fd]
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # nothing more to accept now
                return
            upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            for sock in (client, upstream):
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            a, b = _Leg(client), _Leg(upstream)
            a.peer, b.peer = b, a
            b.connected = False
            for leg in (a, b):
                self._legs[leg.sock.fileno()] = leg
                self._owner[leg.sock.fileno()] = vm
            code = upstream.connect_ex((HOST, port))
            if code not in (0, errno.EINPROGRESS):
                log.debug("relay to %s:%d failed: %s", HOST, port, os.strerror(code))
                self._close_pair(a)
                continue
            # Read from the VM only once the host side is connected and can take it.
            self._epoll.register(client.fileno(), 0)
            b.mask = _OUT
            self._epoll.register(upstream.fileno(), _OUT)

    def _on_event(self, leg: _Leg, events: int) -> None:
        peer = leg.peer
        assert peer is not None
        if not leg.connected:
            if leg.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self._close_pair(leg)
                return
            leg.connected = True
            self._update(leg)
            self._update(peer)
            return
        if events & (select.EPOLLERR | select.EPOLLHUP) and (
            leg.read_done or not events & _IN
        ):  # it can neither be read nor written any more
            self._close_pair(leg)
            return
        if events & _OUT and leg.pending and not self._flush(leg):
            return
        if events & _IN and not leg.read_done and not peer.pending:
            try:
                n = leg.sock.recv_into(self._buf)
            except BlockingIOError:
                n = -1
            except OSError:
                self._close_pair(leg)
                return
            if n == 0:
                leg.read_done = True
                with contextlib.suppress(OSError):
                    peer.sock.shutdown(socket.SHUT_WR)
                if peer.read_done:
                    self._close_pair(leg)
                    return
            elif n > 0 and not self._send(peer, self._view[:n]):
                return
        self._update(leg)
        self._update(peer)

    def _flush(self, leg: _Leg) -> bool:
        """Write ``leg``'s pending bytes; False when the pair had to be closed."""
        data, leg.pending = leg.pending, b""
        return self._send(leg, memoryview(data))

    def _send(self, leg: _Leg, data: memoryview) -> bool:
        """Write ``data`` to ``leg``, keeping what it cannot take yet as its pending bytes.

        Returns False when the pair had to be closed.
        """
        try:
            sent = leg.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._close_pair(leg)
            return False
        if sent < len(data):
            leg.pending = bytes(data[sent:])
        return True

    def _update(self, leg: _Leg) -> None:
        """Watch ``leg`` for what it can do next: write its backlog, or read when its peer can take it."""
        peer = leg.peer
        assert peer is not None
        mask = 0
        if leg.connected and peer.connected:
            if leg.pending:
                mask |= _OUT
            if not leg.read_done and not peer.pending:
                mask |= _IN
        if mask != leg.mask:
            leg.mask = mask
            self._epoll.modify(leg.sock.fileno(), mask)

    def _close_pair(self, leg: _Leg) -> None:
        for one in (leg, leg.peer):
            if one is None or one.sock.fileno() < 0:
                continue
            fd = one.sock.fileno()
            self._legs.pop(fd, None)
            self._owner.pop(fd, None)
            with contextlib.suppress(FileNotFoundError, ValueError):
                self._epoll.unregister(fd)  # not registered if its connect failed at once
            one.sock.close()


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
