"""Schedules over HTTP on a real server: the deploy-time check (422), listing with a
preview, trigger, pause and resume, and the scheduler loop firing on the real clock."""

from __future__ import annotations

import base64
import hashlib
import json
import platform
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from multinode_controlplane.settings import ServerSettings
from tests.controlplane.schedule_helpers import cron_rule, interval_rule
from tests.controlplane.test_api import KEY, Server
from tests.support.procs import wait_until

NO_ARGS = base64.b64encode(b"pickled-((), {})").decode()


@pytest.fixture
def server(database_url: str) -> Iterator[Server]:
    settings = ServerSettings(
        database_url=database_url, compute="none", api_key=KEY, min_schedule_interval_s=1
    )
    with Server(database_url, settings=settings) as s:
        yield s


def deploy(client: httpx.Client, app: str, *schedules: dict[str, Any]) -> httpx.Response:
    blob = f"pickled function of {app}".encode()
    sha = hashlib.sha256(blob).hexdigest()
    client.put(f"/blobs/{sha}", content=blob)
    return client.post(
        f"/apps/{app}/deployments",
        json={
            "functions": [
                {"name": name, "spec": {"cpu": 0.25}, "blob_hash": sha}
                for name in ("task", "crunch")
            ],
            "python_version": platform.python_version(),
            "cloudpickle_version": "3.1.2",
            "schedules": list(schedules),
        },
    )


def entry(rule: dict[str, Any], function: str = "task", **policy: Any) -> dict[str, Any]:
    return {"function": function, "rule": rule, "input": NO_ARGS, **policy}


@pytest.mark.parametrize(
    ("schedule", "field", "reason"),
    [
        (entry(cron_rule("*/5 * * * *")), "cron", "too_frequent"),
        (entry({**cron_rule("0 * * * *"), "expression": "0,1 * * * *"}), "cron", "too_frequent"),
        (entry({**cron_rule("0 0 * * *"), "expression": "0 0 31 2 *"}), "cron", None),
        (entry({**cron_rule("0 0 * * *"), "expression": "CRON_TZ=UTC 0 0 * * *"}), "cron", None),
        (entry({**cron_rule("0 0 * * *"), "expression": "61 0 * * *"}), "cron", None),
        (entry({**cron_rule("0 0 * * *"), "timezone": "Mars/Olympus"}), "timezone", None),
        (entry({**interval_rule(3600), "expression": "0 * * * *"}), "expression", None),
        (entry(interval_rule(600)), "interval", "too_frequent"),
        (entry({**interval_rule(3600), "interval_seconds": "1h"}), "schedule", "malformed_json"),
        (entry(interval_rule(3600), function="nope"), "function", "unknown_function"),
    ],
)
def test_a_bad_schedule_is_refused_with_422_naming_the_field(
    server: Server, schedule: dict[str, Any], field: str, reason: str | None
) -> None:
    client = server.client()
    ctx = server.app.state.ctx  # back to the default minimum of 15 minutes
    ctx.settings = ctx.settings.model_copy(update={"min_schedule_interval_s": 900})
    reply = deploy(client, "demo", schedule)

    assert reply.status_code == 422, reply.text
    body = reply.json()
    assert body["code"] == "invalid" and body["details"]["field"] == field
    if reason:
        assert body["details"]["reason"] == reason
    assert client.get("/apps").json() == []  # nothing was deployed


def test_schedules_list_preview_trigger_pause_resume(server: Server) -> None:
    client = server.client()
    rule = cron_rule("0 23 * * 1-5", "Europe/London")
    assert deploy(client, "demo", entry(rule)).status_code == 200

    [listed] = client.get("/apps/demo/schedules").json()
    preview = client.get(
        "/apps/demo/schedules", params={"from": "2025-03-28T00:00:00", "count": 3}
    ).json()[0]
    started = client.post("/apps/demo/schedules/task/trigger").json()
    paused = client.post("/apps/demo/schedules/task/pause").json()
    resumed = client.post("/apps/demo/schedules/resume").json()
    missing = client.post("/apps/demo/schedules/crunch/trigger")

    assert listed["status"] == "active" and len(listed["next_fires"]) == 3
    # Friday 23:00 GMT, then Monday and Tuesday 23:00 BST (clocks went forward on Sunday).
    assert preview["next_fires"] == [
        "2025-03-28T23:00:00Z",
        "2025-03-31T22:00:00Z",
        "2025-04-01T22:00:00Z",
    ]
    call = client.get(f"/calls/{started['call_id']}").json()
    assert call["function"] == "task" and call["status"] == "queued"
    assert paused[0]["status"] == "paused" and resumed[0]["status"] == "active"
    assert missing.status_code == 404 and missing.json()["details"]["schedules"] == ["task"]


def test_the_scheduler_loop_fires_on_the_real_clock_without_polling(server: Server) -> None:
    client = server.client()
    now = time.time()
    # Every 2 s; the deploy wakes the loop, which then sleeps until each due time.
    assert (
        deploy(client, "demo", entry(interval_rule(2, reference=now), overlap="allow")).status_code
        == 200
    )

    def dispatched() -> list[dict[str, Any]]:
        fires = client.get("/apps/demo/schedules/task/fires").json()
        return [f for f in fires if f["status"] == "dispatched"]

    wait_until(lambda: len(dispatched()) >= 2, timeout=15, what="two fires")
    fires = dispatched()
    calls = {c["id"] for c in client.get("/calls", params={"app": "demo"}).json()}
    assert {f["call_id"] for f in fires} <= calls
    for fire in fires:
        due = _ts(fire["fire_time"])
        assert 0 <= _ts(fire["dispatched_at"]) - due < 0.5  # on time, not on a polling tick


def _ts(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize(
    "rule",
    [
        {**interval_rule(3600), "interval_seconds": float("inf")},
        {**interval_rule(3600), "interval_seconds": float("nan")},
        {**interval_rule(3600), "interval_seconds": 1e300},
        {**interval_rule(3600), "fold": 7},
        {**interval_rule(3600), "reference_time": "not a time"},
        {**cron_rule("0 * * * *"), "expression": "0 */" + "9" * 5000 + " * * *"},
        {**cron_rule("0 * * * *"), "timezone": ["UTC"]},
    ],
)
def test_crafted_rules_answer_422_and_the_connection_serves_the_next_request(
    server: Server, rule: dict[str, Any]
) -> None:
    client = server.client()
    blob = b"pickled function of demo"
    sha = hashlib.sha256(blob).hexdigest()
    client.put(f"/blobs/{sha}", content=blob)
    body = {
        "functions": [{"name": "task", "spec": {"cpu": 0.25}, "blob_hash": sha}],
        "python_version": platform.python_version(),
        "cloudpickle_version": "3.1.2",
        "schedules": [entry(rule)],
    }
    # Infinity and NaN as Python's JSON writes them: what a crafted client can send.
    reply = client.post(
        "/apps/demo/deployments",
        content=json.dumps(body, allow_nan=True),
        headers={"Content-Type": "application/json"},
    )
    assert reply.status_code == 422, reply.text
    assert reply.json()["code"] == "invalid"
    assert client.get("/apps").status_code == 200  # the same keep-alive connection
