"""A control-plane restart is invisible: SIGKILL the control plane in the middle of a map,
leave it down for longer than the instance grace, start it again with `mn up`, and every
input runs exactly once, on the instances that were already there."""

from __future__ import annotations

import collections
import json
import os
import signal
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

import multinode as mn
from multinode import _localcloud
from multinode._client import get_client
from tests.e2e.conftest import AwsTarget, started_local_cloud
from tests.support.procs import pid_alive, wait_until

pytestmark = pytest.mark.e2e

LOST_AFTER_S = 10
OUTAGE_S = 12  # longer than the grace: a restart must not count it against the agents

APP = """
import os
import time
import uuid
from pathlib import Path

import multinode as mn


@mn.function(cpu=0.25, cooldown=300, max_workers=2)
def work(marker_dir, i):
    # One file per execution: a second run of an input leaves a second file.
    Path(marker_dir, f"{i}.{uuid.uuid4().hex}").touch()
    time.sleep(0.5)
    return i
"""


@pytest.fixture
def cloud(tmp_path: Path, aws_target: AwsTarget, monkeypatch: pytest.MonkeyPatch):
    home = tmp_path / "home"
    with started_local_cloud(
        home, aws_target, server_env={"MN_SERVER_AGENT_LOST_AFTER_S": str(LOST_AFTER_S)}
    ) as state:
        monkeypatch.setenv("MN_HOME", str(home))
        monkeypatch.delenv("MN_URL", raising=False)
        monkeypatch.delenv("MN_API_KEY", raising=False)
        yield state


def test_killing_the_control_plane_mid_map_runs_every_input_exactly_once(
    cloud, tmp_path: Path
) -> None:
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / "restart_app.py").write_text(textwrap.dedent(APP))
    markers = tmp_path / "markers"
    markers.mkdir()
    name = "restart-" + uuid.uuid4().hex[:6]
    mn.deploy(folder / "restart_app.py", name=name)
    work = mn.get_function(name, "work")
    work.starmap([(str(markers), -1), (str(markers), -2)])  # the VMs are up and warm
    before = {i.id: i.state.value for i in get_client().instances(app=name)}

    inputs = list(range(120))
    outcome: dict = {}

    def run_map() -> None:
        try:
            outcome["results"] = work.starmap([(str(markers), i) for i in inputs])
        except BaseException as exc:  # reported by the assertions below
            outcome["error"] = exc

    mapper = threading.Thread(target=run_map)
    mapper.start()
    wait_until(lambda: len(list(markers.iterdir())) >= 12, timeout=60, what="the map to start")
    pid = cloud["processes"]["controlplane"]["pid"]
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_until(lambda: not pid_alive(pid), timeout=10, what="the control plane to die")
    # The outage itself: the scenario's length, not a wait for anything.
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - killed_at)))
    state = _localcloud.up(cloud["config"], echo=lambda _m: None)
    assert state["processes"]["controlplane"]["pid"] != pid
    assert state["processes"]["vmrunner"]["pid"] == cloud["processes"]["vmrunner"]["pid"]

    mapper.join(timeout=240)
    assert not mapper.is_alive(), "the map did not finish after the restart"
    assert "error" not in outcome, outcome.get("error")
    assert outcome["results"] == inputs
    runs = collections.Counter(int(p.name.split(".")[0]) for p in markers.iterdir())
    twice = {i: n for i, n in runs.items() if n != 1 and i >= 0}
    assert twice == {}, f"inputs run other than once: {twice}"
    assert all(runs[i] == 1 for i in inputs)
    after = {i.id: i.state.value for i in get_client().instances(app=name)}
    # The instances from before kept running (none declared lost, none replaced); the map
    # itself may have added one, up to max_workers.
    assert set(before) <= set(after) and len(after) <= 2, json.dumps(after)
    assert all(state == "ready" for state in after.values()), json.dumps(after)
