"""Helpers shared by the benchmark scripts (run them from the repository root)."""

from __future__ import annotations

import os
import socket
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
    ("controlplane", "multinode_controlplane"),
    ("vmrunner", "multinode_provisioner.vmrunner"),
    ("emulator", "multinode_provisioner.emulator"),
    ("postgres", "postgres: "),  # the server's processes, when the control plane uses it
)


def cpu_by_role(client_pid: int) -> dict[str, float]:
    """CPU seconds so far of every process of the local cloud, summed by role (worker,
    agent, controlplane, vmrunner, emulator; postgres: every PostgreSQL server process on
    the machine) plus ``client`` (``client_pid``), from /proc.

    Take it before and after a run and subtract (:func:`role_delta`): processes that
    live through the run (all of these do once instances are warm) are counted exactly.
    """
    totals = {role: 0.0 for role, _ in ROLES} | {"client": 0.0}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            seconds = cpu_seconds(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        if int(entry.name) == client_pid:
            totals["client"] += seconds
            continue
        for role, marker in ROLES:
            if marker in cmdline:
                totals[role] += seconds
                break
    return totals


def count_role(role: str) -> int:
    """How many processes of ``role`` (see :data:`ROLES`) are running."""
    count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        # A worker's command line also holds the agent's marker; roles are checked in order.
        found = next((r for r, m in ROLES if m in cmdline), None)
        count += found == role
    return count


def role_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """``after - before`` per role."""
    return {role: after[role] - before.get(role, 0.0) for role in after}


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
