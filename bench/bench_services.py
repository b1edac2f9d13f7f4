"""Service benchmark on the local cloud: requests per second through a deployed service
next to the same FastAPI app run directly under uvicorn, and failed requests across a
redeploy under a steady request stream.

Starts its own local cloud on free ports under a temporary MN_HOME, and stops it.

    .venv/bin/python bench/bench_services.py [--seconds 10] [--connections 16] [--json out.json]

Figures (issue targets): service throughput >= 90% of direct; zero failed requests
during a redeploy.
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

from _common import free_port

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


async def _load(url: str, seconds: float, connections: int) -> tuple[int, int]:
    """Keep-alive GETs on ``connections`` connections for ``seconds``; (ok, failed)."""
    parts = urlparse(url)
    request = (f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.hostname}\r\n\r\n").encode()
    deadline = time.monotonic() + seconds
    counts = [0, 0]

    async def one() -> None:
        reader = writer = None
        while time.monotonic() < deadline:
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
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
            except Exception:
                counts[1] += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    await asyncio.gather(*(one() for _ in range(connections)))
    return counts[0], counts[1]


def load(url: str, seconds: float, connections: int) -> tuple[float, int]:
    ok, failed = asyncio.run(_load(url, seconds, connections))
    return ok / seconds, failed


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
        use_existing_aws=False,
    )
    folder = home / "app"
    folder.mkdir()
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
        wait_answering(direct_url + "/hello")
        wait_answering(service_url + "/hello")
        load(direct_url + "/hello", 1.0, args.connections)  # warm both
        load(service_url + "/hello", 1.0, args.connections)
        direct_rps, service_rps, failed = [], [], 0
        for _ in range(args.rounds):
            rps, bad = load(direct_url + "/hello", args.seconds, args.connections)
            direct_rps.append(rps)
            failed += bad
            rps, bad = load(service_url + "/hello", args.seconds, args.connections)
            service_rps.append(rps)
            failed += bad
        figures["direct_rps"] = max(direct_rps)
        figures["service_rps"] = max(service_rps)
        figures["ratio"] = figures["service_rps"] / figures["direct_rps"]
        figures["failed_during_load"] = failed
        figures["service_url"] = service_url

        # Redeploy under a steady stream that follows the service's URLs.
        stop = threading.Event()
        stream = {"ok": 0, "failed": 0, "versions": []}

        def client() -> None:
            url = service.urls()[0]
            last_lookup = time.monotonic()
            while not stop.is_set():
                try:
                    with urllib.request.urlopen(url + "/hello", timeout=5) as r:
                        version = json.loads(r.read())["version"]
                    stream["ok"] += 1
                    if not stream["versions"] or stream["versions"][-1] != version:
                        stream["versions"].append(version)
                except Exception:
                    stream["failed"] += 1
                if time.monotonic() - last_lookup > 0.5:  # re-resolve twice a second
                    url = service.urls()[0]
                    last_lookup = time.monotonic()

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
    print(f"direct uvicorn:        {figures['direct_rps']:8.0f} req/s")
    print(
        f"through the service:   {figures['service_rps']:8.0f} req/s  "
        f"({figures['ratio']:.0%} of direct; target >= 90%) at {figures['service_url']}"
    )
    print(
        f"redeploy:              {figures['redeploy_failed']} failed of "
        f"{figures['redeploy_requests']} requests (target 0); switch took "
        f"{figures['redeploy_s']:.1f}s; versions seen {figures['redeploy_versions_seen']}"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
