"""Interval rules: wall-clock days across DST, exact elapsed time otherwise, storage."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

import pytest

from multinode.errors import InvalidRequestError
from multinode.schedule_math import (
    EPOCH,
    CronRule,
    IntervalRule,
    fires_between,
    next_fire,
    next_fires,
    rule_from_args,
    rule_from_json,
)
from tests.schedules.support import utc

NY = ZoneInfo("America/New_York")
LONDON = ZoneInfo("Europe/London")
SYDNEY = ZoneInfo("Australia/Sydney")
DAY = timedelta(days=1)

# (reference_time, interval, after, expected next fires in UTC)
CASES = [
    pytest.param(
        datetime(2023, 9, 8, 23, 0, tzinfo=LONDON),
        DAY,
        utc(2025, 3, 29),
        [utc(2025, 3, 29, 23), utc(2025, 3, 30, 22), utc(2025, 3, 31, 22)],
        id="london-daily-23:00-through-spring-forward",
    ),
    pytest.param(
        datetime(2023, 9, 8, 23, 0, tzinfo=LONDON),
        DAY,
        utc(2025, 10, 25),
        [utc(2025, 10, 25, 22), utc(2025, 10, 26, 23), utc(2025, 10, 27, 23)],
        id="london-daily-23:00-through-fall-back",
    ),
    pytest.param(
        datetime(2025, 1, 10, 2, 30, tzinfo=NY),
        DAY,
        utc(2025, 3, 8),
        [utc(2025, 3, 8, 7, 30), utc(2025, 3, 9, 7), utc(2025, 3, 10, 6, 30)],
        id="ny-daily-02:30-in-gap-fires-at-03:00-EDT",
    ),
    pytest.param(
        datetime(2025, 1, 10, 1, 30, tzinfo=NY),
        DAY,
        utc(2025, 11, 1),
        [utc(2025, 11, 1, 5, 30), utc(2025, 11, 2, 5, 30), utc(2025, 11, 3, 6, 30)],
        id="ny-daily-01:30-repeated-fires-once-at-first-occurrence",
    ),
    pytest.param(
        datetime(2025, 11, 2, 1, 30, fold=1, tzinfo=NY),
        DAY,
        utc(2025, 11, 1),
        [utc(2025, 11, 1, 5, 30), utc(2025, 11, 2, 5, 30), utc(2025, 11, 3, 6, 30)],
        id="ny-daily-reference-fold-does-not-matter",
    ),
    pytest.param(
        datetime(2025, 3, 7, 2, 30, tzinfo=NY),
        2 * DAY,
        utc(2025, 3, 8),
        [utc(2025, 3, 9, 7), utc(2025, 3, 11, 6, 30)],
        id="ny-every-2-days-keeps-wall-time",
    ),
    pytest.param(
        datetime(2025, 1, 1, 2, 30, tzinfo=SYDNEY),
        DAY,
        utc(2025, 10, 4),
        [utc(2025, 10, 4, 16), utc(2025, 10, 5, 15, 30)],
        id="sydney-daily-02:30-october-gap",
    ),
    pytest.param(
        datetime(2025, 3, 8, 0, 0, tzinfo=NY),
        timedelta(hours=6),
        utc(2025, 3, 9),
        [utc(2025, 3, 9, 5), utc(2025, 3, 9, 11), utc(2025, 3, 9, 17), utc(2025, 3, 9, 23)],
        id="ny-6-hourly-keeps-elapsed-time-across-spring-forward",
    ),
    pytest.param(
        datetime(2025, 1, 1, 9, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        DAY,
        utc(2025, 6, 1),
        [utc(2025, 6, 1, 3, 30), utc(2025, 6, 2, 3, 30)],
        id="fixed-offset-daily-is-exact",
    ),
    pytest.param(
        datetime(2030, 1, 1),
        DAY,
        utc(2025, 1, 1, 0, 1),
        [utc(2025, 1, 2)],
        id="reference-in-the-future-fixes-phase-only",
    ),
    pytest.param(
        datetime(2025, 1, 1, 0, 7),
        timedelta(minutes=90),
        utc(2025, 1, 1, 1, 37),
        [utc(2025, 1, 1, 3, 7)],
        id="naive-reference-is-utc-and-after-on-a-fire-is-excluded",
    ),
]


@pytest.mark.parametrize(("reference", "interval", "after", "expected"), CASES)
def test_interval_fires(
    reference: datetime, interval: timedelta, after: datetime, expected: list[datetime]
) -> None:
    assert next_fires(IntervalRule(reference, interval), after, len(expected)) == expected


def test_period_is_anchored_at_the_epoch_in_utc() -> None:
    rule = rule_from_args(period=timedelta(hours=6))
    assert rule == IntervalRule(EPOCH, timedelta(hours=6))
    assert next_fires(rule, datetime(2025, 3, 9, 1, tzinfo=NY), 3) == [
        utc(2025, 3, 9, 12),
        utc(2025, 3, 9, 18),
        utc(2025, 3, 10),
    ]


def test_fires_far_from_reference_are_exact() -> None:
    rule = IntervalRule(datetime(2000, 1, 1, 0, 0, 7), timedelta(minutes=17))
    fire = next_fire(rule, utc(2091, 5, 5, 5, 5))
    assert (fire - utc(2000, 1, 1, 0, 0) - timedelta(seconds=7)) % timedelta(
        minutes=17
    ) == timedelta(0)
    assert utc(2091, 5, 5, 5, 5) < fire <= utc(2091, 5, 5, 5, 22)


def test_fires_between_daily_keeps_local_23_00_all_year() -> None:
    rule = IntervalRule(datetime(2023, 9, 8, 23, 0, tzinfo=LONDON), DAY)
    fires = list(fires_between(rule, utc(2025, 1, 1), utc(2026, 1, 1)))
    assert len(fires) == 365
    assert {f.astimezone(LONDON).strftime("%H:%M") for f in fires} == {"23:00"}


def test_describe() -> None:
    london = IntervalRule(datetime(2023, 9, 8, 23, 0, tzinfo=LONDON), DAY)
    assert london.describe() == "every 1 day from 2023-09-08 23:00 Europe/London"
    assert (
        rule_from_args(period=timedelta(hours=6)).describe()
        == "every 6 hours from 1970-01-01 00:00 UTC"
    )
    odd = IntervalRule(
        datetime(2025, 1, 1, 9, 0, 30, tzinfo=timezone(timedelta(hours=-3))), timedelta(minutes=90)
    )
    assert odd.describe() == "every 1 hour 30 minutes from 2025-01-01 09:00:30 UTC-03:00"
    assert (
        CronRule("0 23 * * 1-5", "Europe/London").describe()
        == "cron '0 23 * * 1-5' in Europe/London"
    )


ROUND_TRIP = [
    IntervalRule(datetime(2023, 9, 8, 23, 0, tzinfo=LONDON), DAY),
    IntervalRule(datetime(2025, 11, 2, 1, 30, fold=1, tzinfo=NY), timedelta(hours=1)),
    IntervalRule(
        datetime(2025, 1, 1, 9, 0, 0, 250, tzinfo=timezone(timedelta(hours=5, minutes=45))),
        timedelta(seconds=1000.5),
    ),
    IntervalRule(EPOCH, timedelta(hours=6)),
    CronRule("0 23 * * 1-5", "Europe/London"),
]


@pytest.mark.parametrize("rule", ROUND_TRIP, ids=lambda r: r.describe())
def test_json_round_trip(rule: IntervalRule | CronRule) -> None:
    data = rule.to_json()
    assert data["format"] == 1 and data["kind"] == rule.kind
    back = rule_from_json(data)
    assert back == rule and hash(back) == hash(rule)
    assert next_fires(back, utc(2025, 11, 2), 5) == next_fires(rule, utc(2025, 11, 2), 5)


def test_second_occurrence_reference_keeps_its_instant_for_exact_intervals() -> None:
    rule = IntervalRule(datetime(2025, 11, 2, 1, 30, fold=1, tzinfo=NY), timedelta(hours=1))
    assert next_fire(rule, utc(2025, 11, 2, 6)) == utc(2025, 11, 2, 6, 30)


def test_same_instant_in_another_zone_is_another_rule() -> None:
    london = IntervalRule(datetime(2025, 1, 1, 12, tzinfo=LONDON), DAY)
    utc_rule = IntervalRule(datetime(2025, 1, 1, 12), DAY)
    assert london.reference_time == utc_rule.reference_time  # same instant...
    assert london != utc_rule  # ...but London keeps 12:00 London through summer
    assert next_fire(london, utc(2025, 7, 1)) == utc(2025, 7, 1, 11)


def test_unsupported_stored_format_is_refused() -> None:
    data = CronRule("0 0 * * *").to_json() | {"format": 2}
    with pytest.raises(InvalidRequestError, match="upgrade multinode"):
        rule_from_json(data)


class _LocalizedLike(tzinfo):
    """A tzinfo that is not ZoneInfo but names its zone and agrees with it, as pytz's do."""

    zone = "Europe/London"

    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        return timedelta(hours=1)  # the BST offset, right for the summer date used below

    def dst(self, dt: datetime | None) -> timedelta | None:
        return timedelta(hours=1)


class _UnlocalizedLike(_LocalizedLike):
    """pytz's zone attached with replace(): local mean time, which London never uses now."""

    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        return -timedelta(minutes=1, seconds=15)


def test_foreign_tzinfo_is_swapped_for_zoneinfo_when_it_agrees() -> None:
    rule = IntervalRule(datetime(2025, 7, 1, 23, 0, tzinfo=_LocalizedLike()), DAY)
    assert rule.reference_time.tzinfo == LONDON
    assert next_fire(rule, utc(2025, 12, 1)) == utc(2025, 12, 1, 23)


def test_foreign_tzinfo_that_disagrees_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="zoneinfo.ZoneInfo"):
        IntervalRule(datetime(2025, 7, 1, 23, 0, tzinfo=_UnlocalizedLike()), DAY)
