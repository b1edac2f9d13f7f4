"""Background loops. Each exposes a synchronous ``run_once(now)`` (what tests call) and
runs forever through :func:`run_forever` in the app's lifespan."""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio

from multinode_controlplane.services.events import Notifier

log = logging.getLogger(__name__)


async def run_forever(
    name: str,
    tick: Callable[[], object],
    *,
    notifier: Notifier,
    wake_on: list[str],
    interval: float,
    min_gap: float = 0.0,
    on_event: Callable[[], object] | None = None,
) -> None:
    """Run ``tick`` in a worker thread, then again after ``interval`` seconds or as soon
    as one of ``wake_on`` is raised, until cancelled. A failing tick is logged, never fatal.

    ``min_gap`` spaces event-driven ticks: the first wake-up runs at once (a cold start
    is not delayed), but a burst of wake-ups within ``min_gap`` of a tick folds into one
    more tick, so a stream of calls does not run a full pass per call. ``on_event``, when
    given, runs instead of ``tick`` after an event (a lighter pass); ``tick`` still runs
    once per ``interval``.
    """
    with notifier.subscribe(wake_on) as sub:
        work, next_full = tick, anyio.current_time() + interval
        while True:
            started = anyio.current_time()
            try:
                await anyio.to_thread.run_sync(work)
            except Exception:
                log.exception("%s tick failed; retrying in %.1fs", name, interval)
            if work is tick:
                next_full = started + interval
            fired = await sub.wait(max(0.0, next_full - anyio.current_time()))
            work = on_event if fired and on_event is not None else tick
            rest = started + min_gap - anyio.current_time()
            if fired and rest > 0:
                await anyio.sleep(rest)
