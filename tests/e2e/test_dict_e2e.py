"""The seed flow of mn.get_dict on the whole local cloud: code running on a VM (a
function, and a scheduled task) writes summaries, another process (this test, a user's
script, `mn dict`) reads them."""

from __future__ import annotations

import subprocess
import sys

import pytest

import multinode as mn

pytestmark = pytest.mark.e2e

APP_SOURCE = """
import multinode as mn

summaries = mn.get_dict(name="tweet_summaries")  # at import: no network call


@mn.function(cpu=0.25, cooldown=60)
def summarize(batch):
    for tweet_id, text in batch:
        summaries[tweet_id] = {"summary": text.upper(), "length": len(text)}
    summaries["runs"] = summaries.get("runs", 0)
    summaries["runs"] += 1
    return len(summaries)
"""


def test_a_function_on_a_vm_writes_and_another_process_reads(
    local_cloud: dict, write_app, app_name: str
) -> None:
    path = write_app(APP_SOURCE)
    mn.deploy(path, name=app_name)
    summarize = mn.get_function(app_name, "summarize")

    assert summarize.call([(1, "hello"), (2, "world")]) == 3
    assert summarize.call([(3, "again")]) == 4

    reader = mn.get_dict("tweet_summaries", app=app_name)
    assert reader[1] == {"summary": "HELLO", "length": 5}
    assert reader.get_many([1, 2, 3, 4]) == {
        1: {"summary": "HELLO", "length": 5},
        2: {"summary": "WORLD", "length": 5},
        3: {"summary": "AGAIN", "length": 5},
    }
    assert reader["runs"] == 2

    mn_cli = [sys.executable, "-m", "multinode.cli"]
    shown = subprocess.run(
        [*mn_cli, "dict", "get", app_name, "tweet_summaries", "runs"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shown.stdout.strip() == "2"
    listing = subprocess.run(
        [*mn_cli, "dict", "ls", app_name, "--json"], capture_output=True, text=True, check=True
    )
    assert '"tweet_summaries"' in listing.stdout and '"keys": 4' in listing.stdout

    gone = subprocess.run(
        [*mn_cli, "undeploy", app_name, "--delete-data"], capture_output=True, text=True
    )
    assert gone.returncode == 0, gone.stderr
    assert "deleted 1 dicts (4 keys" in gone.stdout
    assert len(reader) == 0


SCHEDULED_SOURCE = """
from datetime import datetime, timedelta, timezone

import multinode as mn

summaries = mn.get_dict(name="tweet_summaries")
# Daily, next due 12 hours after deploy: it cannot fire by itself during the test.
NOON_FROM_NOW = datetime.now(timezone.utc) + timedelta(hours=12)


@mn.scheduled_task(reference_time=NOON_FROM_NOW, interval=timedelta(days=1), cpu=0.25, cooldown=60)
def extract_summaries():
    tweets = {"uk": "rain again", "fr": "greve demain"}
    for subject, text in tweets.items():
        summaries[subject] = text.title()
    summaries["runs"] = summaries.get("runs", 0)
    summaries["runs"] += 1
"""


def test_a_scheduled_task_writes_the_dict_and_a_script_reads_it(
    local_cloud: dict, write_app, app_name: str
) -> None:
    from multinode.schedules import trigger

    mn.deploy(write_app(SCHEDULED_SOURCE), name=app_name)
    reader = mn.get_dict("tweet_summaries", app=app_name)
    assert "uk" not in reader

    trigger(app_name, "extract_summaries").result(timeout=60)
    assert (reader["uk"], reader["fr"], reader["runs"]) == ("Rain Again", "Greve Demain", 1)
    trigger(app_name, "extract_summaries").result(timeout=60)
    assert reader["runs"] == 2


LARGE_SOURCE = """
import multinode as mn

blobs = mn.get_dict(name="blobs")


@mn.function(cpu=0.25, cooldown=60)
def store(size):
    blobs["big"] = b"x" * size  # over DynamoDB's item limit: the value goes to S3
    return len(blobs["big"])
"""


def test_a_large_value_goes_through_s3_from_a_vm_to_a_script(
    local_cloud: dict, write_app, app_name: str
) -> None:
    mn.deploy(write_app(LARGE_SOURCE), name=app_name)
    store = mn.get_function(app_name, "store")
    assert store.call(1_000_000) == 1_000_000

    reader = mn.get_dict("blobs", app=app_name)
    assert reader["big"] == b"x" * 1_000_000

    gone = subprocess.run(
        [sys.executable, "-m", "multinode.cli", "undeploy", app_name, "--delete-data"],
        capture_output=True,
        text=True,
    )
    assert gone.returncode == 0, gone.stderr
    assert "deleted 1 dicts (1 keys, 1 S3 objects)" in gone.stdout
    assert "big" not in reader
