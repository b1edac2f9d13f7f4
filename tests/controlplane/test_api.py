"""The HTTP API over a real server (uvicorn on a free port, compute "none")."""

from __future__ import annotations

import base64
import hashlib
import platform
import threading
import time
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest
import uvicorn
from sqlalchemy import update

from multinode_controlplane import models as m
from multinode_controlplane.app import create_app
from multinode_controlplane.services.auth import Principal
from multinode_controlplane.settings import ServerSettings
from multinode_provisioner.compute import Compute
from tests.controlplane.helpers import new_agent
from tests.support.procs import free_port, wait_until

KEY = "mnk_api-test-key"


class Server:
    def __init__(
        self,
        database_url: str,
        *,
        settings: ServerSettings | None = None,
        compute: Compute | None = None,
    ) -> None:
        port = free_port()
        settings = settings or ServerSettings(
            database_url=database_url, compute="none", api_key=KEY
        )
        self.app = create_app(settings.model_copy(update={"port": port}), compute=compute)
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        wait_until(lambda: self.server.started, timeout=10, what="the control plane to start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def client(self, token: str | None = KEY) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=f"{self.url}/v1", headers=headers, timeout=60)

    def agent(self, app: str) -> tuple[Principal, httpx.Client]:
        """An instance of ``app`` registered through the protocol, and a client with its token."""
        owner = Principal(kind="key", owner="default")
        principal, token = new_agent(self.app.state.ctx, owner, app=app, vcpus=2)
        return principal, self.client(token)


@pytest.fixture
def server(database_url: str) -> Iterator[Server]:
    with Server(database_url) as s:
        yield s


def deploy_over_http(client: httpx.Client, app: str) -> None:
    blob = f"pickled function of {app}".encode()
    sha = hashlib.sha256(blob).hexdigest()
    assert client.put(f"/blobs/{sha}", content=blob).status_code in (200, 201)
    assert client.head(f"/blobs/{sha}").status_code == 200
    reply = client.post(
        f"/apps/{app}/deployments",
        json={
            "functions": [{"name": "f", "spec": {"cpu": 1}, "blob_hash": sha}],
            "python_version": platform.python_version(),
            "cloudpickle_version": "3.1.2",
        },
    )
    assert reply.status_code == 200, reply.text


def create(client: httpx.Client, app: str, n: int) -> list[str]:
    inputs = [base64.b64encode(b"input %d" % i).decode() for i in range(n)]
    reply = client.post("/calls", json={"app": app, "function": "f", "inputs": inputs})
    assert reply.status_code == 200, reply.text
    return reply.json()["call_ids"]


def test_health_needs_no_credentials(server: Server) -> None:
    reply = server.client(None).get("/health")
    assert reply.status_code == 200 and reply.json()["status"] == "ok"


@pytest.mark.parametrize("token", [None, "mnk_wrong", "garbage"])
def test_requests_without_valid_credentials_get_401_with_an_error_body(
    server: Server, token: str | None
) -> None:
    reply = server.client(token).get("/apps")
    assert reply.status_code == 401
    assert reply.json()["code"] == "unauthorized" and reply.json()["message"]


def test_validation_errors_have_the_error_shape(server: Server) -> None:
    reply = server.client().post("/calls", json={"app": "a", "function": "f", "inputs": []})
    assert reply.status_code == 422
    body = reply.json()
    assert body["code"] == "invalid" and "inputs" in body["message"]
    assert body["details"]["errors"][0]["loc"] == ["body", "inputs"]


def test_unknown_function_answers_404_listing_the_functions(server: Server) -> None:
    client = server.client()
    deploy_over_http(client, "demo")
    reply = client.post("/calls", json={"app": "demo", "function": "g", "inputs": ["aQ=="]})
    assert reply.status_code == 404 and reply.json()["details"]["functions"] == ["f"]


def test_an_agent_cannot_touch_another_apps_calls(server: Server) -> None:
    client = server.client()
    deploy_over_http(client, "alpha")
    deploy_over_http(client, "beta")
    [beta_call] = create(client, "beta", 1)
    _, agent = server.agent("alpha")
    assert agent.get(f"/calls/{beta_call}").status_code == 404
    reply = agent.post("/calls", json={"app": "beta", "function": "f", "inputs": ["aQ=="]})
    assert reply.status_code == 403 and reply.json()["code"] == "forbidden"
    assert agent.get("/apps").status_code == 403


def test_a_call_end_to_end_with_prompt_long_polls(server: Server) -> None:
    client = server.client()
    deploy_over_http(client, "demo")
    _, agent = server.agent("demo")
    polled: dict = {}

    def agent_poll() -> None:
        start = time.monotonic()
        polled["reply"] = agent.post("/agent/poll", json={"wait": 30})
        polled["elapsed"] = time.monotonic() - start

    poller = threading.Thread(target=agent_poll)
    poller.start()
    [call_id] = create(client, "demo", 1)  # wakes the waiting poll
    poller.join(30)
    assert polled["elapsed"] < 10, "the agent's poll should return as soon as the call exists"
    [assignment] = polled["reply"].json()["assignments"]
    assert base64.b64decode(assignment["input"]) == b"input 0"

    waited: dict = {}

    def outputs() -> None:
        start = time.monotonic()
        waited["reply"] = client.post("/calls/outputs", json={"call_ids": [call_id], "timeout": 30})
        waited["elapsed"] = time.monotonic() - start

    waiter = threading.Thread(target=outputs)
    waiter.start()
    result = {
        "attempt_id": assignment["attempt_id"],
        "fence": assignment["fence"],
        "status": "succeeded",
        "output": base64.b64encode(b"\x80\x05result").decode(),
    }
    log = {
        "attempt_id": assignment["attempt_id"],
        "stream": "stdout",
        "text": "hello",
        "ts": time.time(),
    }
    reply = agent.post("/agent/report", json={"results": [result], "logs": [log]})
    assert reply.status_code == 200 and reply.json()["rejected"] == []
    waiter.join(30)
    assert waited["elapsed"] < 10, "the outputs long-poll should return when the report lands"
    [out] = waited["reply"].json()["outputs"]
    assert out["status"] == "succeeded" and base64.b64decode(out["output"]) == b"\x80\x05result"
    assert client.get(f"/calls/{call_id}").json()["status"] == "succeeded"
    assert [
        x["text"] for x in client.get("/logs", params={"call_id": call_id}).json()["lines"]
    ] == ["hello"]
    assert client.get("/instances").json()[0]["state"] == "ready"


def test_outputs_of_unknown_calls_is_404(server: Server) -> None:
    reply = server.client().post("/calls/outputs", json={"call_ids": ["nope"], "timeout": 0})
    assert reply.status_code == 404 and reply.json()["details"]["unknown"] == ["nope"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_running_server_launches_for_new_calls(database_url: str, aws_endpoint: str) -> None:
    from multinode_provisioner.aws import EC2Compute
    from multinode_provisioner.settings import LOCAL_AMI, AwsSettings

    cluster = f"api-{free_port()}"
    compute = EC2Compute(AwsSettings(ami_id=LOCAL_AMI, endpoint_url=aws_endpoint, cluster=cluster))
    settings = ServerSettings(
        database_url=database_url, compute="aws", api_key=KEY, cluster=cluster
    )
    with Server(database_url, settings=settings, compute=compute) as server:
        client = server.client()
        deploy_over_http(client, "demo")
        create(client, "demo", 1)
        wait_until(lambda: len(compute.list_instances()) == 1, timeout=20, what="a launch")
        [instance] = client.get("/instances").json()
        assert instance["state"] in ("launching", "booting") and instance["launched_for"] == "f"
        client.delete("/apps/demo")
        wait_until(lambda: not compute.list_instances(), timeout=20, what="the termination")


def test_capacity_freed_by_a_report_is_refilled_at_once(server: Server) -> None:
    """A full instance gets its next call as soon as a report frees room: in the report's
    own answer, and never a second time through its waiting poll."""
    client = server.client()
    deploy_over_http(client, "demo")  # cpu=1 on a 2-vCPU instance: two at a time
    _, agent = server.agent("demo")
    ids = create(client, "demo", 3)
    first = agent.post("/agent/poll", json={"wait": 0}).json()["assignments"]
    assert len(first) == 2
    done = {"attempt_id": first[0]["attempt_id"], "fence": first[0]["fence"], "status": "succeeded"}
    answer = agent.post("/agent/report", json={"results": [done]}).json()
    assert answer["rejected"] == []
    assert [a["call_id"] for a in answer["assignments"]] == [ids[2]]
    running = [first[1]["attempt_id"], answer["assignments"][0]["attempt_id"]]
    again = agent.post("/agent/poll", json={"wait": 0, "running": running}).json()
    assert again["assignments"] == [] and again["cancel"] == []


def test_bad_environments_secrets_and_blob_lists_get_structured_errors(server: Server) -> None:
    client = server.client()
    reply = client.post("/environments", json={"python": "3.11", "requirements": ["-r x.txt"]})
    assert reply.status_code == 422 and "is an option" in reply.json()["message"]
    assert client.get("/environments/" + "0" * 64).status_code == 404
    reply = client.put("/secrets/bad name", json={"values": {"A": "1"}})
    assert reply.status_code == 422 and reply.json()["code"] == "invalid"
    assert client.delete("/secrets/nothing").status_code == 404
    reply = client.post("/blobs/missing", json={"hashes": ["not-a-hash"]})
    assert reply.status_code == 422
    sha = hashlib.sha256(b"present").hexdigest()
    client.put(f"/blobs/{sha}", content=b"present")
    absent = hashlib.sha256(b"absent").hexdigest()
    reply = client.post("/blobs/missing", json={"hashes": [sha, absent, absent]})
    assert reply.json() == {"missing": [absent]}
    deploy_over_http(client, "demo")
    _, agent = server.agent("demo")
    assert agent.get("/secrets").status_code == 403  # agents never list secrets


def test_an_unexpected_error_answers_500_and_keeps_the_connection(database_url: str) -> None:
    server = Server(database_url)

    def broken() -> None:
        raise RuntimeError("a bug")

    server.app.add_api_route("/v1/broken", broken)
    with server:
        client = server.client()
        reply = client.get("/broken")
        assert reply.status_code == 500 and reply.json()["code"] == "internal"
        assert client.get("/apps").status_code == 200
        assert client.get("/broken").status_code == 500  # and again, on the same connection


@pytest.mark.parametrize("name", ["team#prod", "a" * 64, "-lead", "sp ace", "ünï"])
def test_the_server_enforces_the_app_naming_rule(server: Server, name: str) -> None:
    client = server.client()
    blob = b"pickled"
    sha = hashlib.sha256(blob).hexdigest()
    client.put(f"/blobs/{sha}", content=blob)
    reply = client.post(
        f"/apps/{quote(name, safe='')}/deployments",
        json={
            "functions": [{"name": "f", "spec": {}, "blob_hash": sha}],
            "python_version": platform.python_version(),
            "cloudpickle_version": "3.1.2",
        },
    )
    assert reply.status_code == 422 and "letters, digits" in reply.json()["message"]
    assert client.get("/apps").json() == []


@pytest.mark.parametrize("state", ["terminating", "terminated", "failed"])
def test_an_agent_token_dies_with_its_instance(server: Server, state: str) -> None:
    client = server.client()
    deploy_over_http(client, "demo")
    principal, agent = server.agent("demo")
    assert agent.get("/apps/demo/functions/f").status_code == 200
    with server.app.state.ctx.db.write() as session:
        session.execute(
            update(m.instances).where(m.instances.c.id == principal.instance_id).values(state=state)
        )
    server.app.state.ctx.auth_cache.clear()  # what 5 s of cache would otherwise keep
    assert agent.get("/apps/demo/functions/f").status_code == 401
    reply = agent.post("/calls", json={"app": "demo", "function": "f", "inputs": ["aQ=="]})
    assert reply.status_code == 401
    assert agent.post("/apps/demo/dict-credentials").status_code == 401
