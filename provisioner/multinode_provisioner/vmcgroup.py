"""CPU quotas for the local cloud's VMs, in cgroups the VM runner makes and removes.

Each VM gets a group ``<parent>/<instance id>`` whose CPU bandwidth equals its instance
type's vCPUs: ``cpu.max`` = ``"<vcpus * 100000> 100000"`` on the unified hierarchy
(cgroup v2), ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` on a cgroup v1 ``cpu``
hierarchy (hybrid hosts mount ``cpu`` there and leave v2 without it).

Memory is not capped: the local cloud packs many instances onto one host whose memory is
smaller than their sum, so a cap at the type's memory would not reproduce EC2's boundary,
and on v1 hosts the memory hierarchy belongs to whoever placed the runner.

Only directories this module created are written to or removed, and they are named by
the caller; nothing is found by scanning.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000


@dataclass(frozen=True)
class CpuCgroups:
    """One cgroup hierarchy with the CPU controller, where VM groups are made.

    Attributes:
        version: 1 or 2.
        base: the hierarchy's root directory (``/sys/fs/cgroup`` on v2,
            ``/sys/fs/cgroup/cpu`` on v1).
    """

    version: int
    base: Path

    @classmethod
    def detect(cls, root: Path = CGROUP_ROOT) -> CpuCgroups | None:
        """The writable hierarchy that offers the CPU controller, or None when there is none."""
        controllers = root / "cgroup.controllers"
        with contextlib.suppress(OSError):
            if "cpu" in controllers.read_text().split() and os.access(root, os.W_OK):
                return cls(2, root)
        for name in ("cpu", "cpu,cpuacct"):
            base = root / name
            if (base / "cpu.cfs_quota_us").exists() and os.access(base, os.W_OK):
                return cls(1, base)
        return None

    def make_parent(self, name: str) -> Path:
        """Create the runner's parent group ``name`` (absent before) and return its path.

        Raises:
            OSError: the group exists already or the hierarchy refuses it; nothing is
                left behind.
        """
        path = self.base / name
        if self.version == 2:
            _enable_cpu(self.base)
        path.mkdir()
        if self.version == 2:
            try:
                _enable_cpu(path)
            except OSError:
                path.rmdir()
                raise
        return path

    def make_vm_group(self, parent: Path, instance_id: str, vcpus: float) -> Path:
        """Create ``parent/<instance_id>`` limited to ``vcpus`` CPUs and return its path."""
        path = parent / instance_id
        path.mkdir()
        quota = max(1000, round(vcpus * PERIOD_US))  # the kernel refuses quotas under 1 ms
        try:
            if self.version == 2:
                (path / "cpu.max").write_text(f"{quota} {PERIOD_US}")
            else:
                (path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
                (path / "cpu.cfs_quota_us").write_text(str(quota))
        except OSError:
            remove_group(path)
            raise
        return path

    def quota(self, group: Path) -> str:
        """The group's CPU limit in ``cpu.max`` form (``"<quota> <period>"``, quota ``max`` if none)."""
        if self.version == 2:
            return (group / "cpu.max").read_text().strip()
        quota = int((group / "cpu.cfs_quota_us").read_text())
        period = int((group / "cpu.cfs_period_us").read_text())
        return f"{'max' if quota < 0 else quota} {period}"


def procs_file(group: Path) -> Path:
    """The file a process writes its pid to in order to join ``group`` (v1 and v2 alike)."""
    return group / "cgroup.procs"


def group_pids(group: Path) -> list[int]:
    """Processes in ``group`` now; empty when the group is gone."""
    try:
        return [int(line) for line in procs_file(group).read_text().split()]
    except (OSError, ValueError):
        return []


def kill_group(group: Path, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to every process in ``group``."""
    for pid in group_pids(group):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def remove_group(group: Path, *, timeout: float = 5.0) -> bool:
    """Kill what is left in ``group`` and remove it; True when it is gone.

    A group can only be removed once empty, and a killed process leaves it only when the
    kernel has finished its exit, so this retries within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while True:
        kill_group(group)
        try:
            group.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)


def _enable_cpu(group: Path) -> None:
    """Let ``group``'s children use the CPU controller (cgroup v2)."""
    control = group / "cgroup.subtree_control"
    if "cpu" not in control.read_text().split():
        control.write_text("+cpu")
