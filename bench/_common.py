"""Helpers shared by the benchmark scripts (run them from the repository root)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process, from /proc (clock ticks → seconds)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


ROLES = (
    ("worker", "multinode_agent.runtime"),
    ("agent", "multinode_agent"),
    ("gateway", "multinode_controlplane.gateway"),
    ("controlplane", "multinode_controlplane"),
    ("vmrunner", "multinode_provisioner.vmrunner"),
    ("emulator", "multinode_provisioner.emulator"),
    ("postgres", "postgres: "),  # the server's processes, when the control plane uses it
)


def processes_by_role() -> Iterator[tuple[int, str]]:
    """``(pid, role)`` of every running process that has one of :data:`ROLES`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # gone meanwhile
        # A worker's command line also holds the agent's marker; roles are checked in order.
        role = next((r for r, marker in ROLES if marker in cmdline), None)
        if role is not None:
            yield int(entry.name), role


def cpu_by_role(client_pid: int) -> dict[str, float]:
    """CPU seconds so far of every process of the local cloud, summed by role (worker,
    agent, gateway, controlplane, vmrunner, emulator; postgres: every PostgreSQL server process on
    the machine) plus ``client`` (``client_pid``), from /proc.

    Take it before and after a run and subtract (:func:`role_delta`): processes that
    live through the run (all of these do once instances are warm) are counted exactly.
    """
    totals = {role: 0.0 for role, _ in ROLES} | {"client": 0.0}
    found = [(client_pid, "client"), *processes_by_role()]
    for pid, role in found:
        try:
            totals[role] += cpu_seconds(pid)
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return totals


def count_role(role: str) -> int:
    """How many processes of ``role`` (see :data:`ROLES`) are running."""
    return sum(found == role for _, found in processes_by_role())


def role_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """``after - before`` per role."""
    return {role: after[role] - before.get(role, 0.0) for role in after}


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
