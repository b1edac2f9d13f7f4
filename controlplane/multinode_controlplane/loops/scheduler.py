"""The scheduler loop: fires due schedules, then sleeps until the next one is due.

It does not scan on a timer: after each pass it asks the database for the earliest next
fire time (an index lookup) and sleeps until then, or until a deploy or resume on this
replica wakes it, or at most ``scheduler_idle_wake_s`` (other replicas' changes do not
wake it). While a fire is held for ``overlap="queue"`` it also looks every second for
the previous run to end.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass, field

import anyio

from multinode_controlplane.services import firing
from multinode_controlplane.services.context import Context
from multinode_controlplane.services.schedules import SCHEDULER

log = logging.getLogger(__name__)

HELD_FIRE_RECHECK_S = 1.0


@dataclass
class SchedulerReport:
    """One pass. ``next_due`` is the earliest next fire time after it (None: none)."""

    dispatched: int = 0
    skipped: int = 0
    missed: int = 0
    queued: int = 0
    rejected: int = 0
    released: int = 0
    call_ids: list[str] = field(default_factory=list)
    next_due: float | None = None
    held: bool = False


class Scheduler:
    """Fires the schedules due at ``now``; one per control-plane replica.

    Args:
        ctx: the services' context (its clock gives "now" when none is passed).
        owner: this replica's lease owner name; default: host, pid and a random suffix.
    """

    def __init__(self, ctx: Context, *, owner: str | None = None) -> None:
        self.ctx = ctx
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def run_once(self, now: float | None = None) -> SchedulerReport:
        """Release held fires whose previous run ended, then claim and dispatch every
        schedule due at ``now``, a batch at a time. Failures are logged, never raised."""
        now = self.ctx.clock() if now is None else now
        report = SchedulerReport()
        try:
            report.released = len(firing.release_queued(self.ctx, now=now))
        except Exception:
            log.exception("releasing held fires failed")
        batch = self.ctx.settings.scheduler_batch
        while True:
            try:
                claims = firing.claim(self.ctx, owner=self.owner, now=now, limit=batch)
                done = firing.dispatch(self.ctx, owner=self.owner, claims=claims, now=now)
            except Exception:
                log.exception("firing due schedules failed")
                break
            for name in ("dispatched", "skipped", "missed", "queued", "rejected"):
                setattr(report, name, getattr(report, name) + getattr(done, name))
            report.call_ids.extend(done.call_ids)
            if done.rejected:
                log.warning(
                    "%d claimed schedules were taken over by another replica (lease expired)",
                    done.rejected,
                )
            if len(claims) < batch:
                break
        try:
            report.next_due, report.held = firing.earliest_due(self.ctx)
        except Exception:
            log.exception("reading the next due time failed")
        return report

    def delay(self, report: SchedulerReport) -> float:
        """Seconds to sleep after ``report``'s pass."""
        longest = self.ctx.settings.scheduler_idle_wake_s
        if report.held:
            longest = min(longest, HELD_FIRE_RECHECK_S)
        if report.next_due is None:
            return longest
        return max(0.0, min(longest, report.next_due - self.ctx.clock()))

    async def run_forever(self) -> None:
        """Pass, sleep until the next due time (or a wake-up), repeat, until cancelled."""
        with self.ctx.notifier.subscribe([SCHEDULER]) as sub:
            while True:
                report = await anyio.to_thread.run_sync(self.run_once)
                delay = self.delay(report)
                if delay > 0:
                    await sub.wait(delay)
