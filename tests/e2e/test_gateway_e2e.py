"""A service's stable endpoint at the local cloud's gateway: one URL through redeploys, no
failed request while versions change, a crash-looping version never taking traffic, and
clear answers when there is no such service or no ready replica. Real processes."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

import multinode as mn
from multinode._client import get_client
from multinode.errors import ServiceNotReadyError
from tests.support.procs import wait_until

pytestmark = pytest.mark.e2e

# The shape users write: a module-level FastAPI app served by the service.
APP = """
import os

import uvicorn
from fastapi import FastAPI, Request

import multinode as mn

VERSION = {version!r}
if VERSION == "broken" and os.environ.get("MN_INSTANCE_ID"):  # on its VM only
    raise RuntimeError("this version cannot start")
app = FastAPI()


@app.get("/hello")
def hello():
    return {{"version": VERSION}}


@app.post("/echo")
async def echo(request: Request):
    return {{"version": VERSION, "size": len(await request.body())}}


@mn.service(port=80, cpu=0.5)
def web():
    uvicorn.run(app, host="0.0.0.0", port=int(os.environ.get("PORT", 80)), log_level="warning")
"""


def endpoint(app: str) -> str:
    [found] = {s.endpoint for s in get_client().list_services(app=app)}
    assert found is not None
    return found


def test_one_url_serves_three_redeploys_and_a_crash_loop_without_a_failed_request(
    local_cloud, write_app, app_name
) -> None:
    v1 = mn.deploy(write_app(APP.format(version="v1"), name="gwapp"), name=app_name)
    web = mn.get_service(app_name, "web")
    web.wait_ready(version=v1.version, timeout=120)
    url = endpoint(app_name)
    assert url.endswith(f"/{app_name}/web/")
    wait_until(lambda: _get(url) == "v1", timeout=10, what="the gateway to route to v1")

    seen: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        # One keep-alive client pinned to the endpoint, as a browser or webhook would be.
        deadline = time.monotonic() + 600
        with httpx.Client(timeout=10) as client:
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    answer = client.get(url + "hello")
                    answer.raise_for_status()
                    seen.append(answer.json()["version"])
                    posted = client.post(url + "echo", content=b"x" * 1000)
                    posted.raise_for_status()
                    assert posted.json()["size"] == 1000
                except Exception as exc:  # every failure counts
                    failures.append(repr(exc))

    client = threading.Thread(target=hammer)
    client.start()
    try:
        for version in ("v2", "v3", "v4"):
            info = mn.deploy(write_app(APP.format(version=version), name="gwapp"), name=app_name)
            web.wait_ready(version=info.version, timeout=120)
            wait_until(lambda v=version: seen[-1:] == [v], timeout=30, what=f"{version} serving")
            wait_until(
                lambda v=info.version: all(r.version == v for r in web.replicas()),
                timeout=60,
                what="the old version to stop",
            )
        broken = mn.deploy(write_app(APP.format(version="broken"), name="gwapp"), name=app_name)
        with pytest.raises(ServiceNotReadyError):
            web.wait_ready(version=broken.version, timeout=60)
        served = len(seen)
        wait_until(lambda: len(seen) > served + 50, timeout=30, what="requests after the crash")
    finally:
        stop.set()
        client.join(30)
    assert failures == []
    assert endpoint(app_name) == url  # the same address all along
    order = [v for i, v in enumerate(seen) if i == 0 or seen[i - 1] != v]
    assert order == ["v1", "v2", "v3", "v4"]  # each version in turn, never back
    assert seen[-1] == "v4"  # the crash-looping version never took traffic
    get_client().undeploy(app_name)


def test_the_gateway_answers_clearly_without_a_service_or_a_ready_replica(
    local_cloud, write_app, app_name
) -> None:
    gateway = local_cloud["gateway"]
    answer = httpx.get(f"{gateway}/{app_name}/web/hello", timeout=10)
    assert answer.status_code == 404 and "no service" in answer.json()["message"]
    info = mn.deploy(write_app(APP.format(version="broken"), name="gwapp"), name=app_name)
    url = f"{gateway}/{app_name}/web/hello"
    wait_until(
        lambda: httpx.get(url, timeout=10).status_code == 503,
        timeout=30,
        what="the gateway to know the service",
    )
    answer = httpx.get(url, timeout=10)
    assert answer.headers["retry-after"] == "1" and "no ready replica" in answer.text
    assert info.version == 1
    get_client().undeploy(app_name)


def _get(url: str) -> str | None:
    try:
        return httpx.get(url + "hello", timeout=5).json()["version"]
    except (httpx.HTTPError, ValueError, KeyError):
        return None
