"""What the VM runner's loopback relay costs: the same probes run from the host and from
inside a VM's network namespace, where 127.0.0.1:<port> is relayed to the host.

Starts its own local cloud (emulator, control plane) on free ports under a temporary
MN_HOME for the control plane to probe, a bulk-data server, and its own VM runner in
namespaces mode (needs root) relaying both ports, polling EC2 every 0.1 s as `mn up`'s
does. Each probe runs once on the host and once in a fresh VM; the relay's CPU time is
read from its thread's /proc entry.

    .venv/bin/python bench/bench_relay.py [--requests 2000] [--connections 500] [--mib 512]

Probes: sequential GET /v1/health on one keep-alive connection; the same with a new
connection per request; one bulk TCP download.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import free_port

PROBE = r"""
import http.client, json, os, socket, sys, time

def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))]

def figures(lat):
    return {"p50_ms": pct(lat, .5) * 1e3, "p95_ms": pct(lat, .95) * 1e3,
            "p99_ms": pct(lat, .99) * 1e3, "per_s": len(lat) / sum(lat), "n": len(lat)}

phase, port, count, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
if phase == "keepalive":
    conn = http.client.HTTPConnection("127.0.0.1", port)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    lat = []
    for _ in range(count):
        t = time.perf_counter()
        conn.request("GET", "/v1/health")
        conn.getresponse().read()
        lat.append(time.perf_counter() - t)
    conn.close()
    result = figures(lat)
elif phase == "new_connection":
    lat = []
    for _ in range(count):
        t = time.perf_counter()
        c = http.client.HTTPConnection("127.0.0.1", port)
        c.request("GET", "/v1/health", headers={"Connection": "close"})
        c.getresponse().read()
        c.close()
        lat.append(time.perf_counter() - t)
    result = figures(lat)
else:
    t = time.perf_counter()
    got = 0
    buf = bytearray(1 << 20)
    with socket.create_connection(("127.0.0.1", port)) as s:
        while n := s.recv_into(buf):
            got += n
    result = {"mib": got / 2**20, "mib_per_s": got / 2**20 / (time.perf_counter() - t)}
open(out + ".tmp", "w").write(json.dumps(result))
os.rename(out + ".tmp", out)
"""

BULK_SERVER = r"""
import socket, sys
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
chunk = bytes(1 << 20)
while True:
    conn, _ = listener.accept()
    with conn:
        for _ in range(int(sys.argv[1])):
            conn.sendall(chunk)
"""


def thread_cpu_s(native_id: int) -> float:
    """User + system CPU time of one thread of this process."""
    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="keep-alive GETs")
    parser.add_argument("--connections", type=int, default=500, help="GETs on new connections")
    parser.add_argument("--mib", type=int, default=512, help="MiB in the bulk download")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("the relay exists only for VMs in network namespaces: run as root", file=sys.stderr)
        return 1

    from multinode import _localcloud
    from multinode_provisioner.aws import EC2Compute, make_ec2_client
    from multinode_provisioner.compute import LaunchRequest
    from multinode_provisioner.settings import LOCAL_AMI, AwsSettings
    from multinode_provisioner.vmrunner import VMRunner

    tmp = Path(tempfile.mkdtemp(prefix="mn-bench-relay-"))
    probe = tmp / "probe.py"
    probe.write_text(PROBE)
    config = _localcloud.LocalCloudConfig(
        home=tmp / "home",
        aws_port=free_port(),
        control_plane_port=free_port(),
        gateway_port=free_port(),
        use_existing_aws=False,
    )
    cp = config.control_plane_port
    state = _localcloud.up(config, echo=lambda _m: None)
    bulk = subprocess.Popen(
        [sys.executable, "-c", BULK_SERVER, str(args.mib)], stdout=subprocess.PIPE, text=True
    )
    bulk_port = int(bulk.stdout.readline())  # type: ignore[union-attr]
    phases = [
        ("keepalive", cp, args.requests),
        ("new_connection", cp, args.connections),
        ("bulk", bulk_port, 0),
    ]
    host: dict[str, dict] = {}
    vm: dict[str, dict] = {}
    try:
        for phase, port, count in phases:
            # Warm the server up, then measure from the host.
            subprocess.run([sys.executable, str(probe), phase, str(port), "200", str(tmp / "w")])
            out = tmp / f"host-{phase}.json"
            subprocess.run([sys.executable, str(probe), phase, str(port), str(count), str(out)])
            host[phase] = json.loads(out.read_text())

        os.environ.update(_localcloud._LOCAL_AWS_ENV)
        cluster = "bench-relay"  # not the local cloud's own: its runner leaves these VMs alone
        ec2 = make_ec2_client(region="us-east-1", endpoint_url=state["aws_endpoint"])
        settings = AwsSettings(
            ami_id=LOCAL_AMI,
            region="us-east-1",
            endpoint_url=state["aws_endpoint"],
            cluster=cluster,
        )
        runner = VMRunner(
            ec2,
            cluster=cluster,
            state_dir=tmp / "vms",
            isolation="namespaces",
            relay_ports=[cp, bulk_port],
        )
        summary = runner.isolation.summary
        relay_thread = runner.isolation.relay._thread.native_id  # type: ignore[attr-defined]
        stop = threading.Event()
        loop = threading.Thread(target=runner.run_forever, args=(stop,))
        loop.start()
        try:
            for phase, port, count in phases:
                out = tmp / f"vm-{phase}.json"
                command = f'"$MN_PYTHON" {probe} {phase} {port} {count} {out}'
                EC2Compute(settings).launch(
                    LaunchRequest(
                        instance_type="c6a.large",
                        launch_token=f"bench-relay-{phase}",
                        user_data=f"#!/bin/bash\nset -e\n{command}\n",
                    )
                )
                cpu = thread_cpu_s(relay_thread)
                deadline = time.monotonic() + 600
                while not out.exists():
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"the {phase} probe never finished: {tmp / 'vms'}")
                    time.sleep(0.05)
                relay_cpu = thread_cpu_s(relay_thread) - cpu
                vm[phase] = {**json.loads(out.read_text()), "relay_cpu_s": relay_cpu}
        finally:
            stop.set()
            loop.join()
    finally:
        bulk.kill()
        bulk.wait()
        _localcloud.down(config, echo=lambda _m: None)

    print(f"VM runner: {summary}; load average {os.getloadavg()[0]:.1f}")
    print(f"{'figure':<30} {'host':>10} {'in a VM':>10} {'cost':>10}")
    for phase in ("keepalive", "new_connection"):
        for key in ("p50_ms", "p95_ms", "p99_ms", "per_s"):
            h, v = host[phase][key], vm[phase][key]
            print(f"{phase + ' ' + key:<30} {h:>10.3f} {v:>10.3f} {v - h:>+10.3f}")
        per_request_us = vm[phase]["relay_cpu_s"] / vm[phase]["n"] * 1e6
        print(f"{phase + ' relay CPU µs/request':<30} {'':>10} {per_request_us:>10.1f}")
    h, v = host["bulk"]["mib_per_s"], vm["bulk"]["mib_per_s"]
    print(f"{'bulk MiB/s':<30} {h:>10.1f} {v:>10.1f} {v - h:>+10.1f}")
    per_gib = vm["bulk"]["relay_cpu_s"] / (vm["bulk"]["mib"] / 1024)
    print(f"{'bulk relay CPU s/GiB':<30} {'':>10} {per_gib:>10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
