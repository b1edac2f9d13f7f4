"""Fan a CPU-heavy function out over freshly launched 16-vCPU instances.

Run it on the local cloud with `make demo`, or by hand:

    mn up
    mn run examples/fanout.py
    mn down
"""

from __future__ import annotations

import hashlib
import os
import socket

import multinode as mn

COUNTRIES = ["UK", "USA", "India", "Brazil", "Japan", "Kenya"]


@mn.function(cpu=16, cooldown=5)
def crunch(country: str) -> dict:
    """A stand-in for a heavy per-country calculation: a long hash chain."""
    digest = country.encode()
    for _ in range(200_000):
        digest = hashlib.sha256(digest).digest()
    return {
        "country": country,
        "checksum": digest.hex()[:16],
        "instance": os.environ.get("MN_INSTANCE_ID", socket.gethostname()),
    }


def main() -> None:
    print(f"crunching {len(COUNTRIES)} countries on cpu=16 instances ...")
    results = crunch.map(COUNTRIES)
    for row in results:
        print(f"  {row['country']:<8} {row['checksum']}  (ran on {row['instance']})")

    used = {row["instance"] for row in results}
    print(f"\ninstances launched for this run ({len(used)} used):")
    for inst in mn.list_instances(app=crunch.app):
        print(f"  {inst.id}  {inst.instance_type:<12} {inst.vcpus:g} vCPU  {inst.state.value}")
