"""Packing calls onto instances: which calls fit the free resources of an instance.

CPU is counted in integer millicores so that twenty calls of 0.1 fill two vCPUs exactly
(floating-point sums would leave 1.9999999 and refuse the twentieth).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


def millicores(cpu: float) -> int:
    """``cpu`` vCPUs as integer millicores."""
    return round(cpu * 1000)


@dataclass(frozen=True)
class Resources:
    """An amount of CPU (millicores), memory (MiB) and GPUs."""

    cpu_m: int
    memory_mib: int = 0
    gpus: int = 0

    @classmethod
    def of(cls, cpu: float, memory_mib: int | None = None, gpus: int | None = 0) -> Resources:
        return cls(millicores(cpu), memory_mib or 0, gpus or 0)

    def fits_in(self, free: Resources) -> bool:
        return (
            self.cpu_m <= free.cpu_m
            and self.memory_mib <= free.memory_mib
            and self.gpus <= free.gpus
        )

    def __sub__(self, other: Resources) -> Resources:
        return Resources(
            self.cpu_m - other.cpu_m, self.memory_mib - other.memory_mib, self.gpus - other.gpus
        )

    def __add__(self, other: Resources) -> Resources:
        return Resources(
            self.cpu_m + other.cpu_m, self.memory_mib + other.memory_mib, self.gpus + other.gpus
        )


ZERO = Resources(0, 0, 0)


def total(needs: Iterable[Resources]) -> Resources:
    """The sum of ``needs``."""
    out = ZERO
    for need in needs:
        out = out + need
    return out


def pack(free: Resources, candidates: Sequence[tuple[str, Resources]], *, limit: int) -> list[str]:
    """Choose, in order, the candidates that fit ``free``; at most ``limit`` of them.

    Candidates are visited oldest first; one that does not fit is skipped so that a large
    call at the head of the queue does not starve smaller ones the instance can take.
    """
    chosen: list[str] = []
    for key, need in candidates:
        if len(chosen) >= limit or free.cpu_m <= 0:
            break
        if need.fits_in(free):
            chosen.append(key)
            free = free - need
    return chosen


def slots(free: Resources, need: Resources) -> int:
    """How many calls needing ``need`` fit in ``free``."""
    if not need.fits_in(free):
        return 0
    counts = [free.cpu_m // need.cpu_m if need.cpu_m else 1 << 30]
    if need.memory_mib:
        counts.append(free.memory_mib // need.memory_mib)
    if need.gpus:
        counts.append(free.gpus // need.gpus)
    return max(0, min(counts))


def uncovered(demand: int, need: Resources, free: list[Resources]) -> int:
    """Calls of ``demand`` that the ``free`` capacities cannot take; consumes ``free`` in place.

    The provisioner runs this per function shape, in turn, over the same list so that two
    shapes do not both count on the same free slot.
    """
    for i, capacity in enumerate(free):
        if demand <= 0:
            break
        n = min(demand, slots(capacity, need))
        if n:
            free[i] = capacity - Resources(need.cpu_m * n, need.memory_mib * n, need.gpus * n)
            demand -= n
    return max(0, demand)
