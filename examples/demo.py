"""The three examples working together on the running local cloud (what `make demo` runs).

Deploys each example as its own app, shows the schedules, runs each scheduled task once
instead of waiting for its time, reads the results from the dicts and the tweet-summaries
service over HTTP, then undeploys everything. Start the local cloud first (`mn up`).
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
from pathlib import Path

import multinode as mn
from multinode import schedules

HERE = Path(__file__).resolve().parent
APPS = {
    "nightly-report": HERE / "nightly_report" / "nightly_report.py",
    "country-fanout": HERE / "country_fanout" / "country_fanout.py",
    "tweet-summaries": HERE / "tweet_summaries" / "tweet_summaries.py",
}


def main() -> None:
    started = time.monotonic()
    try:
        for app, path in APPS.items():
            info = mn.deploy(path, name=app)
            print(f"deployed {app} v{info.version}: {', '.join(f.name for f in info.functions)}")
        print("\nschedules (next fire times, UTC):")
        for app in APPS:
            for s in schedules.list_schedules(app, count=2):
                times = ", ".join(t.strftime("%a %d %b %H:%M") for t in s.next_fires)
                print(f"  {app}.{s.function:<16} {s.description:<40} {times}")

        print("\nrunning every task once now ...")
        runs = {
            ("nightly-report", "nightly"): schedules.trigger("nightly-report", "nightly"),
            ("country-fanout", "nightly"): schedules.trigger("country-fanout", "nightly"),
            ("tweet-summaries", "summarize"): schedules.trigger("tweet-summaries", "summarize"),
        }
        web = mn.get_service("tweet-summaries", "api")
        [replica] = web.wait_ready(timeout=120)
        url = (web.endpoint() or replica).rstrip("/")
        for (app, task), handle in runs.items():
            print(f"  {app}.{task} -> {handle.result(timeout=300)!r}")

        types = {i.id: i.instance_type for app in APPS for i in mn.list_instances(app)}
        report = mn.get_dict(name="reports", app="nightly-report")["latest"]
        print(f"\nnightly report: checksum {report['checksum']} on {types[report['instance']]}")
        print("country results (cpu=16 calls on 16-vCPU instances):")
        for row in mn.get_dict(name="results", app="country-fanout")["latest"]:
            instance = row["instance"]
            print(f"  {row['country']:<7} {row['checksum']}  on {instance} ({types[instance]})")
        print(f"\ntweet-summaries service at {url} (replica at {replica})")
        with urllib.request.urlopen(f"{url}/tweet_summaries?subject=python", timeout=10) as r:
            print(f"  GET /tweet_summaries?subject=python -> {json.loads(r.read())}")

        print("\ninstances launched:")
        for app in APPS:
            for inst in mn.list_instances(app):
                print(
                    f"  {app:<16} {inst.instance_type:<12} {inst.vcpus:>4g} vCPU  {inst.state.value}"
                )
    finally:
        for app in APPS:
            with contextlib.suppress(mn.NotFoundError):
                mn.undeploy(app)
    print(f"\ndone in {time.monotonic() - started:.1f}s; every app undeployed")


if __name__ == "__main__":
    main()
