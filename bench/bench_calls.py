"""Call-path benchmark on the local cloud: cold start, warm round trip, map throughput, and
control-plane CPU per call.

Starts its own local cloud (emulator, control plane, VM runner) on free ports under a
temporary MN_HOME, deploys a no-op function, measures, and stops everything.

    .venv/bin/python bench/bench_calls.py [--calls 300] [--map 10000] [--json out.json]

Figures (issue targets): warm `f.call()` p50 <= 20 ms; `f.map` over 10,000 no-op inputs
>= 2,000 inputs/s; control-plane CPU per call <= 1 ms; cold path <= 3 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from _common import cpu_seconds, free_port, percentile

APP_SOURCE = """
import multinode as mn

@mn.function(cpu={cpu}, max_workers={max_workers}, cooldown=600)
def noop(x):
    return x
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="sequential warm calls")
    parser.add_argument("--map", type=int, default=10_000, help="inputs in the map run")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--database-url", help="control-plane database (default SQLite)")
    parser.add_argument("--cpu", type=float, default=0.25, help="cpu= of the no-op function")
    parser.add_argument("--max-workers", type=int, default=10, help="max_workers= of it")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="mn-bench-"))
    os.environ["MN_HOME"] = str(home)
    for key in ("MN_URL", "MN_API_KEY"):
        os.environ.pop(key, None)

    import multinode as mn
    from multinode import _localcloud
    from multinode._deploy import deploy

    config = _localcloud.LocalCloudConfig(
        home=home,
        aws_port=free_port(),
        control_plane_port=free_port(),
        use_existing_aws=False,
        database_url=args.database_url,
    )
    state = _localcloud.up(config, echo=lambda _m: None)
    cp_pid = state["processes"]["controlplane"]["pid"]
    figures: dict = {
        "machine": f"{platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "database": (args.database_url or "sqlite").split(":", 1)[0],
        "function": f"cpu={args.cpu}, max_workers={args.max_workers}",
    }
    try:
        app_file = home / "bench_app.py"
        app_file.write_text(
            textwrap.dedent(APP_SOURCE.format(cpu=args.cpu, max_workers=args.max_workers))
        )
        deploy(app_file, name="bench")
        noop = mn.get_function("bench", "noop")

        t0 = time.perf_counter()
        assert noop.call(1) == 1
        figures["cold_first_result_s"] = round(time.perf_counter() - t0, 3)

        for i in range(20):  # warm the connection and the worker processes
            noop.call(i)
        latencies = []
        for i in range(args.calls):
            t = time.perf_counter()
            noop.call(i)
            latencies.append((time.perf_counter() - t) * 1000)
        figures["warm_call_ms"] = {
            "p50": round(statistics.median(latencies), 2),
            "p95": round(percentile(latencies, 0.95), 2),
            "p99": round(percentile(latencies, 0.99), 2),
            "n": args.calls,
        }

        noop.map(range(500))  # let every slot's worker start before timing
        cpu_before = cpu_seconds(cp_pid)
        t = time.perf_counter()
        results = noop.map(range(args.map))
        elapsed = time.perf_counter() - t
        cpu_used = cpu_seconds(cp_pid) - cpu_before
        assert results == list(range(args.map)), "map returned wrong results"
        figures["map"] = {
            "inputs": args.map,
            "seconds": round(elapsed, 3),
            "inputs_per_s": round(args.map / elapsed),
        }
        figures["controlplane_cpu_ms_per_call"] = round(cpu_used * 1000 / args.map, 3)
        figures["instances"] = len(mn.list_instances(app="bench"))
    finally:
        _localcloud.down(config, echo=lambda _m: None)

    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
