"""A light scheduled task fans a heavy calculation out over 16-vCPU machines, one per
country, and saves the results in a dict.

    mn up
    mn deploy examples/country_fanout/country_fanout.py
    mn trigger country-fanout nightly --wait   # run it now instead of waiting for 23:00
    mn dict get country-fanout results latest
"""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timedelta

import multinode as mn

COUNTRIES = ["UK", "USA", "India", "Brazil", "Japan", "Kenya"]


@mn.function(cpu=16, cooldown=5)
def crunch(country: str) -> dict:
    """A stand-in for a heavy per-country model run: a long hash chain."""
    digest = country.encode()
    for _ in range(200_000):
        digest = hashlib.sha256(digest).digest()
    return {
        "country": country,
        "checksum": digest.hex()[:16],
        "instance": os.environ.get("MN_INSTANCE_ID"),
    }


@mn.scheduled_task(
    reference_time=datetime(2023, 9, 8, 23, 0), interval=timedelta(days=1), cpu=0.1, cooldown=5
)
def nightly() -> int:
    """Runs on a tenth of a vCPU; the heavy work goes to the cpu=16 function."""
    results = crunch.map(COUNTRIES)
    mn.get_dict(name="results")["latest"] = results
    return len(results)
