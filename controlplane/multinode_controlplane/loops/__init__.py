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
) -> None:
    """Run ``tick`` in a worker thread, then again after ``interval`` seconds or as soon
    as one of ``wake_on`` is raised, until cancelled. A failing tick is logged, never fatal."""
    with notifier.subscribe(wake_on) as sub:
        while True:
            try:
                await anyio.to_thread.run_sync(tick)
            except Exception:
                log.exception("%s tick failed; retrying in %.1fs", name, interval)
            await sub.wait(interval)
