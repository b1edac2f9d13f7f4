"""How the VM runner houses a VM: a network namespace with a CPU quota, or a plain process.

:func:`open_isolation` picks the mode (``MN_VM_ISOLATION``): ``namespaces`` gives every
VM its own network namespace and address on the runner's bridge (``vmnet``), relays the
host's loopback ports it needs (``vmrelay``) and caps its CPU at its instance type's
vCPUs (``vmcgroup``); ``processes`` runs VMs as plain processes on the host's network;
``auto`` (the default) takes namespaces when it can (root, iproute2, a kernel that
allows it) and says why when it cannot.

Either way the runner keeps a record, ``<state dir>/runner.json``, of everything it made
(bridge, subnet, cgroups, and each VM's namespace, veth, cgroup and process), rewritten
before each thing is made and after each is removed. :func:`clean_up` removes exactly
what a record names, which is how a runner killed with SIGKILL is cleaned up after by the
next runner or by ``mn down``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from multinode_provisioner.catalog import load_catalog
from multinode_provisioner.vmcgroup import CpuCgroups, kill_group, procs_file, remove_group
from multinode_provisioner.vmnet import (
    Bridge,
    NetworkError,
    VMLink,
    delete_link,
    detach,
    ip_available,
    netns_pids,
)
from multinode_provisioner.vmrelay import Relay

log = logging.getLogger(__name__)

MODES = ("auto", "namespaces", "processes")
RECORD_NAME = "runner.json"
RECORD_FORMAT = 1
_KILL_WAIT_S = 5.0


class IsolationError(RuntimeError):
    """The requested isolation cannot be had, or the state dir is in use; says what to do."""


@dataclass(frozen=True)
class Placement:
    """How to start one VM: the command that runs its user-data, and what it is told.

    Attributes:
        argv: runs ``bash <script>`` where the VM lives.
        env: ``MN_VM_ADDRESS`` and ``MN_VM_ISOLATED``, added to the VM's environment.
    """

    argv: list[str]
    env: dict[str, str]


def open_isolation(
    mode: str, state_dir: Path, *, relay_ports: Iterable[int] = ()
) -> PlainProcesses:
    """Clean up after a dead runner of ``state_dir``, then set up the chosen mode.

    Args:
        mode: one of :data:`MODES`.
        state_dir: the runner's state directory, where the record is kept.
        relay_ports: host loopback ports VMs in namespaces reach as ``127.0.0.1:<port>``.

    Raises:
        IsolationError: ``mode`` is unknown; ``namespaces`` was asked for and cannot be
            made; or a live runner still uses ``state_dir``.
    """
    if mode not in MODES:
        raise IsolationError(f"unknown VM isolation {mode!r}; choose one of {', '.join(MODES)}")
    clean_up(state_dir)
    if mode == "processes":
        return PlainProcesses(state_dir, reason="chosen with MN_VM_ISOLATION=processes")
    why_not = _why_no_namespaces()
    if why_not is None:
        try:
            return Namespaces(state_dir, relay_ports=relay_ports)
        except (NetworkError, OSError) as exc:
            why_not = f"the network could not be made: {exc}"
    if mode == "namespaces":
        raise IsolationError(
            f"VMs cannot get network namespaces ({why_not}); run the local cloud as root on"
            " Linux with iproute2 installed, or set MN_VM_ISOLATION=processes"
        )
    return PlainProcesses(state_dir, reason=why_not)


class PlainProcesses:
    """VMs as plain processes on the host's network; the base of :class:`Namespaces`.

    Not thread-safe: the runner calls it from one thread.
    """

    mode = "processes"

    def __init__(self, state_dir: Path, *, reason: str = "") -> None:
        self.state_dir = Path(state_dir)
        self.reason = reason
        self._vms: dict[str, dict] = {}  # instance id -> its record entry
        self._save()

    @property
    def summary(self) -> str:
        """One line saying how VMs run, for the runner's and ``mn up``'s output."""
        return f"VMs run as plain processes ({self.reason}): services get their port in PORT"

    def place(self, instance_id: str, instance_type: str, script: Path) -> Placement:
        """Prepare ``instance_id`` and say how to start it; undo with :meth:`release`."""
        self._vms[instance_id] = {}
        self._save()
        return Placement(
            ["bash", str(script)], {"MN_VM_ADDRESS": "127.0.0.1", "MN_VM_ISOLATED": "0"}
        )

    def started(self, instance_id: str, pid: int) -> None:
        """Record the VM's process (the leader of its process group)."""
        self._vms[instance_id].update(pid=pid, start=process_start(pid))
        self._save()

    def signal(self, instance_id: str, sig: int) -> None:
        """Signal the VM's processes that may have left its process group (none here)."""

    def address(self, instance_id: str) -> str | None:
        """Where the host reaches ``instance_id``."""
        return "127.0.0.1" if instance_id in self._vms else None

    def release(self, instance_id: str) -> None:
        """Forget a stopped VM (its process group must be gone)."""
        if self._vms.pop(instance_id, None) is not None:
            self._save()

    def close(self) -> None:
        """Release every VM and remove the record."""
        for instance_id in list(self._vms):
            self.release(instance_id)
        (self.state_dir / RECORD_NAME).unlink(missing_ok=True)

    def _describe(self) -> dict:
        return {}

    def _save(self) -> None:
        me = os.getpid()
        record = {
            "format": RECORD_FORMAT,
            "pid": me,
            "start": process_start(me),
            "mode": self.mode,
            "summary": self.summary,
            **self._describe(),
            "vms": self._vms,
        }
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_dir / (RECORD_NAME + ".tmp")
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(self.state_dir / RECORD_NAME)


class Namespaces(PlainProcesses):
    """VMs in network namespaces on one bridge, with relayed ports and CPU quotas."""

    mode = "namespaces"

    def __init__(self, state_dir: Path, *, relay_ports: Iterable[int] = ()) -> None:
        """Make the bridge and the relay, and the cgroup parent when a CPU hierarchy allows.

        A hierarchy that refuses the parent (e.g. a container's delegated cgroup) costs
        the CPU quotas, not the namespaces; the summary says so.

        Raises:
            NetworkError, OSError: the bridge or relay could not be made; nothing is left
                behind.
        """
        self.state_dir = Path(state_dir)
        self._vms = {}
        self._links: dict[str, VMLink] = {}
        self.bridge = Bridge.choose()
        self.cgroups = CpuCgroups.detect()
        self.cgroup_parent = (
            self.cgroups.base / f"multinode-{self.bridge.tag}" if self.cgroups else None
        )
        self._no_quota = "no writable cgroup hierarchy with the cpu controller"
        self.relay = Relay(relay_ports)
        self._catalog = load_catalog()
        self._parent_made = False
        super().__init__(state_dir)  # records the names before anything is made
        try:
            self.bridge.create()
        except BaseException:
            self.close()
            raise
        if self.cgroups and self.cgroup_parent:
            try:
                self.cgroups.make_parent(self.cgroup_parent.name)
                self._parent_made = True
            except OSError as exc:
                self._no_quota = (
                    f"cgroup v{self.cgroups.version} refused {self.cgroup_parent}: {exc}"
                )
                self.cgroups = self.cgroup_parent = None
                self._save()

    @property
    def summary(self) -> str:
        quota = f"cgroup v{self.cgroups.version}" if self.cgroups else f"none ({self._no_quota})"
        ports = ", ".join(map(str, self.relay.ports)) or "none"
        return (
            f"VMs run in network namespaces on bridge {self.bridge.name} ({self.bridge.subnet});"
            f" CPU quotas: {quota}; relayed 127.0.0.1 ports: {ports}"
        )

    def place(self, instance_id: str, instance_type: str, script: Path) -> Placement:
        """Make the VM's namespace (and cgroup) and say how to start it inside.

        Raises:
            NetworkError, OSError: it could not be made; nothing is left behind.
        """
        link = self.bridge.plan(instance_id)
        self._links[instance_id] = link
        it = self._catalog.get(instance_type)
        if it is None:
            log.warning(
                "instance type %r is not in the catalog: VM %s gets no CPU quota",
                instance_type,
                instance_id,
            )
        group = self.cgroup_parent / instance_id if self.cgroup_parent and it else None
        self._vms[instance_id] = {
            "netns": link.netns,
            "veth": link.veth,
            "address": link.address,
            "cgroup": str(group) if group else None,
        }
        self._save()
        try:
            self.bridge.attach(link)
            if group and self.cgroups and it:
                self.cgroups.make_vm_group(group.parent, instance_id, it.vcpus)
            self.relay.add(instance_id, link.netns)
        except BaseException:
            self.release(instance_id)
            raise
        argv = ["ip", "netns", "exec", link.netns, "bash", str(script)]
        if group:
            # Join the cgroup before anything runs, so every process the VM forks is in it.
            argv = ["bash", "-c", 'echo $$ > "$0" && exec "$@"', str(procs_file(group)), *argv]
        return Placement(argv, {"MN_VM_ADDRESS": link.address, "MN_VM_ISOLATED": "1"})

    def signal(self, instance_id: str, sig: int) -> None:
        """Signal every process in the VM's cgroup and namespace."""
        entry = self._vms.get(instance_id)
        if entry:
            _signal_vm(entry, sig)

    def address(self, instance_id: str) -> str | None:
        link = self._links.get(instance_id)
        return link.address if link else None

    def release(self, instance_id: str) -> None:
        """Kill what is left of the VM, then remove its relay, cgroup and namespace."""
        entry = self._vms.get(instance_id)
        if entry is None:
            return
        self.relay.remove(instance_id)
        _remove_vm(entry)
        link = self._links.pop(instance_id, None)
        if link:
            self.bridge.release(link)
        super().release(instance_id)

    def close(self) -> None:
        for instance_id in list(self._vms):
            self.release(instance_id)
        self.relay.close()
        if self._parent_made and self.cgroup_parent:
            remove_group(self.cgroup_parent)
        self.bridge.delete()
        super().close()

    def _describe(self) -> dict:
        return {
            "bridge": self.bridge.name,
            "subnet": str(self.bridge.subnet),
            "cgroup": str(self.cgroup_parent) if self.cgroup_parent else None,
        }


def read_record(state_dir: Path) -> dict | None:
    """The record of the runner of ``state_dir``, or None when there is none."""
    try:
        record = json.loads((Path(state_dir) / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("format") == RECORD_FORMAT else None


def clean_up(state_dir: Path) -> list[str]:
    """Remove everything the record of a runner that is no longer running names.

    Kills the VMs' processes (by the recorded process, cgroup and namespace), deletes
    their namespaces, veths and cgroups, then the bridge and cgroup parent, then the
    record. Returns what was removed, one phrase each; empty when there was no record.

    Raises:
        IsolationError: the runner that wrote the record is still running.
    """
    record = read_record(state_dir)
    if record is None:
        return []
    if process_start(record["pid"]) == record.get("start"):
        raise IsolationError(
            f"a VM runner (pid {record['pid']}) still uses {state_dir}; stop it first"
            " (`mn down` for the local cloud)"
        )
    done = []
    for instance_id, entry in record.get("vms", {}).items():
        _remove_vm(entry)
        done.append(f"VM {instance_id}")
    if record.get("cgroup"):
        remove_group(Path(record["cgroup"]))
    if record.get("bridge"):
        delete_link(record["bridge"])
        done.append(f"bridge {record['bridge']} ({record.get('subnet')})")
    (Path(state_dir) / RECORD_NAME).unlink(missing_ok=True)
    return done


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), or None if it is gone.

    A pid with the same start time is the same process, so a recorded (pid, start) pair
    is never mistaken for a later process that reused the pid.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else int(fields[19])


def _signal_vm(entry: dict, sig: int) -> None:
    """Signal a VM's process group (if it is the recorded one), cgroup and namespace."""
    pid = entry.get("pid")
    if pid and process_start(pid) == entry.get("start"):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
    if entry.get("cgroup"):
        kill_group(Path(entry["cgroup"]), sig)
    for p in netns_pids(entry["netns"]) if entry.get("netns") else []:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, sig)


def _remove_vm(entry: dict) -> None:
    """SIGKILL whatever is left of a VM, wait for it to go, remove its cgroup and network."""
    deadline = time.monotonic() + _KILL_WAIT_S
    while True:
        _signal_vm(entry, signal.SIGKILL)
        pid = entry.get("pid")
        leader_alive = bool(pid) and process_start(pid) == entry.get("start")
        netns = entry.get("netns")
        if (not leader_alive and not (netns and netns_pids(netns))) or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    if entry.get("cgroup"):
        remove_group(Path(entry["cgroup"]))
    if netns:
        detach(VMLink(netns=netns, veth=entry.get("veth", ""), address=entry.get("address", "")))


def _why_no_namespaces() -> str | None:
    if not hasattr(os, "geteuid") or not os.path.isdir("/proc/self/ns"):
        return "not Linux"
    if os.geteuid() != 0:
        return "not root"
    if not ip_available():
        return "no `ip` command: install iproute2"
    return None
