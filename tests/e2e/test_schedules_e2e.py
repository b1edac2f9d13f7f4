"""A scheduled task on the real local cloud: it fires by itself, fans out with ``.map`` on
instances sized for the mapped function, and its results, runs and logs come back through
``mn trigger``, ``mn calls``, ``mn logs`` and ``mn schedules``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import AwsTarget, started_local_cloud
from tests.support.procs import wait_until

pytestmark = pytest.mark.e2e

MN = [sys.executable, "-m", "multinode.cli"]
DEMO_MIN_INTERVAL = {"MN_MIN_SCHEDULE_INTERVAL_S": "2"}

APP = """
import multinode as mn
from datetime import timedelta

@mn.function(cpu=0.5, cooldown=60)
def crunch(country):
    return country.upper()

@mn.scheduled_task(interval=timedelta(seconds=4), cpu=0.25, cooldown=60)
def report():
    print("fanning out", flush=True)
    return crunch.map(["fr", "de", "jp"])
"""


@pytest.fixture(scope="module")
def demo_cloud(tmp_path_factory: pytest.TempPathFactory, aws_target: AwsTarget) -> Iterator[Path]:
    """A local cloud whose control plane accepts schedules every 2 s, as for a demo."""
    home = tmp_path_factory.mktemp("mn-home-schedules")
    with started_local_cloud(
        home, aws_target, server_env={"MN_SERVER_MIN_SCHEDULE_INTERVAL_S": "2"}
    ):
        yield home


def mn(home: Path, *args: str) -> str:
    env = {**os.environ, "MN_HOME": str(home), "COLUMNS": "200", **DEMO_MIN_INTERVAL}
    for name in ("MN_URL", "MN_API_KEY"):
        env.pop(name, None)
    proc = subprocess.run([*MN, *args], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_a_scheduled_task_fires_fans_out_and_its_results_come_back(
    demo_cloud: Path, tmp_path: Path
) -> None:
    path = tmp_path / "nightly.py"
    path.write_text(APP)
    assert "report" in mn(demo_cloud, "deploy", str(path), "--name", "nightly")

    [listed] = json.loads(mn(demo_cloud, "schedules", "nightly", "--json"))
    assert listed["function"] == "report" and listed["status"] == "active"
    assert len(listed["next_fires"]) == 3

    def finished_fire() -> dict | None:
        fires = json.loads(mn(demo_cloud, "fires", "nightly", "report", "--json"))
        calls = {c["id"]: c for c in json.loads(mn(demo_cloud, "calls", "nightly", "--json"))}
        for fire in fires:
            call = calls.get(fire["call_id"] or "")
            if fire["status"] == "dispatched" and call and call["status"] == "succeeded":
                return fire
        return None

    wait_until(lambda: finished_fire() is not None, timeout=120, what="a fire to finish")
    fire = finished_fire()
    assert fire is not None

    # The fire's run fanned out: three crunch calls whose parent is the scheduled run.
    calls = json.loads(mn(demo_cloud, "calls", "nightly", "--json"))
    children = [c for c in calls if c["parent_call_id"] == fire["call_id"]]
    assert sorted(c["function"] for c in children) == ["crunch"] * 3
    assert all(c["status"] == "succeeded" for c in children)

    triggered = mn(demo_cloud, "trigger", "nightly", "report", "--wait")
    assert "['FR', 'DE', 'JP']" in triggered

    logs = subprocess.run(
        [*MN, "logs", "nightly", "--function", "report"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MN_HOME": str(demo_cloud)},
    )
    assert "fanning out" in logs.stdout + logs.stderr

    paused = mn(demo_cloud, "pause", "nightly")
    assert "paused" in paused
    mn(demo_cloud, "undeploy", "nightly")
