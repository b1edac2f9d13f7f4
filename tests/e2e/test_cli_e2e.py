"""The `mn` command as a person uses it, against the real local cloud."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.e2e.conftest import AwsTarget
from tests.support.procs import free_port, wait_until

pytestmark = pytest.mark.e2e

MN = [sys.executable, "-m", "multinode.cli"]

APP = """
import multinode as mn

@mn.function(cpu=0.5, cooldown=60)
def shout(word):
    print(f"shouting {word}", flush=True)
    return word.upper()

@mn.function(cpu=0.5, cooldown=60)
def block(path):
    import time
    from pathlib import Path
    deadline = time.monotonic() + 120
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.02)

def main(word="hello"):
    print("result:", shout.call(word))
"""


def mn(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [*MN, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_deploy_list_logs_cancel_undeploy(local_cloud, write_app, app_name, tmp_path) -> None:
    path = write_app(APP)
    out = mn("deploy", str(path), "--name", app_name).stdout
    assert app_name in out and "shout" in out and "block" in out

    apps = json.loads(mn("apps", "--json").stdout)
    assert any(a["name"] == app_name and a["version"] == 1 for a in apps)

    import multinode as mn_sdk

    assert mn_sdk.get_function(app_name, "shout").call("hey") == "HEY"
    calls = json.loads(mn("calls", app_name, "--json").stdout)
    assert [c["status"] for c in calls if c["function"] == "shout"] == ["succeeded"]

    logs = mn("logs", app_name, "--function", "shout").stdout
    assert "shouting hey" in logs

    instances = json.loads(mn("instances", app_name, "--json").stdout)
    assert instances and all(i["app"] == app_name for i in instances)

    handle = mn_sdk.get_function(app_name, "block").start(str(tmp_path / "never"))
    wait_until(lambda: handle.status().value == "running", timeout=30, what="block to start")
    mn("cancel", handle.id)
    wait_until(lambda: handle.status().value == "cancelled", timeout=10, what="cancelled")

    mn("undeploy", app_name)
    apps = json.loads(mn("apps", "--json").stdout)
    assert [a["status"] for a in apps if a["name"] == app_name] == ["undeployed"]


def test_mn_run_deploys_runs_the_entrypoint_and_tears_down(local_cloud, write_app) -> None:
    path = write_app(APP, name="runme")
    proc = mn("run", f"{path}::main", "quiet")
    assert "result: QUIET" in proc.stdout
    assert "shouting quiet" in proc.stdout + proc.stderr  # the remote output is streamed
    apps = json.loads(mn("apps", "--json").stdout)
    ephemeral = [a for a in apps if a["name"].startswith("runme-run-")]
    assert ephemeral and all(a["status"] == "undeployed" for a in ephemeral)


def test_unknown_app_is_one_clear_line(local_cloud) -> None:
    proc = mn("calls", "no-such-app", "--json", check=False)
    # Listing calls of an unknown app either finds none or names the problem; never a traceback.
    assert "Traceback" not in proc.stderr
    proc = mn("undeploy", "no-such-app", check=False)
    assert proc.returncode == 1
    assert "no-such-app" in proc.stderr + proc.stdout and "Traceback" not in proc.stderr


def test_unreachable_control_plane_is_one_line_naming_where_it_looked(tmp_path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    proc = mn("apps", env={"MN_URL": url, "MN_API_KEY": "x", "MN_HOME": str(tmp_path)}, check=False)
    assert proc.returncode == 1
    lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert url in lines[0] and "mn up" in lines[0]


def test_login_stores_the_address_for_later_commands(local_cloud, tmp_path) -> None:
    home = tmp_path / "home"
    env = {"MN_HOME": str(home)}
    mn("login", local_cloud["url"], "--key", local_cloud["api_key"], env=env)
    config = home / "config.json"
    assert oct(config.stat().st_mode & 0o777) == "0o600"
    # With no MN_URL and no local state in this home, the stored login is what answers.
    assert mn("apps", "--json", env=env).returncode == 0
    proc = mn("login", local_cloud["url"], "--key", "mnk_wrong", env=env, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr


def test_up_twice_is_harmless_and_down_leaves_nothing_running(
    tmp_path: Path, aws_target: AwsTarget
) -> None:
    # On LocalStack, `mn up` finds it on its AWS port as it would a user's.
    aws_port = urlsplit(aws_target.endpoint).port if aws_target.endpoint else free_port()
    env = {
        "MN_HOME": str(tmp_path),
        "MN_LOCAL_AWS_PORT": str(aws_port),
        "MN_LOCAL_PORT": str(free_port()),
        "MN_LOCAL_GATEWAY_PORT": str(free_port()),
    }
    mn("up", env=env)
    state = json.loads((tmp_path / "local" / "state.json").read_text())
    pids = [p["pid"] for p in state["processes"].values()]
    try:
        again = mn("up", env=env)
        assert "already up" in again.stdout + again.stderr
        assert (
            json.loads((tmp_path / "local" / "state.json").read_text())["processes"]
            == state["processes"]
        )
        status = json.loads(mn("status", "--json", env=env).stdout)
        expected = {"aws", "controlplane", "gateway", "vmrunner"}
        if aws_target.name == "localstack":
            expected.add("dynamodb")  # the emulator serving DynamoDB beside LocalStack
        assert {s["name"] for s in status if s["running"]} == expected
    finally:
        mn("down", env=env)
    for pid in pids:
        wait_until(
            lambda pid=pid: (
                not Path(f"/proc/{pid}").exists()
                or Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
            ),
            timeout=15,
            what=f"process {pid} to end",
        )
    assert not (tmp_path / "local" / "state.json").exists()
    after = mn("down", env=env)
    assert "not running" in after.stdout + after.stderr
