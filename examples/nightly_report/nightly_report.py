"""A heavy report every night at 23:00 on a 16-vCPU machine, and its cron twin for weekdays.

mn up
mn deploy examples/nightly_report/nightly_report.py
mn schedules nightly-report          # next fire times
mn trigger nightly-report nightly --wait   # run one now instead of waiting for 23:00
mn dict get nightly-report reports latest
"""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timedelta, timezone

import multinode as mn

reports = mn.get_dict(name="reports")  # shared by every process of the app; no network yet


def build_report(label: str) -> dict:
    """A stand-in for the real work: a long hash chain over the day's date."""
    day = datetime.now(timezone.utc).date().isoformat()
    digest = f"{label}:{day}".encode()
    for _ in range(100_000):
        digest = hashlib.sha256(digest).digest()
    return {
        "label": label,
        "day": day,
        "checksum": digest.hex()[:16],
        "instance": os.environ.get("MN_INSTANCE_ID"),
        "finished_at": datetime.now(timezone.utc).isoformat(),
    }


@mn.scheduled_task(
    reference_time=datetime(2023, 9, 8, 23, 0), interval=timedelta(days=1), cpu=16, cooldown=5
)
def nightly() -> dict:
    """Every day at 23:00 UTC (the reference time's wall clock, repeated daily)."""
    report = build_report("nightly")
    reports["latest"] = report
    return report


@mn.schedule(cron="0 23 * * 1-5", timezone="Europe/London", cpu=16, cooldown=5)
def weekday_nightly() -> dict:
    """The same at 23:00 London time, Monday to Friday only."""
    report = build_report("weekday")
    reports["latest-weekday"] = report
    return report
