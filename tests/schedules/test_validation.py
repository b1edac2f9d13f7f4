"""Every way to get a schedule wrong fails at once, naming the problem and the fix."""

from __future__ import annotations

import datetime as dt
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import multinode as mn
from multinode.errors import InvalidRequestError
from multinode.schedule_math import CronRule, IntervalRule, next_fires, rule_from_args, validate
from tests.schedules.support import utc

MINUTE = timedelta(minutes=1)

# (decorator kwargs, field in details, reason in details, fragments of the message)
BAD = [
    (
        {"cron": "*/5 * * * *"},
        "cron",
        "too_frequent",
        ["'*/5 * * * *'", "5 minutes apart", "minimum of 15 minutes"],
    ),
    ({"cron": "0,5 * * * *"}, "cron", "too_frequent", ["5 minutes apart", "15 minutes"]),
    ({"cron": "0,59 0,23 * * *"}, "cron", "too_frequent", ["1 minute apart"]),
    ({"cron": "0,10,59 0,23 * * *"}, "cron", "too_frequent", ["1 minute apart"]),
    ({"cron": "0,59 0,23 1,30 * *"}, "cron", "too_frequent", ["1 minute apart"]),
    ({"cron": "0,59 0,23 31 * 1"}, "cron", "too_frequent", ["1 minute apart"]),
    ({"cron": "0 0 31 2 *"}, "cron", "never_fires", ["'0 0 31 2 *'", "never fires", "29 days"]),
    ({"cron": "0 0 30 2 *"}, "cron", "never_fires", ["never fires"]),
    ({"cron": "0 0 31 4,6,9,11 *"}, "cron", "never_fires", ["never fires"]),
    ({"cron": "CRON_TZ=Europe/London 0 23 * * *"}, "cron", "timezone_in_expression", ["timezone="]),
    ({"cron": "TZ=UTC 0 0 * * *"}, "cron", "timezone_in_expression", ["timezone="]),
    ({"cron": "0 0 * *"}, "cron", "malformed_cron", ["expected 5 fields", "got 4"]),
    ({"cron": "0 0 0 * * *"}, "cron", "malformed_cron", ["got 6", "Seconds and years"]),
    ({"cron": ""}, "cron", "malformed_cron", ["got 0"]),
    (
        {"cron": "60 * * * *"},
        "cron",
        "malformed_cron",
        ["minute value 60 is out of range", "0 to 59"],
    ),
    ({"cron": "0 24 * * *"}, "cron", "malformed_cron", ["hour value 24", "0 to 23"]),
    ({"cron": "0 0 32 * *"}, "cron", "malformed_cron", ["day-of-month value 32"]),
    ({"cron": "0 0 0 * *"}, "cron", "malformed_cron", ["day-of-month value 0", "1 to 31"]),
    ({"cron": "0 0 * 13 *"}, "cron", "malformed_cron", ["month value 13"]),
    ({"cron": "0 0 * * 8"}, "cron", "malformed_cron", ["day-of-week value 8", "0 to 7"]),
    (
        {"cron": "0 0 * foo *"},
        "cron",
        "malformed_cron",
        ["'foo' is not a valid month value", "jan-dec"],
    ),
    (
        {"cron": "0 0 * * mon-fry"},
        "cron",
        "malformed_cron",
        ["'fry' is not a valid day-of-week", "sun-sat"],
    ),
    ({"cron": "0 0 * * sat-mon"}, "cron", "malformed_cron", ["runs backwards"]),
    ({"cron": "30-10 * * * *"}, "cron", "malformed_cron", ["'30-10'", "runs backwards"]),
    ({"cron": "*/0 * * * *"}, "cron", "malformed_cron", ["step", "at least 1"]),
    ({"cron": "0 0 L * *"}, "cron", "malformed_cron", ["'L' is not a valid day-of-month value"]),
    ({"cron": "0 0 ? * *"}, "cron", "malformed_cron", ["cannot read '?'"]),
    ({"cron": "0 0 * * 1#2"}, "cron", "malformed_cron", ["cannot read '1#2'"]),
    ({"cron": "1,,2 * * * *"}, "cron", "malformed_cron", ["cannot read ''"]),
    ({"cron": "@reboot"}, "cron", "malformed_cron", ["unknown macro"]),
    ({"cron": 5}, "cron", "not_a_string", ["must be a string"]),
    (
        {"cron": "0 0 * * *", "timezone": "Mars/Olympus"},
        "timezone",
        "unknown_timezone",
        ["Unknown timezone 'Mars/Olympus'", "IANA"],
    ),
    (
        {"cron": "0 0 * * *", "timezone": "Europe/Londn"},
        "timezone",
        "unknown_timezone",
        ["Did you mean 'Europe/London'?"],
    ),
    (
        {"cron": "0 0 * * *", "timezone": "localtime"},
        "timezone",
        "unknown_timezone",
        ["Unknown timezone"],
    ),
    ({"interval": timedelta(0)}, "interval", "not_positive", ["must be positive"]),
    (
        {"interval": -timedelta(hours=1)},
        "interval",
        "not_positive",
        ["must be positive", "-1 hour"],
    ),
    (
        {"interval": 300},
        "interval",
        "not_a_timedelta",
        ["datetime.timedelta", "timedelta(hours=6)"],
    ),
    ({"period": 3600.0}, "interval", "not_a_timedelta", ["datetime.timedelta"]),
    (
        {"interval": timedelta(minutes=5)},
        "interval",
        "too_frequent",
        ["5 minutes", "minimum of 15 minutes"],
    ),
    ({"period": timedelta(minutes=14, seconds=59)}, "interval", "too_frequent", ["15 minutes"]),
    ({}, "interval", "missing_argument", ["one of interval=, period= or cron="]),
    (
        {"interval": timedelta(hours=1), "cron": "0 * * * *"},
        "cron",
        "conflicting_arguments",
        ["only one of", "interval and cron"],
    ),
    (
        {"interval": timedelta(hours=1), "period": timedelta(hours=1)},
        "period",
        "conflicting_arguments",
        ["only one of"],
    ),
    (
        {"period": timedelta(hours=1), "reference_time": datetime(2025, 1, 1)},
        "reference_time",
        "conflicting_arguments",
        ["period= is anchored"],
    ),
    (
        {"interval": timedelta(hours=1), "timezone": "UTC"},
        "timezone",
        "conflicting_arguments",
        ["timezone= applies to cron"],
    ),
    (
        {"cron": "0 0 * * *", "reference_time": datetime(2025, 1, 1)},
        "reference_time",
        "conflicting_arguments",
        ["reference_time= applies"],
    ),
    (
        {"interval": timedelta(days=1), "reference_time": dt.date(2025, 1, 1)},
        "reference_time",
        "not_a_datetime",
        ["must be a datetime"],
    ),
    (
        {
            "interval": timedelta(days=1),
            "reference_time": datetime(2025, 3, 9, 2, 30, tzinfo=ZoneInfo("America/New_York")),
        },
        "reference_time",
        "nonexistent_time",
        ["does not exist in America/New_York"],
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "field", "reason", "fragments"), BAD, ids=lambda v: repr(v)[:60]
)
def test_bad_schedules_are_refused(
    kwargs: dict[str, Any], field: str, reason: str, fragments: list[str]
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        rule_from_args(**kwargs)
    for fragment in fragments:
        assert fragment in caught.value.message
    assert caught.value.details["field"] == field
    assert caught.value.details["reason"] == reason
    assert caught.value.to_body()["code"] == "invalid"


GOOD = [
    {"cron": "*/15 * * * *"},
    {"cron": "0 23 * * 1-5", "timezone": "Europe/London"},
    {"cron": "0,15,30,45 * * * *"},
    {"cron": "0,59 0,23 * * 1"},  # 23:59 Monday to 00:00 the next Monday
    {"cron": "0 12 29 2 *"},
    {"cron": "0 0 * * *", "timezone": ZoneInfo("Asia/Tokyo")},
    {"interval": timedelta(minutes=15)},
    {"period": timedelta(days=1)},
    {
        "interval": timedelta(days=1),
        "reference_time": datetime(2023, 9, 8, 23, 0, tzinfo=ZoneInfo("Europe/London")),
    },
]


@pytest.mark.parametrize("kwargs", GOOD, ids=repr)
def test_good_schedules_are_accepted(kwargs: dict[str, Any]) -> None:
    rule = rule_from_args(**kwargs)
    assert validate(rule) is rule


def test_gap_shortened_only_by_dst_does_not_count() -> None:
    # 01:50 EST to 03:00 EDT on 2025-03-09 is 10 real minutes, but 70 on the clock.
    rule = rule_from_args(cron="0,50 1,3 * * *", timezone="America/New_York")
    fires = next_fires(rule, utc(2025, 3, 9, 6, 40), 2)
    assert fires == [utc(2025, 3, 9, 6, 50), utc(2025, 3, 9, 7)]


def test_minimum_is_a_parameter() -> None:
    assert rule_from_args(cron="* * * * *", min_interval=MINUTE)
    assert rule_from_args(interval=MINUTE, min_interval=MINUTE)
    with pytest.raises(InvalidRequestError, match="minimum of 2 hours"):
        validate(CronRule("0 * * * *"), min_interval=timedelta(hours=2))
    with pytest.raises(InvalidRequestError, match="minimum of 2 days"):
        validate(CronRule("0 0 * * *"), min_interval=timedelta(days=2))
    assert validate(CronRule("0 0 * * 1"), min_interval=timedelta(days=2))


def test_construction_checks_structure_but_not_the_minimum() -> None:
    # The scheduler may hold rules a permissive server accepted; only validate() applies the floor.
    assert IntervalRule(datetime(2025, 1, 1), MINUTE).interval == MINUTE
    assert CronRule("* * * * *").expression == "* * * * *"
    with pytest.raises(InvalidRequestError, match="never fires"):
        CronRule("0 0 30 2 *")


def test_on_a_vm_the_app_module_imports_with_the_schedule_the_control_plane_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The control plane accepted a 4 s interval (its own minimum); the VM imports the app
    # to run it without this process's default minimum of 15 minutes.
    with pytest.raises(InvalidRequestError, match="interval"):
        mn.scheduled_task(interval=timedelta(seconds=4))
    monkeypatch.setenv("MN_INSTANCE_ID", "i-0123456789abcdef0")
    mn.scheduled_task(interval=timedelta(seconds=4))
