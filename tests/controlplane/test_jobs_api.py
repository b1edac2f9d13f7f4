"""The jobs API over real HTTP: bodies, error codes and statuses, progress through
``/agent/report``, and an agent reading its own app's jobs only."""

from __future__ import annotations

import base64
import hashlib
import platform
from collections.abc import Iterator

import httpx
import pytest

from tests.controlplane.test_api import Server


@pytest.fixture
def server(database_url: str) -> Iterator[Server]:
    with Server(database_url) as s:
        yield s


def deploy_job(client: httpx.Client, app: str) -> None:
    blob = f"pickled job of {app}".encode()
    sha = hashlib.sha256(blob).hexdigest()
    client.put(f"/blobs/{sha}", content=blob)
    reply = client.post(
        f"/apps/{app}/deployments",
        json={
            "functions": [
                {"name": "process", "spec": {"kind": "job", "cpu": 1}, "blob_hash": sha},
                {"name": "f", "spec": {"cpu": 1}, "blob_hash": sha},
            ],
            "python_version": platform.python_version(),
            "cloudpickle_version": "3.1.2",
        },
    )
    assert reply.status_code == 200, reply.text


def start(client: httpx.Client, app: str, function: str = "process") -> str:
    reply = client.post("/calls", json={"app": app, "function": function, "inputs": ["aQ=="]})
    assert reply.status_code == 200, reply.text
    return reply.json()["call_ids"][0]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_a_job_read_listed_given_progress_and_cancelled(server: Server) -> None:
    client = server.client()
    deploy_job(client, "demo")
    job_id = start(client, "demo")
    call_id = start(client, "demo", "f")

    pending = client.get(f"/jobs/{job_id}").json()
    assert (pending["status"], pending["function"], pending["result"]) == (
        "pending",
        "process",
        None,
    )
    assert [j["id"] for j in client.get("/jobs", params={"app": "demo"}).json()] == [job_id]

    _, agent = server.agent("demo")
    [a] = [
        x
        for x in agent.post("/agent/poll", json={"wait": 0}).json()["assignments"]
        if x["call_id"] == job_id
    ]
    assert a["kind"] == "job"
    update = {"attempt_id": a["attempt_id"], "fence": a["fence"], "seq": 1, "value": b64(b"step 1")}
    assert agent.post("/agent/report", json={"progress": [update]}).status_code == 200
    running = agent.get(f"/jobs/{job_id}").json()  # the job's own app may read it
    assert running["status"] == "running" and base64.b64decode(running["result"]) == b"step 1"

    cancelling = client.post(f"/jobs/{job_id}/cancel").json()
    assert cancelling["status"] == "cancelling"
    listed = client.get("/jobs", params={"status": "cancelling"}).json()
    assert [j["id"] for j in listed] == [job_id]

    not_a_job = client.get(f"/jobs/{call_id}")
    assert not_a_job.status_code == 422 and not_a_job.json()["code"] == "invalid"
    assert "mn.get_call" in not_a_job.json()["message"]


def test_unknown_jobs_and_bad_filters_answer_with_error_bodies(server: Server) -> None:
    client = server.client()
    missing = client.get("/jobs/c-nope")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    assert client.post("/jobs/c-nope/cancel").status_code == 404
    bad = client.get("/jobs", params={"status": "exploded"})
    assert bad.status_code == 422 and bad.json()["code"] == "invalid"
    unknown_app = client.get("/jobs", params={"app": "nope"})
    assert unknown_app.status_code == 404 and unknown_app.json()["code"] == "not_found"


def test_an_agent_cannot_read_another_apps_jobs(server: Server) -> None:
    client = server.client()
    deploy_job(client, "alpha")
    deploy_job(client, "beta")
    beta_job = start(client, "beta")
    _, agent = server.agent("alpha")
    assert agent.get(f"/jobs/{beta_job}").status_code == 404
    assert agent.get("/jobs").json() == []
