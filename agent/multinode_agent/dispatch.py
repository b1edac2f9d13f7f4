"""The instance's CPU, the calls waiting for it, and the lane threads that run them.

The control plane may hand an agent more calls than fit at once (prefetch): they wait
in the :class:`Dispatcher`'s queue, not in a worker, so the instance never runs more than
its vCPUs allow, and a call that waits too long can be given back unstarted. Each lane
thread takes the oldest call that fits the free CPU, plus, while calls are short, more
queued calls of the same function to run back to back in the same worker process: one
wake-up of the lane and of the worker per batch instead of per call.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Entry(Generic[T]):
    item: T
    need_m: int  # millicores while it runs
    key: str | None  # entries with the same key may share a batch; None never does
    queued_at: float = field(default_factory=time.monotonic)


class Dispatcher(Generic[T]):
    """A queue of items and the lanes running them within ``vcpus``. Thread-safe.

    Args:
        vcpus: the instance's CPU; an item larger than all of it takes it whole once idle.
        run: called in a lane thread with a batch of items (oldest first, at least one)
            whose CPU is booked until it returns; a batch of several shares one booking,
            since its items run one after another.
        batch_limit: the most items of a key a batch may hold right now (1: no batching).
        max_wait_s: an item queued longer than this is taken out and handed to
            ``on_expired`` (it is given back to the control plane unstarted).
        on_expired: called outside the lock, once per expired item.
    """

    def __init__(
        self,
        *,
        vcpus: float,
        run: Callable[[list[T]], None],
        batch_limit: Callable[[str], int],
        max_wait_s: float,
        on_expired: Callable[[T], None],
    ) -> None:
        self.total_m = max(1, round(vcpus * 1000))
        self._run = run
        self._batch_limit = batch_limit
        self._max_wait_s = max_wait_s
        self._on_expired = on_expired
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # lanes wait here for work
        self._expiry = threading.Condition(lock)  # the expiry thread waits here
        self._queue: deque[_Entry[T]] = deque()
        self._used_m = 0
        self._idle = 0  # lanes waiting for work that nobody has woken yet
        self._looking = 0  # lanes started or woken to look at the queue, not there yet
        self._closed = False
        threading.Thread(target=self._expire_loop, name="mn-expiry", daemon=True).start()

    def submit(self, item: T, *, cpu: float, key: str | None) -> None:
        """Queue ``item``, needing ``cpu`` vCPUs while it runs; returns at once."""
        need = min(self.total_m, max(1, round(cpu * 1000)))
        with self._cond:
            if self._closed:
                return
            self._queue.append(_Entry(item, need, key))
            self._balance()
            if len(self._queue) == 1:
                self._expiry.notify()  # it sleeps while the queue is empty

    def requeue(self, items: list[T], *, cpu: float, key: str | None) -> None:
        """Put back, at the front and in order, items a batch could not start."""
        need = min(self.total_m, max(1, round(cpu * 1000)))
        with self._cond:
            if self._closed:
                return
            self._queue.extendleft(_Entry(item, need, key) for item in reversed(items))
            self._balance()
            self._expiry.notify()

    def remove(self, item: T) -> bool:
        """Take ``item`` out of the queue; False if a lane already took it (or never had it)."""
        with self._cond:
            for entry in self._queue:
                if entry.item is item:
                    self._queue.remove(entry)
                    return True
        return False

    def backlog(self) -> int:
        """Items queued and not yet taken by a lane."""
        return len(self._queue)

    def close(self) -> None:
        """Drop what is queued and let the lanes end once their batch returns."""
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._idle = 0
            self._cond.notify_all()
            self._expiry.notify()

    # -- lanes ---------------------------------------------------------------------------

    def _balance(self) -> None:
        """With the lock held: have one lane look at the queue if CPU is free and none is
        about to. A lane that takes work calls this again, so a burst of submissions
        starts lanes one after another, as many as the CPU lets run."""
        if not self._queue or self._used_m >= self.total_m or self._looking:
            return
        self._looking += 1
        if self._idle:
            self._idle -= 1
            self._cond.notify()
            return
        threading.Thread(target=self._lane, name="mn-lane", daemon=True).start()

    def _lane(self) -> None:
        batch: list[_Entry[T]] = []
        looking = True  # started by _balance to look at the queue
        while True:
            with self._cond:
                if batch:
                    self._used_m -= batch[0].need_m
                while True:
                    if self._closed:
                        return
                    if looking:
                        self._looking -= 1
                        looking = False
                    batch = self._take()
                    if batch:
                        break
                    self._idle += 1
                    self._cond.wait()
                    looking = True  # woken by _balance
                self._balance()  # CPU may be left for another lane
            try:
                self._run([entry.item for entry in batch])
            except Exception:  # the lane, and the CPU it books, must outlive a bad batch
                log.exception("running a batch failed")

    def _take(self) -> list[_Entry[T]]:
        """With the lock held: the oldest entry that fits, plus entries to batch with it."""
        free = self.total_m - self._used_m
        entry = next((e for e in self._queue if e.need_m <= free), None)
        if entry is None:
            return []
        self._queue.remove(entry)
        batch = [entry]
        if entry.key is not None and self._queue:
            # Leave the other lanes their share: split the same-key backlog over the lanes
            # that could run beside this one.
            room = max(1, (free - entry.need_m) // entry.need_m + 1)
            share = math.ceil((len(self._queue) + 1) / room)
            limit = min(self._batch_limit(entry.key), share)
            if limit > 1:
                kept: deque[_Entry[T]] = deque()
                for other in self._queue:  # one pass, keeping the others' order
                    if other.key == entry.key and len(batch) < limit:
                        batch.append(other)
                    else:
                        kept.append(other)
                self._queue = kept
        self._used_m += entry.need_m
        return batch

    def _expire_loop(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                if not self._queue:
                    self._expiry.wait()
                    continue
                now = time.monotonic()
                expired = [e for e in self._queue if now - e.queued_at >= self._max_wait_s]
                for entry in expired:
                    self._queue.remove(entry)
                if not expired:
                    oldest = min(e.queued_at for e in self._queue)
                    self._expiry.wait(oldest + self._max_wait_s - now)
                    continue
            for entry in expired:
                self._on_expired(entry.item)


class Pace:
    """How long recent calls took, per function: an exponentially weighted mean of each
    function's call durations, all forgotten on a give-back, and a function's forgotten
    once it has not run for ``memory_s``. Decides whether to batch a function's calls and
    how many, and, by the slowest function run lately, how much to prefetch: an instance
    running tiny calls beside long ones must not hold many of the long ones unstarted."""

    def __init__(
        self,
        short_s: float,
        *,
        weight: float = 0.2,
        memory_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.short_s = short_s
        self._weight = weight
        self._memory_s = memory_s
        self._clock = clock
        self._means: dict[str, tuple[float, float]] = {}  # function -> (mean, last seen)
        self._lock = threading.Lock()

    def record(self, function: str, seconds: float) -> None:
        with self._lock:
            known = self._means.get(function)
            mean = seconds if known is None else known[0] + self._weight * (seconds - known[0])
            self._means[function] = (mean, self._clock())

    def reset(self) -> None:
        with self._lock:
            self._means.clear()

    def mean(self, function: str | None = None) -> float | None:
        """The mean duration of ``function``'s calls, or (None) of the slowest function
        run within ``memory_s``; None when there is none."""
        with self._lock:
            if function is not None:
                known = self._means.get(function)
                return None if known is None else known[0]
            cutoff = self._clock() - self._memory_s
            recent = [mean for mean, seen in self._means.values() if seen >= cutoff]
            return max(recent) if recent else None

    def short(self, function: str | None = None) -> bool:
        """Whether ``function``'s calls (or every function's lately) are short."""
        m = self.mean(function)
        return m is not None and m < self.short_s
