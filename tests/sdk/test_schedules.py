"""``@mn.scheduled_task`` and ``@mn.schedule``: decoration-time checks and what deploy sends."""

from __future__ import annotations

import base64
import pickle
from datetime import datetime, timedelta
from typing import Any

import pytest

import multinode as mn
from multinode import schedule_math
from multinode._deploy import collect_functions
from multinode.errors import InvalidRequestError
from multinode.schedules import collect_schedules


def test_a_scheduled_task_is_a_function_with_a_schedule() -> None:
    @mn.scheduled_task(
        reference_time=datetime(2023, 9, 8, 23, 0), interval=timedelta(days=1), cpu=16
    )
    def nightly() -> str:
        return "ran"

    assert isinstance(nightly, mn.Function) and nightly.spec.cpu == 16
    assert nightly() == "ran"  # still plain Python when called here
    assert nightly.next_fires(2, after=datetime(2024, 1, 1)) == [
        datetime(2024, 1, 1, 23, 0, tzinfo=schedule_math.UTC),
        datetime(2024, 1, 2, 23, 0, tzinfo=schedule_math.UTC),
    ]


def test_period_is_anchored_at_the_epoch_and_cron_takes_a_timezone() -> None:
    @mn.scheduled_task(period=timedelta(hours=6))
    def every_six() -> None: ...

    @mn.schedule(cron="0 23 * * 1-5", timezone="Europe/London", cpu=1, overlap="queue")
    def weekdays() -> None: ...

    assert every_six.next_fires(1, after=datetime(2024, 1, 1, 1)) == [
        datetime(2024, 1, 1, 6, tzinfo=schedule_math.UTC)
    ]
    assert weekdays.rule == schedule_math.CronRule("0 23 * * 1-5", "Europe/London")
    assert weekdays.overlap == "queue" and weekdays.catchup_window_s == 3600


@pytest.mark.parametrize(
    ("options", "field", "words"),
    [
        ({"cron": "*/5 * * * *"}, "cron", "15 minutes"),
        ({"cron": "0,5 * * * *"}, "cron", "15 minutes"),
        ({"cron": "0 0 31 2 *"}, "cron", "never fires"),
        ({"cron": "CRON_TZ=Europe/London 0 0 * * *"}, "cron", "timezone"),
        ({"cron": "0 25 * * *"}, "cron", "hour"),
        ({"cron": "0 0 * * *", "timezone": "Europe/Londn"}, "timezone", "Europe/London"),
        ({"interval": timedelta(minutes=5)}, "interval", "15 minutes"),
        ({"interval": 3600}, "interval", "timedelta"),
        ({"interval": timedelta(hours=1), "cron": "0 * * * *"}, "cron", "only one"),
        ({}, "interval", "one of"),
        ({"cron": "0 * * * *", "overlap": "wait"}, "overlap", "skip"),
    ],
)
def test_a_bad_schedule_fails_at_decoration_time(
    options: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        mn.scheduled_task(**options)
    assert caught.value.details.get("field") == field
    assert words in caught.value.message


def test_bad_resources_and_policies_fail_at_decoration_time() -> None:
    with pytest.raises(InvalidRequestError, match="cpu"):
        mn.schedule(cron="0 * * * *", cpu=-1)
    with pytest.raises(InvalidRequestError, match="catchup_window"):
        mn.schedule(cron="0 * * * *", catchup_window="1h")
    with pytest.raises(InvalidRequestError, match="unknown argument"):
        mn.schedule(cron="0 * * * *", cpus=2)


def test_the_decorator_needs_arguments_and_a_task_takes_none() -> None:
    with pytest.raises(InvalidRequestError, match="needs a schedule"):

        @mn.scheduled_task
        def bare() -> None: ...

    with pytest.raises(InvalidRequestError, match="no arguments"):

        @mn.schedule(cron="0 * * * *")
        def needs(x: int) -> None: ...


def test_the_minimum_interval_can_be_lowered_for_a_local_demo(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MN_MIN_SCHEDULE_INTERVAL_S", "10")

    @mn.scheduled_task(interval=timedelta(seconds=10))
    def demo() -> None: ...

    assert demo.rule.interval == timedelta(seconds=10)


def test_deploy_carries_each_schedule_with_a_pickled_empty_call() -> None:
    import types

    module = types.ModuleType("sched_app_for_test")
    exec(
        "import multinode as mn\n"
        "from datetime import timedelta\n"
        "@mn.function\n"
        "def crunch(x): return x\n"
        "@mn.scheduled_task(interval=timedelta(hours=1), overlap='allow')\n"
        "def task(): return crunch.map([1, 2])\n",
        module.__dict__,
    )
    uploads = collect_schedules(collect_functions(module).values())

    [upload] = uploads
    assert upload.function == "task" and upload.overlap == "allow"
    assert schedule_math.rule_from_json(upload.rule) == module.task.rule
    assert pickle.loads(upload.input) == ((), {})
    body = upload.model_dump(mode="json")
    assert base64.b64decode(body["input"]) == upload.input
