"""The examples in examples/, deployed to the local cloud as a user would and exercised:
their schedules, their results in dicts, and the tweet-summaries service over HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import pytest

import multinode as mn
from multinode import schedules
from multinode._client import get_client

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_nightly_report_fires_at_23_daily_and_on_weekdays(local_cloud, app_name) -> None:
    mn.deploy(EXAMPLES / "nightly_report" / "nightly_report.py", name=app_name)
    monday = datetime(2026, 11, 23, tzinfo=timezone.utc)  # a Monday, before 23:00 anywhere
    listed = {s.function: s for s in schedules.list_schedules(app_name, after=monday, count=7)}
    daily = [t.astimezone(timezone.utc) for t in listed["nightly"].next_fires]
    assert [(t.day, t.hour, t.minute) for t in daily] == [(23 + i, 23, 0) for i in range(7)]
    weekdays = listed["weekday_nightly"].next_fires
    # 23:00 in London (UTC+0 in November), Monday to Friday, then Monday again.
    assert [t.astimezone(timezone.utc).strftime("%a %H:%M") for t in weekdays] == [
        "Mon 23:00",
        "Tue 23:00",
        "Wed 23:00",
        "Thu 23:00",
        "Fri 23:00",
        "Mon 23:00",
        "Tue 23:00",
    ]
    report = schedules.trigger(app_name, "nightly").result(timeout=120)
    assert report["label"] == "nightly" and len(report["checksum"]) == 16
    stored = mn.get_dict(name="reports", app=app_name)["latest"]
    assert stored == report
    instance = next(i for i in mn.list_instances(app_name) if i.id == report["instance"])
    assert instance.vcpus == 16  # cpu=16 got a 16-vCPU instance type
    get_client().undeploy(app_name)


def test_country_fanout_saves_one_result_per_country(local_cloud, app_name) -> None:
    mn.deploy(EXAMPLES / "country_fanout" / "country_fanout.py", name=app_name)
    assert schedules.trigger(app_name, "nightly").result(timeout=180) == 6
    results = mn.get_dict(name="results", app=app_name)["latest"]
    assert [r["country"] for r in results] == ["UK", "USA", "India", "Brazil", "Japan", "Kenya"]
    assert len({r["checksum"] for r in results}) == 6
    vcpus = {i.id: i.vcpus for i in mn.list_instances(app_name)}
    assert {vcpus[r["instance"]] for r in results} == {16}
    get_client().undeploy(app_name)


def test_tweet_summaries_task_fills_the_dict_the_service_answers_from(
    local_cloud, app_name
) -> None:
    info = mn.deploy(EXAMPLES / "tweet_summaries" / "tweet_summaries.py", name=app_name)
    # Its requirements.txt was built into the environment the service runs in.
    env_id = {f.name: f.spec.environment for f in info.functions}["api"]
    assert env_id is not None
    packages = get_client().get_environment(env_id).packages
    assert any(p.startswith("fastapi==") for p in packages), packages
    [url] = mn.get_service(app_name, "api").wait_ready(version=info.version, timeout=120)
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{url}/tweet_summaries?subject=python", timeout=10)
    assert missing.value.code == 404
    assert schedules.trigger(app_name, "summarize").result(timeout=120) == [
        "python",
        "aws",
        "databases",
    ]
    with urllib.request.urlopen(f"{url}/tweet_summaries?subject=python", timeout=10) as answer:
        summary = json.loads(answer.read())
    assert summary["subject"] == "python" and summary["tweets"] == 50
    assert len(summary["top_words"]) == 3
    get_client().undeploy(app_name)
