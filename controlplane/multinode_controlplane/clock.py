"""Time as a dependency: code that needs "now" receives a clock, so tests can set it."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone

Clock = Callable[[], float]
"""Returns the current time as unix seconds."""

system_clock: Clock = time.time


def to_datetime(ts: float | None) -> datetime | None:
    """Unix seconds (how every timestamp is stored) as an aware UTC datetime."""
    return None if ts is None else datetime.fromtimestamp(ts, tz=timezone.utc)
