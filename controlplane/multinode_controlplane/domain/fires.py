"""What a schedule does when it is due: the pure decision behind every fire.

The scheduler hands :func:`plan` a schedule's earliest unhandled due time, the current
time and the state of its previous run; the plan says which due times run, which are
skipped, queued or recorded as missed, and when the schedule is next due. Fire times come
from :mod:`multinode.schedule_math`, the same code the SDK and ``mn schedules`` use.

Policies:

* Catch-up: due times that passed while no scheduler acted on them are coalesced. Only
  the latest may run, and only if it is at most ``catchup_window_s`` old (or
  :data:`ON_TIME_GRACE_S`, whichever is larger, so a scheduler that is merely a little
  late is never mistaken for a catch-up); every other one is recorded as missed.
* Overlap: when the previous run is still queued or running, ``skip`` records the fire as
  skipped, ``queue`` holds it until that run ends (at most one held fire per schedule;
  a further one is skipped), ``allow`` runs it anyway.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal

from multinode import schedule_math
from multinode.schedule_math import ScheduleRule

ON_TIME_GRACE_S = 60.0
"""A due time at most this late is on time whatever ``catchup_window_s`` says."""

MAX_MISSED_RECORDED = 1000
"""Most missed due times recorded one by one per pass; older ones are only counted."""

Overlap = Literal["skip", "queue", "allow"]
RunStatus = Literal["dispatched", "queued", "skipped"]


@dataclass(frozen=True)
class Plan:
    """The decision for one due schedule.

    Attributes:
        run_time: the due time that runs (or is queued or skipped by the overlap policy);
            None when every due time was missed.
        run_status: what happens to ``run_time``.
        reason: why ``run_time`` did not run at once (skipped or queued), else None.
        missed: due times recorded as missed, increasing (the latest ones if too many).
        missed_not_recorded: further missed due times, older than those in ``missed``.
        next_fire_time: the schedule's next due time, strictly after ``now``; None when
            the rule never fires again.
    """

    run_time: float | None
    run_status: RunStatus
    reason: str | None
    missed: list[float] = field(default_factory=list)
    missed_not_recorded: int = 0
    next_fire_time: float | None = None


def plan(
    rule: ScheduleRule,
    *,
    due: float,
    now: float,
    catchup_window_s: float,
    overlap: Overlap,
    previous_running: bool,
    fire_queued: bool,
) -> Plan:
    """Decide what to do about every due time of ``rule`` in ``[due, now]``.

    Args:
        rule: the schedule's rule.
        due: its earliest due time not yet acted on (unix seconds, ``<= now``).
        now: the current time (unix seconds).
        catchup_window_s: how old the latest due time may be and still run.
        overlap: the overlap policy.
        previous_running: the schedule's previous run is queued or running.
        fire_queued: a fire of this schedule already waits (``overlap="queue"``).
    """
    dues = collections.deque([due], maxlen=MAX_MISSED_RECORDED + 1)
    total = 1
    for instant in schedule_math.fires_between(rule, to_datetime(due), to_datetime(now)):
        ts = instant.timestamp()
        # A float round trip may land a microsecond early and yield ``due`` again.
        if ts > dues[-1]:
            dues.append(ts)
            total += 1
    latest = dues.pop()
    missed = list(dues)
    skipped_count = total - 1 - len(missed)
    next_fire_time = next_after(rule, max(now, latest))
    if now - latest > max(catchup_window_s, ON_TIME_GRACE_S):
        return Plan(
            None,
            "skipped",
            None,
            missed=[*missed, latest],
            missed_not_recorded=skipped_count,
            next_fire_time=next_fire_time,
        )
    status: RunStatus = "dispatched"
    reason = None
    if previous_running and overlap == "skip":
        status, reason = "skipped", "the previous run is still running (overlap='skip')"
    elif (previous_running or fire_queued) and overlap == "queue":
        if fire_queued:
            status, reason = "skipped", "a run is already queued (overlap='queue' holds one)"
        else:
            status, reason = "queued", "waits for the previous run to finish (overlap='queue')"
    return Plan(
        latest,
        status,
        reason,
        missed=missed,
        missed_not_recorded=skipped_count,
        next_fire_time=next_fire_time,
    )


def next_after(rule: ScheduleRule, after: float) -> float | None:
    """The first due time strictly after ``after`` (unix seconds), or None if none is left."""
    fires = schedule_math.next_fires(rule, to_datetime(after), 2)
    for instant in fires:
        if instant.timestamp() > after:
            return instant.timestamp()
    return None


def upcoming(rule: ScheduleRule, after: datetime, count: int) -> list[datetime]:
    """The next ``count`` due times strictly after ``after``: what ``mn schedules`` shows."""
    return schedule_math.next_fires(rule, after, count)


def to_datetime(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)
