"""Services end to end: deploy, readiness and URL, restarts, crash loops, a port that never
answers, a redeploy under a steady request stream, undeploy. Real processes throughout."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest

import multinode as mn
from multinode._client import get_client
from multinode.wire import InstanceState, ServiceState
from tests.support.procs import wait_until

pytestmark = pytest.mark.e2e

# A stdlib HTTP service: answers GET / with its version; /square?x= calls a function;
# /dict reads a shared dict; /exit makes the process exit (to watch it restart).
SERVICE_APP = """
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import multinode as mn

VERSION = {version!r}


@mn.function(cpu=0.25, cooldown=120)
def square(x):
    return x * x


@mn.service(port=80, cpu=0.5)
def web():
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            url = urlparse(self.path)
            query = parse_qs(url.query)
            if url.path == "/exit":
                os._exit(3)
            if url.path == "/square":
                body = {{"square": square.call(int(query["x"][0]))}}
            elif url.path == "/dict":
                body = {{"value": mn.get_dict(name="svc").get("greeting")}}
            else:
                body = {{"version": VERSION, "pid": os.getpid()}}
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    print("serving on", os.environ["PORT"], flush=True)
    ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()
"""

CRASHING_APP = """
import multinode as mn


@mn.service(port=80, cpu=0.25)
def broken():
    print("loading settings from /etc/nowhere.toml", flush=True)
    raise FileNotFoundError("/etc/nowhere.toml")
"""

SILENT_APP = """
import time

import multinode as mn


@mn.service(port=80, cpu=0.25)
def silent():
    print("warming a cache that never finishes", flush=True)
    time.sleep(3600)
"""


def get_json(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return json.loads(answer.read())


def test_service_answers_calls_functions_reads_dicts_and_restarts(local_cloud, write_app, app_name):
    path = write_app(SERVICE_APP.format(version="v1"))
    info = mn.deploy(path, name=app_name)
    web = mn.get_service(app_name, "web")
    urls = web.wait_ready(version=info.version, timeout=90)
    assert len(urls) == 1 and urls[0].startswith("http://")
    first = get_json(urls[0] + "/")
    assert first["version"] == "v1"
    # The service reaches the app's functions and dicts like any code of the app.
    assert get_json(urls[0] + "/square?x=12", timeout=60) == {"square": 144}
    mn.get_dict(name="svc", app=app_name)["greeting"] = "hello"
    assert get_json(urls[0] + "/dict", timeout=30) == {"value": "hello"}

    listed = get_client().list_services(app=app_name)
    assert [(s.name, s.version, s.state, s.url) for s in listed] == [
        ("web", info.version, ServiceState.ready, urls[0])
    ]
    # A process that exits is restarted in place, and the restart is counted.
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        get_json(urls[0] + "/exit")
    wait_until(
        lambda: (r := web.replicas()[0]).restarts == 1 and r.state == ServiceState.ready,
        timeout=60,
        what="the service restarted and answering again",
    )
    again = web.urls()[0]
    assert get_json(again + "/")["pid"] != first["pid"]
    replica = web.replicas()[0]
    assert replica.last_exit and "code 3" in replica.last_exit
    # It ran on an instance of its own the whole time.
    instances = [i for i in mn.list_instances(app_name) if i.state == InstanceState.ready]
    assert replica.instance_id in {i.id for i in instances}

    get_client().undeploy(app_name)
    wait_until(
        lambda: not get_client().list_services(app=app_name),
        timeout=60,
        what="the undeployed service to stop",
    )
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        get_json(again + "/", timeout=2)
    wait_until(
        lambda: all(
            i.state in (InstanceState.terminated, InstanceState.terminating)
            for i in mn.list_instances(app_name)
        ),
        timeout=60,
        what="the service's instance to end",
    )


def test_a_crash_looping_service_is_reported_with_its_logs_and_burns_no_instances(
    local_cloud, write_app, app_name
):
    info = mn.deploy(write_app(CRASHING_APP), name=app_name)
    broken = mn.get_service(app_name, "broken")
    with pytest.raises(mn.ServiceNotReadyError) as caught:
        broken.wait_ready(version=info.version, timeout=90)
    message = str(caught.value)
    assert "keeps crashing" in message
    assert "loading settings from /etc/nowhere.toml" in message
    assert "FileNotFoundError" in message
    replica = broken.replicas()[0]
    assert replica.crash_looping and replica.restarts >= 3
    assert replica.state in (ServiceState.crashed, ServiceState.starting)
    # Restarts happen on the one instance: no new instance per crash.
    assert len(mn.list_instances(app_name)) == 1
    get_client().undeploy(app_name)


def test_a_port_that_never_answers_is_reported_after_the_timeout(local_cloud, write_app, app_name):
    info = mn.deploy(write_app(SILENT_APP), name=app_name)
    silent = mn.get_service(app_name, "silent")
    wait_until(
        lambda: [r.state for r in silent.replicas()] == [ServiceState.starting],
        timeout=60,
        what="the service process to start",
    )
    with pytest.raises(mn.ServiceNotReadyError) as caught:
        silent.wait_ready(version=info.version, timeout=2)
    assert "did not answer on its port within 2s" in str(caught.value)
    assert "warming a cache that never finishes" in str(caught.value)
    get_client().undeploy(app_name)


def test_redeploy_switches_versions_without_a_failed_request(local_cloud, write_app, app_name):
    v1 = mn.deploy(write_app(SERVICE_APP.format(version="v1")), name=app_name)
    web = mn.get_service(app_name, "web")
    web.wait_ready(version=v1.version, timeout=90)
    listed_v1 = web.replicas()

    # A steady stream of requests, following the service's address as a client would.
    seen: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def stream() -> None:
        url = web.urls()[0]
        while not stop.is_set():
            try:
                seen.append(get_json(url + "/")["version"])
            except Exception as exc:  # noqa: BLE001 - every failure counts
                failures.append(f"{url}: {exc!r}")
            url = web.urls()[0]

    client = threading.Thread(target=stream)
    client.start()
    try:
        v2 = mn.deploy(write_app(SERVICE_APP.format(version="v2")), name=app_name)
        web.wait_ready(version=v2.version, timeout=90)
        wait_until(
            lambda: all(r.version == v2.version for r in web.replicas()),
            timeout=60,
            what="the old version to stop",
        )
        wait_until(lambda: seen[-1:] == ["v2"], timeout=10, what="requests served by v2")
    finally:
        stop.set()
        client.join(30)
    replicas = [(r.version, r.url, r.state.value) for r in web.replicas() + listed_v1]
    assert failures == [], f"replicas (version, url, state): {replicas}"
    assert "v1" in seen and seen[-1] == "v2"
    # Once v2 answered, nothing went back to v1.
    assert "v1" not in seen[seen.index("v2") :]
    get_client().undeploy(app_name)


def test_mn_deploy_prints_the_url_and_mn_services_lists_it(local_cloud, write_app, app_name):
    from tests.e2e.test_cli_e2e import mn as run_mn

    path = write_app(SERVICE_APP.format(version="cli"))
    out = run_mn("deploy", str(path), "--name", app_name).stdout
    listed = json.loads(run_mn("services", app_name, "--json").stdout)
    assert [(s["name"], s["state"]) for s in listed] == [("web", "ready")]
    url = listed[0]["url"]
    assert url in out  # mn deploy waited for the port and printed where it answers
    assert get_json(url + "/")["version"] == "cli"
    table = run_mn("services", app_name).stdout
    assert "web" in table and url in table and "ready" in table

    broken = write_app(CRASHING_APP)
    failed = run_mn(
        "deploy", str(broken), "--name", app_name + "-b", "--timeout", "60", check=False
    )
    assert failed.returncode == 1
    assert "keeps crashing" in failed.stderr and "/etc/nowhere.toml" in failed.stderr
    run_mn("undeploy", app_name)
    run_mn("undeploy", app_name + "-b")
