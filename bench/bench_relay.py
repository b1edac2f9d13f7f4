"""What the VM runner's loopback relay costs: the same HTTP and TCP probes run from the host
and from inside a VM's network namespace, where 127.0.0.1:<port> is relayed to the host.

Starts its own local cloud (emulator, control plane) on free ports under a temporary
MN_HOME for the control plane to probe, and its own VM runner in namespaces mode (needs
root) relaying the control plane's port and a bulk-data port served by this script.

    .venv/bin/python bench/bench_relay.py [--requests 2000] [--connections 500] [--mib 256]

Measures: sequential GET /v1/health on one keep-alive connection (latency percentiles,
requests/s), the same with a new connection per request, and one bulk TCP download.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import free_port

PROBE = r"""
import http.client, json, socket, sys, time

def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))]

port, bulk_port, requests, connections, out = sys.argv[1:6]
port, bulk_port, requests, connections = int(port), int(bulk_port), int(requests), int(connections)
result = {}

conn = http.client.HTTPConnection("127.0.0.1", port)
conn.connect()
conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
lat = []
for _ in range(200 + requests):  # the first 200 warm up
    t = time.perf_counter()
    conn.request("GET", "/v1/health")
    conn.getresponse().read()
    lat.append(time.perf_counter() - t)
lat = lat[200:]
result["keepalive"] = {"p50_ms": pct(lat, .5) * 1e3, "p95_ms": pct(lat, .95) * 1e3,
                       "p99_ms": pct(lat, .99) * 1e3, "per_s": len(lat) / sum(lat)}
conn.close()

lat = []
for _ in range(connections):
    t = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port)
    c.request("GET", "/v1/health", headers={"Connection": "close"})
    c.getresponse().read()
    c.close()
    lat.append(time.perf_counter() - t)
result["new_connection"] = {"p50_ms": pct(lat, .5) * 1e3, "p95_ms": pct(lat, .95) * 1e3,
                            "p99_ms": pct(lat, .99) * 1e3, "per_s": len(lat) / sum(lat)}

t = time.perf_counter()
with socket.create_connection(("127.0.0.1", bulk_port)) as s:
    got = 0
    buf = bytearray(1 << 20)
    while n := s.recv_into(buf):
        got += n
result["bulk"] = {"mib": got / 2**20, "mib_per_s": got / 2**20 / (time.perf_counter() - t)}
open(out, "w").write(json.dumps(result))
"""


def serve_bulk(listener: socket.socket, mib: int) -> None:
    """Send ``mib`` MiB of zeros to every connection, then close it."""
    chunk = bytes(1 << 20)
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            for _ in range(mib):
                conn.sendall(chunk)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="keep-alive GETs")
    parser.add_argument("--connections", type=int, default=500, help="GETs on new connections")
    parser.add_argument("--mib", type=int, default=256, help="MiB in the bulk download")
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
        use_existing_aws=False,
    )
    state = _localcloud.up(config, echo=lambda _m: None)
    listener = socket.create_server(("127.0.0.1", 0))
    bulk_port = listener.getsockname()[1]
    threading.Thread(target=serve_bulk, args=(listener, args.mib), daemon=True).start()
    try:
        os.environ.update(_localcloud._LOCAL_AWS_ENV)
        cluster = "bench-relay"  # not the local cloud's own: its runner leaves this VM alone
        ec2 = make_ec2_client(region="us-east-1", endpoint_url=state["aws_endpoint"])
        probe_args = [
            str(config.control_plane_port),
            str(bulk_port),
            str(args.requests),
            str(args.connections),
        ]
        host_out = tmp / "host.json"
        subprocess.run([sys.executable, str(probe), *probe_args, str(host_out)], check=True)

        vm_out = tmp / "vm.json"
        with VMRunner(
            ec2,
            cluster=cluster,
            state_dir=tmp / "vms",
            isolation="namespaces",
            relay_ports=[config.control_plane_port, bulk_port],
        ) as runner:
            settings = AwsSettings(
                ami_id=LOCAL_AMI,
                region="us-east-1",
                endpoint_url=state["aws_endpoint"],
                cluster=cluster,
            )
            command = " ".join([f'"$MN_PYTHON" {probe}', *probe_args, str(vm_out)])
            EC2Compute(settings).launch(
                LaunchRequest(
                    instance_type="c6a.large",
                    launch_token="bench-relay",
                    user_data=f"#!/bin/bash\nset -e\n{command}\n",
                )
            )
            deadline = time.monotonic() + 600
            while not vm_out.exists():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the probe never finished: {tmp / 'vms'}")
                runner.run_once()
                time.sleep(0.1)
            summary = runner.isolation.summary
    finally:
        listener.close()
        _localcloud.down(config, echo=lambda _m: None)

    host, vm = json.loads(host_out.read_text()), json.loads(vm_out.read_text())
    print(f"VM runner: {summary}")
    print(f"{'figure':<38} {'host':>10} {'in a VM':>10} {'cost':>10}")
    for kind in ("keepalive", "new_connection"):
        for key in ("p50_ms", "p95_ms", "p99_ms", "per_s"):
            h, v = host[kind][key], vm[kind][key]
            print(f"{kind + ' ' + key:<38} {h:>10.3f} {v:>10.3f} {v - h:>+10.3f}")
    h, v = host["bulk"]["mib_per_s"], vm["bulk"]["mib_per_s"]
    print(f"{'bulk MiB/s (' + str(args.mib) + ' MiB)':<38} {h:>10.1f} {v:>10.1f} {v - h:>+10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
