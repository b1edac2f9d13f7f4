"""Scheduler benchmark: fire lateness with 10,000 active schedules, and idle CPU.

Starts one control plane (compute "none", so fires create calls that no VM runs) on a free
port with its own database, deploys ``--schedules`` interval schedules with random phases
(``overlap="allow"``, so every fire writes a fire row and a call), and for ``--duration``
seconds lets them fire. Lateness is each fire's recorded start of dispatch minus its due
time, read from the fire rows. Then it redeploys the same schedules as daily ones first
due two hours later and measures the control plane's CPU while nothing is due.

    .venv/bin/python bench/bench_schedules.py [--schedules 10000] [--interval 60]
        [--duration 60] [--idle 30] [--database-url postgresql://...] [--json out.json]

Targets (issue): lateness p99 <= 100 ms; idle control plane < 2% of one core.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
from _common import cpu_seconds, free_port, percentile
from sqlalchemy import create_engine, text

KEY = "mnk_bench-schedules"
PER_APP = 500  # schedules per deploy request


def interval_rule(seconds: float, reference: datetime) -> dict:
    wall = reference.astimezone(timezone.utc).replace(tzinfo=None)
    return {
        "format": 1,
        "kind": "interval",
        "reference_time": wall.isoformat(),
        "fold": 0,
        "timezone": "UTC",
        "interval_seconds": seconds,
    }


def deploy_all(client: httpx.Client, count: int, rule_for) -> None:  # type: ignore[no-untyped-def]
    blob = b"bench function"
    sha = hashlib.sha256(blob).hexdigest()
    client.put(f"/blobs/{sha}", content=blob).raise_for_status()
    no_args = base64.b64encode(b"()").decode()
    for first in range(0, count, PER_APP):
        names = [f"task{i}" for i in range(first, min(count, first + PER_APP))]
        reply = client.post(
            f"/apps/bench{first // PER_APP}/deployments",
            json={
                "functions": [{"name": n, "spec": {"cpu": 0.1}, "blob_hash": sha} for n in names],
                "python_version": platform.python_version(),
                "cloudpickle_version": "3",
                "schedules": [
                    {"function": n, "rule": rule_for(), "overlap": "allow", "input": no_args}
                    for n in names
                ],
            },
            timeout=120,
        )
        reply.raise_for_status()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", type=int, default=10_000)
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between fires")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of firing")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idle measurement")
    parser.add_argument("--database-url", help="default: SQLite in a temporary directory")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mn-bench-schedules-"))
    url_db = args.database_url or f"sqlite:///{work / 'controlplane.db'}"
    port = free_port()
    env = {
        **os.environ,
        "MN_SERVER_DATABASE_URL": url_db,
        "MN_SERVER_PORT": str(port),
        "MN_SERVER_COMPUTE": "none",
        "MN_SERVER_API_KEY": KEY,
        "MN_SERVER_MIN_SCHEDULE_INTERVAL_S": str(min(args.interval, 900)),
    }
    log = open(work / "controlplane.log", "wb")  # noqa: SIM115
    server = subprocess.Popen(
        [sys.executable, "-m", "multinode_controlplane"], env=env, stdout=log, stderr=log
    )
    base = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=f"{base}/v1", headers={"Authorization": f"Bearer {KEY}"})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if client.get("/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"control plane did not start; see {work / 'controlplane.log'}")
            time.sleep(0.1)

        rng = random.Random(7)
        epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
        started = time.time()
        deploy_all(
            client,
            args.schedules,
            lambda: interval_rule(
                args.interval, epoch + timedelta(seconds=rng.uniform(0, args.interval))
            ),
        )
        deployed = time.time()
        window_start = deployed + 2
        cpu_before = cpu_seconds(server.pid)
        time.sleep(2 + args.duration)
        window_end = time.time()
        busy_cpu = cpu_seconds(server.pid) - cpu_before

        engine = create_engine(url_db.replace("postgresql://", "postgresql+psycopg2://", 1))
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT dispatched_at - fire_time FROM schedule_fires "
                    "WHERE fire_time >= :a AND fire_time <= :b AND status = 'dispatched'"
                ),
                {"a": window_start, "b": window_end - 1},
            ).all()
            doubled = conn.execute(
                text(
                    "SELECT count(*) FROM (SELECT schedule_id, fire_time FROM schedule_fires "
                    "GROUP BY schedule_id, fire_time HAVING count(*) > 1) d"
                )
            ).scalar()
        engine.dispose()
        lateness_ms = [r[0] * 1000 for r in rows]

        # Idle: the same schedules, now daily and first due two hours from now.
        later = datetime.now(timezone.utc) + timedelta(hours=2)
        deploy_all(client, args.schedules, lambda: interval_rule(86_400, later))
        time.sleep(3)
        idle_before, idle_t0 = cpu_seconds(server.pid), time.monotonic()
        time.sleep(args.idle)
        idle_cpu = (cpu_seconds(server.pid) - idle_before) / (time.monotonic() - idle_t0)

        figures = {
            "schedules": args.schedules,
            "interval_s": args.interval,
            "database": "postgresql" if url_db.startswith("postgresql") else "sqlite",
            "deploy_s": round(deployed - started, 2),
            "fires_measured": len(lateness_ms),
            "fires_per_s": round(len(lateness_ms) / max(1e-9, window_end - 1 - window_start), 1),
            "lateness_ms_p50": round(percentile(lateness_ms, 0.50), 2) if lateness_ms else None,
            "lateness_ms_p99": round(percentile(lateness_ms, 0.99), 2) if lateness_ms else None,
            "lateness_ms_max": round(max(lateness_ms), 2) if lateness_ms else None,
            "due_times_recorded_twice": doubled,
            "cpu_while_firing_pct_core": round(100 * busy_cpu / (2 + args.duration), 2),
            "idle_cpu_pct_core": round(100 * idle_cpu, 3),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        }
        print(json.dumps(figures, indent=2))
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))
        return 0
    finally:
        client.close()
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


if __name__ == "__main__":
    sys.exit(main())
