"""What the provisioner's idle pass costs as history grows, on SQLite.

Every second the provisioner judges which ready instances are idle past their cooldown
(``provisioning.mark_for_termination``), which needs each idle instance's latest finished
attempt. The script fills a fresh database with 4 ready instances that have run N finished
attempts between them and times, for N = 3,000 and 300,000, in the same run:

- the pass itself (median of 20 runs);
- the per-instance index probe it now uses for the latest finish, next to the query it
  used before (``max(finished_at) ... group by instance_id`` over every attempt of the
  ready instances), which read all their history.

    .venv/bin/python bench/bench_idle_pass.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import func, insert, select

from multinode_controlplane import models as m
from multinode_controlplane.clock import system_clock
from multinode_controlplane.db import Database
from multinode_controlplane.services import provisioning
from multinode_controlplane.services.context import Context
from multinode_controlplane.services.events import Notifier
from multinode_controlplane.settings import ServerSettings

INSTANCES = 4


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    figures = {}
    for n in (3_000, 300_000):
        figures[n] = measure(n)
        f = figures[n]
        print(
            f"{n:>7} attempts: pass {f['pass_ms']:.2f} ms; latest finish: per-instance probe "
            f"{f['probe_ms']:.3f} ms, previous group-by {f['group_by_ms']:.2f} ms"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


def measure(n: int) -> dict[str, float]:
    folder = Path(tempfile.mkdtemp(prefix="mn-bench-idle-"))
    db = Database(f"sqlite:///{folder / 'controlplane.db'}")
    db.create_tables()
    settings = ServerSettings(database_url=f"sqlite:///{folder / 'controlplane.db'}")
    ctx = Context(db=db, notifier=Notifier(), settings=settings, clock=system_clock)
    now = time.time()
    ids = [f"mi-{k}" for k in range(INSTANCES)]
    with db.write() as session:
        session.add(m.OwnerRow(name="default", created_at=now))
        session.flush()
        app = m.AppRow(owner="default", name="bench", created_at=now)
        session.add(app)
        session.flush()
        for instance_id in ids:
            session.add(
                m.InstanceRow(
                    id=instance_id,
                    app_id=app.id,
                    state="ready",
                    instance_type="t3.nano",
                    vcpus=2,
                    memory_mib=512,
                    price_per_hour=0.0052,
                    launch_token=instance_id,
                    launched_for="f",
                    launched_at=now,
                    ready_at=now,
                    cooldown_s=3600,
                )
            )
        rows = [
            {
                "id": f"a{k}",
                "call_id": f"c{k}",
                "number": 1,
                "instance_id": ids[k % INSTANCES],
                "fence": 1,
                "status": "succeeded",
                "started_at": now - 1,
                "finished_at": now - 1 + k * 1e-6,
                "cpu": 0.25,
                "timeout_s": 300,
            }
            for k in range(n)
        ]
        for start in range(0, n, 10_000):
            session.execute(insert(m.attempts), rows[start : start + 10_000])
    passes = []
    for _ in range(20):
        started = time.perf_counter()
        provisioning.mark_for_termination(ctx, time.time())
        passes.append(time.perf_counter() - started)
    a = m.attempts.c
    with db.read() as session:
        probes, group_bys = [], []
        for _ in range(20):
            started = time.perf_counter()
            for instance_id in ids:
                session.execute(provisioning._LAST_FINISH, {"_instance": instance_id}).scalar()
            probes.append(time.perf_counter() - started)
            started = time.perf_counter()
            session.execute(
                select(a.instance_id, func.max(a.finished_at))
                .where(a.instance_id.in_(ids))
                .group_by(a.instance_id)
            ).all()
            group_bys.append(time.perf_counter() - started)
    db.close()
    return {
        "pass_ms": statistics.median(passes) * 1000,
        "probe_ms": statistics.median(probes) * 1000,
        "group_by_ms": statistics.median(group_bys) * 1000,
    }


if __name__ == "__main__":
    sys.exit(main())
