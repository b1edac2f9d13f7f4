"""Network namespaces for the local cloud's VMs: one bridge per runner, one namespace per VM.

The runner picks a random tag and a private /24 that no route or address of the host
overlaps, creates the bridge ``mn-<tag>`` holding the subnet's first address, and gives
each VM a namespace ``mn-<tag>-<instance id>`` joined to the bridge by a veth pair
(``mn-<tag>-<n>`` on the host, ``eth0`` inside) with the subnet's address ``n``. Inside,
``lo`` is up and the only route is the subnet itself: VMs reach the host's bridge
address, each other, and the loopback ports the relay (``vmrelay``) serves, and nothing
beyond, since the host neither forwards nor translates their traffic.

Everything is done with iproute2's ``ip`` command, and only names this module derived
from its own tag are ever deleted.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

NETNS_DIR = "/run/netns"
_CLONE_NEWNET = 0x40000000
# Where subnets are drawn from: the upper half of 10/8, less crowded by home and office
# networks than its start; a subnet is used only if no route or address overlaps it.
_POOL = ipaddress.ip_network("10.128.0.0/9")
_SUBNET_TRIES = 64
_IFNAMSIZ = 15  # Linux interface names hold at most 15 characters


class NetworkError(RuntimeError):
    """An ``ip`` command failed; the message holds the command and its error output."""


def ip(*args: str, stdin: str | None = None, netns: str | None = None) -> str:
    """Run ``ip [-n netns] args...`` and return its output.

    Raises:
        NetworkError: it exited non-zero.
    """
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        shown = " ".join(argv) + (f" <<< {stdin.strip()!r}" if stdin else "")
        raise NetworkError(f"`{shown}` failed: {done.stderr.strip() or done.returncode}")
    return done.stdout


def ip_available() -> bool:
    """Whether iproute2's ``ip`` is installed."""
    return shutil.which("ip") is not None


def netns_path(name: str) -> str:
    """The file ``ip netns`` keeps for the namespace ``name``."""
    return os.path.join(NETNS_DIR, name)


def in_netns(name: str, fn: Callable[[], T]) -> T:
    """Call ``fn`` on a short-lived thread that has entered the namespace ``name``.

    Sockets ``fn`` creates stay in that namespace for their whole life, whichever thread
    uses them later; the caller's own thread never changes namespace.
    """
    box: dict[str, object] = {}

    def run() -> None:
        try:
            _setns(netns_path(name))
            box["value"] = fn()
        except BaseException as exc:  # re-raised on the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=run, name=f"netns-{name}", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if hasattr(os, "setns"):  # Python 3.12+
            os.setns(fd, _CLONE_NEWNET)
            return
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


@dataclass(frozen=True)
class VMLink:
    """One VM's place on the bridge: its namespace, host-side veth and address."""

    netns: str
    veth: str
    address: str


class Bridge:
    """The runner's bridge and subnet, and the addresses it gave to VMs.

    Choosing names (:meth:`choose`, :meth:`plan`) is separate from making them
    (:meth:`create`, :meth:`attach`) so that the caller can record a name before the
    thing exists, and a runner killed in between still leaves a record of it.
    Not thread-safe: the runner calls it from one thread.
    """

    def __init__(self, tag: str, subnet: ipaddress.IPv4Network) -> None:
        self.tag = tag
        self.subnet = subnet
        self.name = f"mn-{tag}"
        self.gateway = str(subnet.network_address + 1)
        self._used: set[int] = set()  # host numbers of the addresses given to VMs
        self._next = 2  # where the search for a free address starts
        self.created = False  # True once this object made the bridge; only then is it deleted

    @classmethod
    def choose(cls) -> Bridge:
        """Pick a fresh tag and a /24 that no route or address of the host overlaps.

        Raises:
            NetworkError: ``ip`` could not list the host's networks, or no subnet is free.
        """
        taken = _host_networks()
        for _ in range(_SUBNET_TRIES):
            index = secrets.randbelow(_POOL.num_addresses // 256)
            subnet = ipaddress.ip_network(f"{_POOL.network_address + index * 256}/24")
            if not any(subnet.overlaps(net) for net in taken):
                return cls(secrets.token_hex(3)[:5], subnet)
        raise NetworkError(f"no free /24 in {_POOL} after {_SUBNET_TRIES} tries")

    def create(self) -> None:
        """Make the bridge, holding the subnet's first address, and bring it up.

        Raises:
            NetworkError: ``ip`` refused (no permission, no bridge support); nothing is
                left behind.
        """
        ip("link", "add", self.name, "type", "bridge")  # fails, harmlessly, if the name is taken
        self.created = True
        try:
            ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.name)
            ip("link", "set", self.name, "up")
        except NetworkError:
            self.delete()
            raise

    def plan(self, instance_id: str) -> VMLink:
        """Reserve the next free address for ``instance_id`` and name its namespace and veth.

        Raises:
            NetworkError: every address of the subnet is in use.
        """
        last = self.subnet.num_addresses - 2  # the highest host number below broadcast
        # Round robin from the last address given: an address freed a moment ago may still
        # be in the host's neighbour cache with the old VM's MAC address.
        order = [*range(self._next, last + 1), *range(2, self._next)]
        host = next((n for n in order if n not in self._used), 0)
        if not host:
            raise NetworkError(f"all {last - 1} VM addresses of {self.subnet} are in use")
        self._used.add(host)
        self._next = host + 1 if host < last else 2
        link = VMLink(
            netns=f"{self.name}-{instance_id}",
            veth=f"{self.name}-{host}",
            address=str(self.subnet.network_address + host),
        )
        assert len(link.veth) <= _IFNAMSIZ
        return link

    def attach(self, link: VMLink) -> None:
        """Create ``link``'s namespace, joined to the bridge, with its address, ``lo`` up.

        Raises:
            NetworkError: ``ip`` failed; nothing is left behind (the address stays
                reserved until :meth:`release`).
        """
        try:
            ip(
                "-batch",
                "-",
                stdin=(
                    f"netns add {link.netns}\n"
                    f"link add {link.veth} type veth peer name eth0 netns {link.netns}\n"
                    f"link set {link.veth} master {self.name} up\n"
                ),
            )
            ip(
                "-batch",
                "-",
                netns=link.netns,
                stdin=(
                    f"addr add {link.address}/{self.subnet.prefixlen} dev eth0\n"
                    "link set eth0 up\nlink set lo up\n"
                ),
            )
        except NetworkError:
            detach(link)
            raise
        self._forget_neighbour(link.address)

    def release(self, link: VMLink) -> None:
        """Remove a VM's namespace and veth (its processes must be gone); free its address."""
        detach(link)
        self._forget_neighbour(link.address)
        host = int(ipaddress.ip_address(link.address)) - int(self.subnet.network_address)
        self._used.discard(host)

    def _forget_neighbour(self, address: str) -> None:
        # The host would otherwise keep sending to the MAC address of the VM that had this
        # address before, for as long as its neighbour entry stays fresh.
        with contextlib.suppress(NetworkError):
            ip("neigh", "flush", "to", address, "dev", self.name)

    def delete(self) -> None:
        """Remove the bridge if this object made it; harmless when it is gone already."""
        if self.created:
            delete_link(self.name)
            self.created = False


def detach(link: VMLink) -> None:
    """Remove a VM's namespace and host-side veth; harmless for parts already gone."""
    with contextlib.suppress(NetworkError):
        if os.path.exists(netns_path(link.netns)):
            ip("netns", "delete", link.netns)  # takes the veth's inner end, and so the pair
    delete_link(link.veth)


def delete_link(name: str) -> None:
    """Delete the host interface ``name`` if it exists."""
    if os.path.exists(f"/sys/class/net/{name}"):
        with contextlib.suppress(NetworkError):
            ip("link", "delete", name)


def netns_pids(name: str) -> list[int]:
    """Processes whose network namespace is ``name``; empty when it is gone."""
    if not os.path.exists(netns_path(name)):
        return []
    try:
        return [int(p) for p in ip("netns", "pids", name).split()]
    except (NetworkError, ValueError):
        return []


def _host_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the host routes or holds an address in (any routing table)."""
    nets: list[ipaddress.IPv4Network] = []
    for route in json.loads(ip("-j", "-4", "route", "show", "table", "all") or "[]"):
        dst = route.get("dst", "")
        if dst and dst != "default":
            with contextlib.suppress(ValueError):
                nets.append(ipaddress.ip_network(dst, strict=False))
    for iface in json.loads(ip("-j", "-4", "addr") or "[]"):
        for addr in iface.get("addr_info", []):
            with contextlib.suppress(KeyError, ValueError):
                nets.append(
                    ipaddress.ip_network(f"{addr['local']}/{addr['prefixlen']}", strict=False)
                )
    return nets
