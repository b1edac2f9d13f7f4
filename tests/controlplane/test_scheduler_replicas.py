"""Three control-plane processes on one PostgreSQL database race to fire the same schedules;
one is frozen (SIGSTOP) for longer than its lease and then resumed. Every due time must be
recorded exactly once, with exactly one call for each fire that ran, and none lost."""

from __future__ import annotations

import base64
import hashlib
import os
import platform
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from multinode_controlplane import models as m
from multinode_controlplane.db import Database
from tests.conftest import fresh_postgres_database
from tests.controlplane.schedule_helpers import interval_rule
from tests.support.procs import free_port, running, wait_until

KEY = "mnk_replica-race-key"
SCHEDULES = 12
INTERVAL_S = 1.0
LEASE_S = 1.0


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_postgres_database() as url:
        yield url


def replica_env(database_url: str, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "MN_SERVER_DATABASE_URL": database_url,
        "MN_SERVER_PORT": str(port),
        "MN_SERVER_COMPUTE": "none",
        "MN_SERVER_API_KEY": KEY,
        "MN_SERVER_MIN_SCHEDULE_INTERVAL_S": "1",
        "MN_SERVER_SCHEDULER_LEASE_S": str(LEASE_S),
        "MN_SERVER_SCHEDULER_IDLE_WAKE_S": "0.2",
    }


def deploy(url: str) -> None:
    client = httpx.Client(base_url=f"{url}/v1", headers={"Authorization": f"Bearer {KEY}"})
    blob = b"pickled function"
    sha = hashlib.sha256(blob).hexdigest()
    client.put(f"/blobs/{sha}", content=blob)
    names = [f"task{i}" for i in range(SCHEDULES)]
    reply = client.post(
        "/apps/race/deployments",
        json={
            "functions": [{"name": n, "spec": {"cpu": 0.1}, "blob_hash": sha} for n in names],
            "python_version": platform.python_version(),
            "cloudpickle_version": "3.1.2",
            "schedules": [
                {
                    "function": n,
                    "rule": interval_rule(INTERVAL_S),
                    "overlap": "allow",
                    "input": base64.b64encode(b"()").decode(),
                }
                for n in names
            ],
        },
    )
    assert reply.status_code == 200, reply.text
    client.close()


def latest_fire(db: Database) -> float:
    with db.read() as session:
        return session.execute(select(func.max(m.schedule_fires.c.fire_time))).scalar() or 0.0


def test_three_replicas_one_frozen_past_its_lease_fire_each_due_time_once(
    pg_url: str, tmp_path: Path
) -> None:
    ports = [free_port() for _ in range(3)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    args = [sys.executable, "-m", "multinode_controlplane"]
    db = Database(pg_url)
    with (
        running(
            args,
            ready_url=f"{urls[0]}/v1/health",
            log=tmp_path / "r0.log",
            env=replica_env(pg_url, ports[0]),
        ),
        running(
            args,
            ready_url=f"{urls[1]}/v1/health",
            log=tmp_path / "r1.log",
            env=replica_env(pg_url, ports[1]),
        ) as frozen,
        running(
            args,
            ready_url=f"{urls[2]}/v1/health",
            log=tmp_path / "r2.log",
            env=replica_env(pg_url, ports[2]),
        ),
    ):
        deploy(urls[0])
        wait_until(lambda: latest_fire(db) > 0, timeout=20, what="the first fires")
        first = latest_fire(db)
        wait_until(lambda: latest_fire(db) >= first + 2, timeout=20, what="fires from all replicas")

        os.kill(frozen.pid, signal.SIGSTOP)
        stopped_at = time.time()
        try:
            wait_until(
                lambda: latest_fire(db) >= stopped_at + 3 * LEASE_S,
                timeout=30,
                what="the others to fire past the frozen replica's lease",
            )
        finally:
            os.kill(frozen.pid, signal.SIGCONT)
        resumed_at = time.time()
        wait_until(
            lambda: latest_fire(db) >= resumed_at + 3, timeout=30, what="fires after the resume"
        )
        reply = httpx.post(
            f"{urls[1]}/v1/apps/race/schedules/pause", headers={"Authorization": f"Bearer {KEY}"}
        )
        assert reply.status_code == 200  # the frozen replica is back and serving

    f, s = m.schedule_fires.c, m.schedules.c
    with db.read() as session:
        fires = session.execute(
            select(s.function, f.fire_time, f.status, f.call_id).join(
                m.schedules, s.id == f.schedule_id
            )
        ).all()
        call_ids = list(session.execute(select(m.calls.c.id)).scalars())
    db.close()

    by_schedule: dict[str, list[float]] = defaultdict(list)
    for fire in fires:
        by_schedule[fire.function].append(fire.fire_time)
    assert len(by_schedule) == SCHEDULES
    for times in by_schedule.values():
        times.sort()
        expected = [times[0] + k * INTERVAL_S for k in range(len(times))]
        assert times == expected  # one row per due time, none missing, none twice
        assert times[0] < stopped_at and times[-1] > resumed_at
    ran = [fire.call_id for fire in fires if fire.status == "dispatched"]
    assert len(ran) == len(set(ran)) == len(call_ids)  # one call per fire that ran
    assert set(ran) == set(call_ids)
    assert all(fire.status in ("dispatched", "missed") for fire in fires)
