"""Cron rules: explicit UTC instants for DST in both hemispheres, calendars and syntax."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from multinode.schedule_math import CronRule, fires_between, next_fire, next_fires
from tests.schedules.support import utc

NY = "America/New_York"
LONDON = "Europe/London"
SYDNEY = "Australia/Sydney"

# (expression, zone, after, expected next fires in UTC)
DST_CASES = [
    pytest.param(
        "30 2 * * *",
        NY,
        utc(2025, 3, 8, 12),
        [utc(2025, 3, 9, 7), utc(2025, 3, 10, 6, 30)],
        id="ny-spring-fixed-time-in-gap-fires-at-03:00-EDT",
    ),
    pytest.param(
        "30 1 * * *",
        NY,
        utc(2025, 11, 1, 12),
        [utc(2025, 11, 2, 5, 30), utc(2025, 11, 3, 6, 30)],
        id="ny-fall-fixed-time-fires-once-at-first-occurrence",
    ),
    pytest.param(
        "0 1,2 * * *",
        NY,
        utc(2025, 11, 2),
        [utc(2025, 11, 2, 5), utc(2025, 11, 2, 7), utc(2025, 11, 3, 6)],
        id="ny-fall-fixed-list-skips-second-01:00",
    ),
    pytest.param(
        "0,30 2 * * *",
        NY,
        utc(2025, 3, 9),
        [utc(2025, 3, 9, 7), utc(2025, 3, 10, 6), utc(2025, 3, 10, 6, 30)],
        id="ny-spring-two-skipped-times-fire-once-together",
    ),
    pytest.param(
        "30 * * * *",
        NY,
        utc(2025, 11, 2, 4),
        [
            utc(2025, 11, 2, 4, 30),
            utc(2025, 11, 2, 5, 30),
            utc(2025, 11, 2, 6, 30),
            utc(2025, 11, 2, 7, 30),
        ],
        id="ny-fall-wildcard-hour-fires-both-01:30s",
    ),
    pytest.param(
        "30 * * * *",
        NY,
        utc(2025, 11, 2, 5, 45),
        [utc(2025, 11, 2, 6, 30)],
        id="ny-fall-from-first-pass-next-is-second-01:30",
    ),
    pytest.param(
        "30 * * * *",
        NY,
        utc(2025, 3, 9, 5),
        [
            utc(2025, 3, 9, 5, 30),
            utc(2025, 3, 9, 6, 30),
            utc(2025, 3, 9, 7, 30),
            utc(2025, 3, 9, 8, 30),
        ],
        id="ny-spring-wildcard-hour-skips-02:30",
    ),
    pytest.param(
        "*/15 1 * * *",
        NY,
        utc(2025, 11, 2),
        [utc(2025, 11, 2, 5, m) for m in (0, 15, 30, 45)]
        + [utc(2025, 11, 2, 6, m) for m in (0, 15, 30, 45)],
        id="ny-fall-stepped-minute-follows-real-time",
    ),
    pytest.param(
        "*/15 2 * * *",
        NY,
        utc(2025, 3, 9),
        [utc(2025, 3, 10, 6)],
        id="ny-spring-stepped-minute-in-skipped-hour-never-fires",
    ),
    pytest.param(
        "30 1 * * *",
        LONDON,
        utc(2025, 3, 29, 12),
        [utc(2025, 3, 30, 1), utc(2025, 3, 31, 0, 30)],
        id="london-spring-fixed-time-in-gap-fires-at-02:00-BST",
    ),
    pytest.param(
        "30 1 * * *",
        LONDON,
        utc(2025, 10, 25, 12),
        [utc(2025, 10, 26, 0, 30), utc(2025, 10, 27, 1, 30)],
        id="london-fall-fixed-time-fires-once",
    ),
    pytest.param(
        "0 23 * * 1-5",
        LONDON,
        utc(2025, 3, 28),
        [utc(2025, 3, 28, 23), utc(2025, 3, 31, 22), utc(2025, 4, 1, 22)],
        id="london-weekday-23:00-keeps-wall-time",
    ),
    pytest.param(
        "*/30 * * * *",
        LONDON,
        utc(2025, 10, 26),
        [
            utc(2025, 10, 26, 0, 30),
            utc(2025, 10, 26, 1),
            utc(2025, 10, 26, 1, 30),
            utc(2025, 10, 26, 2),
        ],
        id="london-fall-every-30-minutes-of-real-time",
    ),
    pytest.param(
        "30 2 * * *",
        SYDNEY,
        utc(2025, 10, 4),
        [utc(2025, 10, 4, 16), utc(2025, 10, 5, 15, 30)],
        id="sydney-spring-october-gap-fires-at-03:00-AEDT",
    ),
    pytest.param(
        "30 2 * * *",
        SYDNEY,
        utc(2025, 4, 5),
        [utc(2025, 4, 5, 15, 30), utc(2025, 4, 6, 16, 30)],
        id="sydney-fall-april-fires-once",
    ),
    pytest.param(
        "30 * * * *",
        SYDNEY,
        utc(2025, 4, 5, 14),
        [
            utc(2025, 4, 5, 14, 30),
            utc(2025, 4, 5, 15, 30),
            utc(2025, 4, 5, 16, 30),
            utc(2025, 4, 5, 17, 30),
        ],
        id="sydney-fall-wildcard-hour-fires-both-02:30s",
    ),
]


@pytest.mark.parametrize(("expression", "zone", "after", "expected"), DST_CASES)
def test_dst_transitions(
    expression: str, zone: str, after: datetime, expected: list[datetime]
) -> None:
    assert next_fires(CronRule(expression, zone), after, len(expected)) == expected


def test_required_vectors() -> None:
    spring = CronRule("30 2 * * *", NY)
    assert list(fires_between(spring, utc(2025, 3, 9, 4), utc(2025, 3, 10, 4))) == [
        utc(2025, 3, 9, 7)
    ]
    fall = CronRule("30 1 * * *", NY)
    assert list(fires_between(fall, utc(2025, 11, 2, 4), utc(2025, 11, 3, 4))) == [
        utc(2025, 11, 2, 5, 30)
    ]


CALENDAR_CASES = [
    pytest.param(
        "0 0 31 * *",
        utc(2025, 1, 31),
        [utc(2025, 3, 31), utc(2025, 5, 31), utc(2025, 7, 31), utc(2025, 8, 31), utc(2025, 10, 31)],
        id="31st-skips-short-months",
    ),
    pytest.param(
        "0 12 29 2 *", utc(2025, 1, 1), [utc(2028, 2, 29, 12), utc(2032, 2, 29, 12)], id="leap-day"
    ),
    pytest.param(
        "0 0 13 * 5",
        utc(2025, 6, 1),
        [utc(2025, 6, d) for d in (6, 13, 20, 27)] + [utc(2025, 7, d) for d in (4, 11, 13, 18)],
        id="dom-or-dow-when-both-restricted",
    ),
    pytest.param(
        "0 0 */2 * 1",
        utc(2025, 1, 1),
        [utc(2025, 1, 13), utc(2025, 1, 27), utc(2025, 2, 3), utc(2025, 2, 17)],
        id="dom-and-dow-when-dom-starts-with-star",
    ),
    pytest.param(
        "15 10 * feb sat,sun",
        utc(2025, 1, 1),
        [utc(2025, 2, 1, 10, 15), utc(2025, 2, 2, 10, 15), utc(2025, 2, 8, 10, 15)],
        id="names",
    ),
    pytest.param(
        "0 0 1 JAN *", utc(2025, 6, 1), [utc(2026, 1, 1), utc(2027, 1, 1)], id="names-any-case"
    ),
    pytest.param(
        "0 0-23/6 * * *",
        utc(2025, 1, 1),
        [utc(2025, 1, 1, 6), utc(2025, 1, 1, 12), utc(2025, 1, 1, 18), utc(2025, 1, 2)],
        id="stepped-range",
    ),
    pytest.param(
        "10/20 * * * *",
        utc(2025, 1, 1),
        [utc(2025, 1, 1, 0, 10), utc(2025, 1, 1, 0, 30), utc(2025, 1, 1, 0, 50)],
        id="start-slash-step",
    ),
    pytest.param(
        "5,35 8-9 * * *",
        utc(2025, 1, 1),
        [
            utc(2025, 1, 1, 8, 5),
            utc(2025, 1, 1, 8, 35),
            utc(2025, 1, 1, 9, 5),
            utc(2025, 1, 1, 9, 35),
        ],
        id="lists-and-ranges",
    ),
    pytest.param(
        "5-5 0-0 * * *",
        utc(2025, 1, 1),
        [utc(2025, 1, 1, 0, 5), utc(2025, 1, 2, 0, 5)],
        id="one-value-range-is-that-value",
    ),
    pytest.param(
        "0 0 * * 7", utc(2025, 1, 1), [utc(2025, 1, 5), utc(2025, 1, 12)], id="seven-is-sunday"
    ),
    pytest.param(
        "0 0 * * fri-sun",
        utc(2025, 1, 1),
        [utc(2025, 1, 3), utc(2025, 1, 4), utc(2025, 1, 5), utc(2025, 1, 10)],
        id="range-ending-on-sunday",
    ),
    pytest.param(
        "0 0 1 jan-dec/3 *",
        utc(2025, 1, 1),
        [utc(2025, 4, 1), utc(2025, 7, 1)],
        id="named-range-step",
    ),
    pytest.param(
        "@daily", utc(2025, 1, 1, 5), [utc(2025, 1, 2), utc(2025, 1, 3)], id="macro-daily"
    ),
    pytest.param(
        "@weekly", utc(2025, 1, 1), [utc(2025, 1, 5), utc(2025, 1, 12)], id="macro-weekly"
    ),
]


@pytest.mark.parametrize(("expression", "after", "expected"), CALENDAR_CASES)
def test_calendar_and_syntax(expression: str, after: datetime, expected: list[datetime]) -> None:
    assert next_fires(CronRule(expression), after, len(expected)) == expected


def test_next_fire_is_strictly_after() -> None:
    rule = CronRule("0 12 * * *")
    assert next_fire(rule, utc(2025, 1, 1, 12)) == utc(2025, 1, 2, 12)
    assert next_fire(rule, utc(2025, 1, 1, 12) - timedelta(microseconds=1)) == utc(2025, 1, 1, 12)


def test_fires_between_excludes_start_and_includes_end() -> None:
    rule = CronRule("0 * * * *")
    assert list(fires_between(rule, utc(2025, 1, 1, 1), utc(2025, 1, 1, 3))) == [
        utc(2025, 1, 1, 2),
        utc(2025, 1, 1, 3),
    ]


def test_arguments_in_other_zones_and_naive_utc_agree() -> None:
    rule = CronRule("0 23 * * *", LONDON)
    aware = datetime(2025, 6, 1, 12, tzinfo=ZoneInfo("Asia/Tokyo"))
    assert next_fire(rule, aware) == next_fire(rule, datetime(2025, 6, 1, 3)) == utc(2025, 6, 1, 22)


def test_whitespace_is_normalised_and_rules_compare_by_value() -> None:
    assert CronRule("  0   23 * *\t1-5 ", LONDON) == CronRule("0 23 * * 1-5", LONDON)
    assert CronRule("0 23 * * 1-5", LONDON).expression == "0 23 * * 1-5"
    assert len({CronRule("0 0 * * *"), CronRule("0 0 * * *", "UTC")}) == 1


def test_sparse_expression_is_found_quickly_far_ahead() -> None:
    # Weekday-restricted leap day (Vixie AND, since day-of-week starts with '*'): years apart.
    rule = CronRule("0 0 29 2 */7")  # */7 is Sunday only
    assert next_fire(rule, utc(2025, 1, 1)) == utc(2032, 2, 29)
