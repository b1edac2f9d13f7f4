"""The instance's CPU, as slots the agent's attempts take while they run.

The control plane may hand an agent more calls than fit at once (prefetch): they wait
here for a slot instead of in a worker, so the instance never runs more than its vCPUs
allow, and a call that waits too long can be given back unstarted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class CpuSlots:
    """Millicores of one instance, taken and given back by running attempts. Thread-safe."""

    def __init__(self, vcpus: float) -> None:
        self.total_m = max(1, round(vcpus * 1000))
        self._used_m = 0
        self._cond = threading.Condition()

    def acquire(self, cpu: float, *, timeout: float, abort: Callable[[], bool]) -> bool:
        """Take ``cpu`` vCPUs, waiting up to ``timeout`` seconds for them to be free.

        A call larger than the whole instance takes it whole once it is idle. Returns False
        on timeout or as soon as ``abort()`` is true (checked at least every 0.1 s).
        """
        need = min(self.total_m, max(1, round(cpu * 1000)))
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._used_m + need > self.total_m:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or abort():
                    return False
                self._cond.wait(min(remaining, 0.1))
            self._used_m += need
            return True

    def release(self, cpu: float) -> None:
        need = min(self.total_m, max(1, round(cpu * 1000)))
        with self._cond:
            self._used_m = max(0, self._used_m - need)
            self._cond.notify_all()


class Pace:
    """Whether recent attempts are short enough to prefetch: an exponentially weighted
    mean of their durations, reset to "no" by a give-back."""

    def __init__(self, short_s: float, *, weight: float = 0.2) -> None:
        self.short_s = short_s
        self._weight = weight
        self._mean: float | None = None
        self._lock = threading.Lock()

    def record(self, seconds: float) -> None:
        with self._lock:
            m = self._mean
            self._mean = seconds if m is None else m + self._weight * (seconds - m)

    def reset(self) -> None:
        with self._lock:
            self._mean = None

    def short(self) -> bool:
        with self._lock:
            return self._mean is not None and self._mean < self.short_s
