"""Service benchmark on the local cloud: requests per second and latency through a
deployed service's stable endpoint (the gateway) and through its replica's own address,
next to the same FastAPI app run directly under uvicorn, and failed requests across a
redeploy for a client pinned to the endpoint.

Starts its own local cloud on free ports under a temporary MN_HOME, and stops it.

    .venv/bin/python bench/bench_services.py [--seconds 10] [--connections 16] [--json out.json]

Figures (issue targets): throughput through the gateway >= 90% of direct with <= 2 ms
added p99 for a small JSON response; zero failed requests during a redeploy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from _common import free_port, percentile

APP_SOURCE = """
import os

import multinode as mn

VERSION = {version!r}


def create_app():
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/hello")
    def hello():
        return {{"hello": "world", "version": VERSION}}

    return app


@mn.service(port=80, cpu=2)
def web():
    import uvicorn

    uvicorn.run(create_app(), host="0.0.0.0", port=int(os.environ["PORT"]), log_level="warning",
                access_log=False)
"""

DIRECT = """
import sys
import uvicorn
sys.path.insert(0, {folder!r})
from {module} import create_app
uvicorn.run(create_app(), host="127.0.0.1", port={port}, log_level="warning", access_log=False)
"""


async def _load(url: str, seconds: float, connections: int) -> tuple[int, int, list[float]]:
    """Keep-alive GETs on ``connections`` connections for ``seconds``; (ok, failed, the
    latency of every successful request in seconds)."""
    parts = urlparse(url)
    request = (f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.hostname}\r\n\r\n").encode()
    deadline = time.monotonic() + seconds
    counts = [0, 0]
    latencies: list[float] = []

    async def one() -> None:
        reader = writer = None
        while time.monotonic() < deadline:
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
                sent = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                await reader.readexactly(length)
                if not head.startswith(b"HTTP/1.1 200"):
                    raise ValueError(head[:40])
                counts[0] += 1
                latencies.append(time.perf_counter() - sent)
            except Exception:
                counts[1] += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    await asyncio.gather(*(one() for _ in range(connections)))
    return counts[0], counts[1], latencies


def load(url: str, seconds: float, connections: int) -> tuple[float, int, list[float]]:
    ok, failed, latencies = asyncio.run(_load(url, seconds, connections))
    return ok / seconds, failed, latencies


def wait_answering(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each load run")
    parser.add_argument("--connections", type=int, default=16, help="concurrent connections")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of each side")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="mn-bench-"))
    os.environ["MN_HOME"] = str(home)
    for key in ("MN_URL", "MN_API_KEY"):
        os.environ.pop(key, None)

    import multinode as mn
    from multinode import _localcloud

    config = _localcloud.LocalCloudConfig(
        home=home,
        aws_port=free_port(),
        control_plane_port=free_port(),
        gateway_port=free_port(),
        use_existing_aws=False,
    )
    from multinode._client import get_client

    folder = Path(tempfile.mkdtemp(prefix="mn-bench-app-"))  # MN_HOME is never uploaded
    app_file = folder / "svcbench.py"
    app_file.write_text(textwrap.dedent(APP_SOURCE.format(version="v1")))
    direct_port = free_port()
    _localcloud.up(config, echo=lambda _m: None)
    direct = subprocess.Popen(
        [
            sys.executable,
            "-c",
            DIRECT.format(folder=str(folder), module="svcbench", port=direct_port),
        ]
    )
    figures: dict = {}
    try:
        v1 = mn.deploy(app_file, name="svcbench")
        service = mn.get_service("svcbench", "web")
        [service_url] = service.wait_ready(version=v1.version, timeout=120)
        direct_url = f"http://127.0.0.1:{direct_port}"
        [endpoint] = {s.endpoint for s in get_client().list_services(app="svcbench")}
        gateway_url = endpoint.rstrip("/")
        targets = {"direct": direct_url, "replica": service_url, "gateway": gateway_url}
        for url in targets.values():
            wait_answering(url + "/hello")
            load(url + "/hello", 1.0, args.connections)  # warm every path
        rps: dict[str, list[float]] = {name: [] for name in targets}
        latencies: dict[str, list[float]] = {name: [] for name in targets}
        failed = 0
        for _ in range(args.rounds):  # alternating, so drift hits every side alike
            for name, url in targets.items():
                got, bad, times = load(url + "/hello", args.seconds, args.connections)
                rps[name].append(got)
                latencies[name] += times
                failed += bad
        for name in targets:
            figures[f"{name}_rps"] = max(rps[name])
            figures[f"{name}_p50_ms"] = percentile(latencies[name], 0.5) * 1000
            figures[f"{name}_p99_ms"] = percentile(latencies[name], 0.99) * 1000
        figures["service_rps"] = figures["replica_rps"]
        figures["ratio"] = figures["replica_rps"] / figures["direct_rps"]
        figures["gateway_ratio"] = figures["gateway_rps"] / figures["direct_rps"]
        figures["failed_during_load"] = failed
        figures["service_url"] = service_url
        figures["endpoint"] = endpoint

        # Redeploy under a steady stream that follows the service's URLs.
        stop = threading.Event()
        stream = {"ok": 0, "failed": 0, "versions": []}

        def client() -> None:
            # Pinned to the stable endpoint, as browsers and webhooks are.
            while not stop.is_set():
                try:
                    with urllib.request.urlopen(gateway_url + "/hello", timeout=5) as r:
                        version = json.loads(r.read())["version"]
                    stream["ok"] += 1
                    if not stream["versions"] or stream["versions"][-1] != version:
                        stream["versions"].append(version)
                except Exception:
                    stream["failed"] += 1

        thread = threading.Thread(target=client)
        thread.start()
        time.sleep(1.0)  # a steady stream before the switch
        app_file.write_text(textwrap.dedent(APP_SOURCE.format(version="v2")))
        switch_started = time.monotonic()
        v2 = mn.deploy(app_file, name="svcbench")
        service.wait_ready(version=v2.version, timeout=120)
        while any(r.version != v2.version for r in service.replicas()):
            time.sleep(0.1)
        figures["redeploy_s"] = time.monotonic() - switch_started
        time.sleep(1.0)
        stop.set()
        thread.join(30)
        figures["redeploy_requests"] = stream["ok"] + stream["failed"]
        figures["redeploy_failed"] = stream["failed"]
        figures["redeploy_versions_seen"] = stream["versions"]
    finally:
        direct.terminate()
        direct.wait(10)
        try:
            mn.undeploy("svcbench")
        finally:
            _localcloud.down(config, echo=lambda _m: None)

    figures["machine"] = (
        f"{platform.node()} {os.cpu_count()} cpus, Python {platform.python_version()}"
    )
    for name, label in (
        ("direct", "direct uvicorn:      "),
        ("replica", "the replica's URL:   "),
        ("gateway", "the stable endpoint: "),
    ):
        print(
            f"{label} {figures[name + '_rps']:8.0f} req/s "
            f"({figures[name + '_rps'] / figures['direct_rps']:.0%} of direct), "
            f"p50 {figures[name + '_p50_ms']:.2f} ms, p99 {figures[name + '_p99_ms']:.2f} ms"
        )
    print(f"endpoint {figures['endpoint']}; replica {figures['service_url']}")
    print(
        f"redeploy, endpoint:    {figures['redeploy_failed']} failed of "
        f"{figures['redeploy_requests']} requests (target 0); switch took "
        f"{figures['redeploy_s']:.1f}s; versions seen {figures['redeploy_versions_seen']}"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
