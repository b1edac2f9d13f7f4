"""What the SDK and the `mn` command promise, checked against the real local cloud.

Deploying, map's request shapes, the errors a platform outcome becomes, handles that
outlive a wait, and the CLI's output. Requests are observed on the real client's HTTP
traffic (a recording transport over the real network), never on a stand-in server.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import multinode as mn
from multinode import _calls, _client
from multinode._client import Client, get_client
from multinode._deploy import load_app
from multinode.wire import CallStatus
from tests.support.procs import wait_until
from tests.support.recording import RecordingTransport

pytestmark = pytest.mark.e2e

APP_SOURCE = """
import os
import sys
import time
from pathlib import Path

import multinode as mn


class Boom(Exception):
    pass


@mn.function(cpu=0.1, cooldown=120)
def inc(x, step=1):
    return x + step


@mn.function(cpu=0.1, cooldown=120)
def fail_on_odd(x):
    if x % 2:
        raise Boom(f"odd {x}")
    return x


@mn.function(cpu=0.1, cooldown=120)
def wait_for(marker, release):
    Path(marker).touch()
    deadline = time.monotonic() + 120
    while not Path(release).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return "released"


@mn.function(cpu=0.1, cooldown=120)
def environment():
    print("to stdout", flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    names = ("MN_URL", "MN_API_KEY", "MN_APP", "MN_VERSION", "MN_CALL_ID")
    return {name: os.environ.get(name) for name in names}


# More vCPUs than any CPU-only instance type in the catalog has (the largest has 64).
@mn.function(cpu=128)
def too_big():
    return "never runs"
"""

MN = [sys.executable, "-m", "multinode.cli"]


@pytest.fixture
def recorded(local_cloud, monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingTransport]:
    """The SDK talks to the real control plane through a transport that records requests."""
    transport = RecordingTransport()
    client = Client(get_client().connection, transport=transport)
    monkeypatch.setattr(_client, "get_client", lambda: client)
    yield transport
    client.close()


@pytest.fixture(scope="module")
def app(local_cloud, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("sdk-app") / "e2e_sdk.py"
    path.write_text(textwrap.dedent(APP_SOURCE))
    name = "e2e-sdk-" + uuid.uuid4().hex[:6]
    mn.deploy(path, name=name)
    return name


def fn(app: str, name: str) -> mn.Function:
    return mn.get_function(app, name)


def mn_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [*MN, *args], capture_output=True, text=True, timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


# ---------------------------------------------------------------------------- deploy


def test_a_second_deploy_of_unchanged_code_uploads_nothing(
    recorded: RecordingTransport, write_app, app_name
) -> None:
    path = write_app(
        f"""
        import multinode as mn

        TAG = {app_name!r}  # new code for this test, so the first deploy must upload it

        @mn.function(cpu=2, memory="1GiB")
        def first():
            return TAG

        @mn.function
        def second():
            return TAG
        """
    )
    _, functions = load_app(path)
    info = mn.deploy(list(functions.values()), name=app_name)
    uploaded = {r.url.path.rsplit("/", 1)[-1] for r in recorded.requests if r.method == "PUT"}
    # The app's file (its folder holds nothing else), the folder's manifest, and one
    # import reference per function.
    assert hashlib.sha256(path.read_bytes()).hexdigest() in uploaded
    assert {f.blob_hash for f in info.functions} <= uploaded
    assert len(uploaded) == 4
    assert functions["first"].app == app_name  # the local handles now call the app

    again = mn.deploy(list(functions.values()), name=app_name)
    assert len([r for r in recorded.requests if r.method == "PUT"]) == 4
    assert again.version == info.version + 1
    spec = {f.name: f.spec for f in again.functions}["first"]
    assert (spec.cpu, spec.memory_mib) == (2.0, 1024)


# ---------------------------------------------------------------------------- map


def test_a_quick_call_is_one_request(app: str, recorded: RecordingTransport) -> None:
    """`.call()` creates the call and receives its output in the same request, while
    `.start()` returns at once and waits separately."""
    inc = fn(app, "inc")
    inc.call(0)  # the instance is warm from here on
    recorded.requests.clear()
    assert inc.call(41) == 42
    assert [(r.method, r.url.path) for r in recorded.requests] == [("POST", "/v1/calls")]

    recorded.requests.clear()
    handle = inc.start(1)
    assert json.loads(recorded.sent("POST", "/v1/calls")[0].content)["wait"] == 0
    assert handle.result(timeout=30) == 2
    assert recorded.sent("POST", "/v1/calls/outputs")


def test_map_submits_large_lists_in_chunks_and_waits_on_a_bounded_window(
    app: str, recorded: RecordingTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Smaller limits than the real 1,000 exercise the same code in a fraction of the time.
    monkeypatch.setattr(_calls, "SUBMIT_CHUNK", 10)
    monkeypatch.setattr(_calls, "OUTPUTS_WINDOW", 4)
    inc = fn(app, "inc")
    assert inc.map(range(25)) == [x + 1 for x in range(25)]
    created = [len(json.loads(r.content)["inputs"]) for r in recorded.sent("POST", "/v1/calls")]
    assert created == [10, 10, 5]
    waits = [json.loads(r.content)["call_ids"] for r in recorded.sent("POST", "/v1/calls/outputs")]
    assert len(waits) >= 25 / 4 and max(len(ids) for ids in waits) <= 4

    assert inc.map([1, 2], kwargs={"step": 10}) == [11, 12]
    before = len(recorded.requests)
    assert inc.map([]) == []
    assert len(recorded.requests) == before  # nothing to run, nothing sent


def test_map_without_return_exceptions_raises_the_users_exception(app: str) -> None:
    with pytest.raises(Exception) as caught:
        fn(app, "fail_on_odd").map(range(4))
    assert type(caught.value).__name__ == "Boom"
    assert str(caught.value) in ("odd 1", "odd 3")


# ---------------------------------------------------------------------------- outcomes


def test_a_call_no_instance_type_can_run_fails_with_an_infrastructure_error(app: str) -> None:
    with pytest.raises(mn.InfrastructureError) as caught:
        fn(app, "too_big").call()
    assert "could not be run" in str(caught.value)
    assert "no instance type fits" in str(caught.value)
    (call,) = [c for c in get_client().list_calls(app=app, limit=1000) if c.function == "too_big"]
    assert call.status is CallStatus.failed and "no instance type fits" in call.failure_reason


def test_result_with_a_timeout_gives_up_waiting_but_the_call_goes_on(
    app: str, tmp_path: Path
) -> None:
    marker, release = tmp_path / "started", tmp_path / "go"
    handle = fn(app, "wait_for").start(str(marker), str(release))
    wait_until(marker.exists, timeout=30, what="the call to start")
    with pytest.raises(mn.ResultTimeoutError, match=handle.id):
        handle.result(timeout=0.2)
    assert handle.status() is CallStatus.running
    release.touch()
    assert handle.result(timeout=30) == "released"
    assert mn.get_call(handle.id).result(timeout=5) == "released"


def test_a_looked_up_handle_calls_remotely_and_names_what_is_missing(app: str) -> None:
    inc = mn.get_function(app, "inc")
    assert inc.call(1, step=5) == 6
    with pytest.raises(mn.InvalidRequestError, match="no local code"):
        inc(1)
    missing = "no-such-app-" + uuid.uuid4().hex[:6]
    with pytest.raises(mn.NotFoundError) as caught:
        mn.get_function(missing, "inc")
    assert f"no app named {missing!r}" in str(caught.value) and app in str(caught.value)
    assert "mn deploy" in str(caught.value)


# ---------------------------------------------------------------------------- inside the VM


def test_user_code_runs_as_its_app_and_call_and_both_streams_reach_the_logs(
    app: str, local_cloud
) -> None:
    handle = fn(app, "environment").start()
    env = handle.result(timeout=30)
    assert (env["MN_APP"], env["MN_VERSION"], env["MN_CALL_ID"]) == (app, "1", handle.id)
    assert env["MN_URL"] == local_cloud["url"]
    # Calls back with the instance's own token, never the user's API key.
    assert env["MN_API_KEY"] and env["MN_API_KEY"] != local_cloud["api_key"]

    def lines() -> set[tuple[str, str]]:
        page = get_client().logs(app=app, call_id=handle.id)
        return {(line.stream, line.text.rstrip("\n")) for line in page.lines}

    wait_until(
        lambda: {("stdout", "to stdout"), ("stderr", "to stderr")} <= lines(),
        timeout=15,
        what="both streams in the call's logs",
    )


# ---------------------------------------------------------------------------- mn command

CLI_APP = """
import multinode as mn

@mn.function(cpu=4, memory="8GiB", gpu="T4")
def double(x):
    return int(x) * 2

@mn.function(cpu=0.1, cooldown=1)
def parse(x):
    return int(x)

def main(text="x"):
    print("parsed", parse.call(text))
"""


def test_mn_deploy_prints_the_version_and_each_functions_resources(
    local_cloud, write_app, app_name
) -> None:
    out = mn_cli("deploy", str(write_app(CLI_APP)), "--name", app_name).stdout
    assert f"Deployed app {app_name} version 1" in out
    (row,) = [line for line in out.splitlines() if "double" in line]
    assert "4" in row and "8 GiB" in row and "T4:1" in row


def test_mn_run_undeploys_even_when_the_entry_fails(local_cloud, write_app) -> None:
    stem = "failing_" + uuid.uuid4().hex[:6]
    proc = mn_cli("run", str(write_app(CLI_APP, name=stem)), "not-a-number", check=False)
    assert proc.returncode != 0
    assert "invalid literal for int()" in proc.stderr  # the remote error, shown to the user
    apps = json.loads(mn_cli("apps", "--json").stdout)
    ephemeral = [a for a in apps if a["name"].startswith(stem.replace("_", "-") + "-run-")]
    assert len(ephemeral) == 1 and ephemeral[0]["status"] == "undeployed"


def test_listing_commands_print_tables_and_json(app: str, local_cloud) -> None:
    inc = fn(app, "inc")
    first, last = inc.start(1), inc.start(2)
    assert (first.result(timeout=30), last.result(timeout=30)) == (2, 3)

    apps = mn_cli("apps").stdout
    (row,) = [line for line in apps.splitlines() if app in line]
    assert "deployed" in row and "inc" in row

    newest = json.loads(mn_cli("calls", app, "--json", "--limit", "1").stdout)
    assert [c["id"] for c in newest] == [last.id]
    calls = mn_cli("calls", app, "--limit", "2").stdout
    rows = [line for line in calls.splitlines() if last.id in line or first.id in line]
    assert len(rows) == 2 and all("inc" in r and "succeeded" in r for r in rows)

    instances = json.loads(mn_cli("instances", app, "--json").stdout)
    ready = [i for i in instances if i["state"] == "ready"]
    assert ready
    table = mn_cli("instances", app).stdout
    assert ready[0]["id"] in table and ready[0]["instance_type"] in table
