"""mn.get_dict against raw boto3 doing the same DynamoDB calls, side by side in one run.

Starts its own local cloud (emulator, control plane, VM runner) on free ports under a
temporary MN_HOME, deploys a one-function app so that dict credentials can be vended, and
measures on the same emulator, table and credentials:

- single set / get: ``d[k] = v`` / ``d[k]`` against ``put_item`` / ``get_item``
  (consistent read) with the same pickled value, alternating the two so drift hits both;
- ``d.update`` of N small items against BatchWriteItem (25 per request) on 1..32 threads,
  and ``d.get_many`` of N keys against BatchGetItem (100 per request, consistent): the
  best raw thread count is the reference.

    .venv/bin/python bench/bench_dict.py [--single 500] [--batch 10000] [--json out.json]

Targets (issue): single get/set within 10% of raw boto3; update and get_many >= 90% of
the best raw batch throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import statistics
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _common import free_port

APP_SOURCE = """
import multinode as mn

@mn.function(cpu=0.25)
def noop(x):
    return x
"""
THREADS = (1, 4, 8, 16, 32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--single", type=int, default=500, help="single gets/sets per side")
    parser.add_argument("--batch", type=int, default=10_000, help="items per batch run")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from multinode import _localcloud

    home = Path(tempfile.mkdtemp(prefix="mn-bench-dict-"))
    config = _localcloud.LocalCloudConfig(
        home=home,
        aws_port=free_port(),
        control_plane_port=free_port(),
        gateway_port=free_port(),
        use_existing_aws=False,
    )
    os.environ["MN_HOME"] = str(home)
    for key in ("MN_URL", "MN_API_KEY", "MN_APP"):
        os.environ.pop(key, None)
    _localcloud.up(config, echo=lambda _m: None)
    try:
        figures = run(args)
    finally:
        _localcloud.down(config, echo=lambda _m: None)
    report(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


def run(args: argparse.Namespace) -> dict[str, Any]:
    import boto3
    from botocore.config import Config

    import multinode as mn
    from multinode._client import get_client

    app_file = Path(tempfile.mkdtemp()) / "bench_dict_app.py"
    app_file.write_text(textwrap.dedent(APP_SOURCE))
    mn.deploy(app_file, name="bench-dict")
    creds = get_client().dict_credentials("bench-dict")
    raw = boto3.session.Session(
        aws_access_key_id=creds.access_key_id,
        aws_secret_access_key=creds.secret_access_key,
        aws_session_token=creds.session_token,
        region_name=creds.region,
    ).client(
        "dynamodb",
        endpoint_url=creds.dynamodb_endpoint_url or creds.endpoint_url,
        config=Config(
            retries={"mode": "standard", "total_max_attempts": 1}, max_pool_connections=64
        ),
    )
    table = creds.table
    raw_pk = creds.key_prefix + "raw"
    d = mn.get_dict("bench", app="bench-dict")
    value = {"summary": "a short summary of a tweet", "score": 0.75, "tags": ["a", "b"]}
    d["warm"] = value  # credentials, registry, connection pool: outside the timings
    raw.put_item(TableName=table, Item=_raw_item(raw_pk, "s:warm", value))

    sets = {"sdk": [], "raw": []}
    gets = {"sdk": [], "raw": []}
    for i in range(args.single):
        key = f"k{i % 50}"
        t0 = time.perf_counter()
        raw.put_item(TableName=table, Item=_raw_item(raw_pk, "s:" + key, value))
        t1 = time.perf_counter()
        d[key] = value
        t2 = time.perf_counter()
        item = raw.get_item(
            TableName=table, Key={"pk": {"S": raw_pk}, "sk": {"S": "s:" + key}}, ConsistentRead=True
        )["Item"]
        pickle.loads(item["v"]["B"])
        t3 = time.perf_counter()
        d[key]
        t4 = time.perf_counter()
        sets["raw"].append(t1 - t0)
        sets["sdk"].append(t2 - t1)
        gets["raw"].append(t3 - t2)
        gets["sdk"].append(t4 - t3)

    n = args.batch
    small = {f"item-{i}": {"n": i, "text": "x" * 40} for i in range(n)}
    raw_write = {t: _raw_batch_write(raw, table, raw_pk, small, t) for t in THREADS}
    t0 = time.perf_counter()
    d.update(small)
    sdk_write = n / (time.perf_counter() - t0)
    raw_read = {t: _raw_batch_get(raw, table, raw_pk, list(small), t) for t in THREADS}
    t0 = time.perf_counter()
    got = d.get_many(small)
    sdk_read = n / (time.perf_counter() - t0)
    assert len(got) == n

    def ms(values: list[float]) -> dict[str, float]:
        return {
            "p50_ms": statistics.median(values) * 1000,
            "mean_ms": statistics.fmean(values) * 1000,
        }

    return {
        "python": platform.python_version(),
        "single_ops": args.single,
        "batch_items": n,
        "set": {"sdk": ms(sets["sdk"]), "raw": ms(sets["raw"])},
        "get": {"sdk": ms(gets["sdk"]), "raw": ms(gets["raw"])},
        "update_items_per_s": {"sdk": sdk_write, "raw_by_threads": raw_write},
        "get_many_items_per_s": {"sdk": sdk_read, "raw_by_threads": raw_read},
    }


def _raw_item(pk: str, sk: str, value: Any) -> dict[str, Any]:
    import cloudpickle

    data = cloudpickle.dumps(value, protocol=5)
    return {"pk": {"S": pk}, "sk": {"S": sk}, "v": {"B": data}, "f": {"N": "1"}}


def _raw_batch_write(raw: Any, table: str, pk: str, items: dict, threads: int) -> float:
    requests = [{"PutRequest": {"Item": _raw_item(pk, "s:" + k, v)}} for k, v in items.items()]
    chunks = [requests[i : i + 25] for i in range(0, len(requests), 25)]

    def write(chunk: list) -> None:
        pending = {table: chunk}
        while pending:
            pending = raw.batch_write_item(RequestItems=pending).get("UnprocessedItems")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(write, chunks))
    return len(requests) / (time.perf_counter() - t0)


def _raw_batch_get(raw: Any, table: str, pk: str, keys: list[str], threads: int) -> float:
    wanted = [{"pk": {"S": pk}, "sk": {"S": "s:" + k}} for k in keys]
    chunks = [wanted[i : i + 100] for i in range(0, len(wanted), 100)]

    def read(chunk: list) -> int:
        pending: Any = {table: {"Keys": chunk, "ConsistentRead": True}}
        count = 0
        while pending:
            reply = raw.batch_get_item(RequestItems=pending)
            for item in reply["Responses"].get(table, []):
                pickle.loads(item["v"]["B"])
                count += 1
            pending = reply.get("UnprocessedKeys")
        return count

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        found = sum(pool.map(read, chunks))
    assert found == len(keys)
    return len(keys) / (time.perf_counter() - t0)


def report(f: dict[str, Any]) -> None:
    print(f"Python {f['python']}; {f['single_ops']} single ops per side; {f['batch_items']} items")
    for op in ("set", "get"):
        sdk, raw = f[op]["sdk"], f[op]["raw"]
        ratio = sdk["p50_ms"] / raw["p50_ms"]
        print(
            f"single {op}: mn p50 {sdk['p50_ms']:.2f} ms (mean {sdk['mean_ms']:.2f}), "
            f"boto3 p50 {raw['p50_ms']:.2f} ms (mean {raw['mean_ms']:.2f}) -> {ratio:.2f}x"
        )
    for op, name in (("update_items_per_s", "update"), ("get_many_items_per_s", "get_many")):
        best_t, best = max(f[op]["raw_by_threads"].items(), key=lambda kv: kv[1])
        sdk = f[op]["sdk"]
        by = ", ".join(f"{t}t {v:,.0f}" for t, v in f[op]["raw_by_threads"].items())
        print(
            f"{name}: mn {sdk:,.0f} items/s; boto3 best {best:,.0f} items/s ({best_t} threads) "
            f"-> {sdk / best:.0%} [boto3 by threads: {by}]"
        )


if __name__ == "__main__":
    sys.exit(main())
