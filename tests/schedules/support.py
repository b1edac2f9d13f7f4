"""Helpers shared by the schedule tests."""

from __future__ import annotations

from datetime import datetime, timezone


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    """An aware UTC datetime, the form every schedule function returns."""
    return datetime(year, month, day, hour, minute, tzinfo=timezone.utc)
