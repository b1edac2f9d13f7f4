"""Properties over random rules, zones and times, checked against independent oracles."""

from __future__ import annotations

import bisect
import functools
import itertools
import re
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from croniter import croniter
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from multinode import _cron
from multinode.errors import InvalidRequestError
from multinode.schedule_math import CronRule, IntervalRule, fires_between, next_fire, next_fires

UTC = timezone.utc
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Both hemispheres, 30-minute DST (Lord Howe), negative DST (Dublin), transitions at midnight
# (Santiago, Havana), and zones without DST.
ZONES = [
    "UTC",
    "America/New_York",
    "Europe/London",
    "Australia/Sydney",
    "Australia/Lord_Howe",
    "Europe/Dublin",
    "America/Santiago",
    "America/Havana",
    "Pacific/Auckland",
    "Asia/Kolkata",
]


def _field(low: int, high: int, names: tuple[str, ...] = ()) -> st.SearchStrategy[str]:
    value = st.integers(low, high)
    token = value.map(str) if not names else st.one_of(value.map(str), st.sampled_from(names))
    span = st.tuples(value, value).map(sorted).map(lambda ab: f"{ab[0]}-{ab[1]}")
    item = st.one_of(
        st.just("*"),
        st.integers(1, high).map(lambda n: f"*/{n}"),
        token,
        span,
        st.tuples(span, st.integers(1, 12)).map(lambda p: f"{p[0]}/{p[1]}"),
    )
    return st.lists(item, min_size=1, max_size=3).map(",".join)


WEEKDAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
expressions = st.tuples(
    _field(0, 59),
    _field(0, 23),
    _field(1, 31),
    _field(1, 12, MONTH_NAMES),
    _field(0, 6, WEEKDAY_NAMES),
).map(" ".join)
instants = st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2060, 1, 1)).map(
    lambda d: d.replace(tzinfo=UTC)
)


@functools.cache
def _transitions(zone: str, year: int) -> tuple[datetime, ...]:
    """The instants (to the minute) at which ``zone`` changes its UTC offset in ``year``."""
    tz = ZoneInfo(zone)
    found = []
    day = datetime(year, 1, 1, tzinfo=UTC)
    while day.year == year:
        low, high = day, day + timedelta(days=1)
        if low.astimezone(tz).utcoffset() != high.astimezone(tz).utcoffset():
            while high - low > timedelta(minutes=1):
                middle = low + (high - low) / 2
                same = middle.astimezone(tz).utcoffset() == low.astimezone(tz).utcoffset()
                low, high = (middle, high) if same else (low, middle)
            found.append(high.replace(second=0, microsecond=0))
        day += timedelta(days=1)
    return tuple(found)


@st.composite
def near_transition(draw: st.DrawFn) -> tuple[str, datetime]:
    """A zone and an instant within a few hours before or just after one of its DST changes."""
    zone = draw(st.sampled_from([z for z in ZONES if _transitions(z, 2025)]))
    changes = _transitions(zone, draw(st.integers(2000, 2040)))
    assume(changes)
    change = draw(st.sampled_from(changes))
    return zone, change + timedelta(minutes=draw(st.integers(-240, 60)))


def _cron_rule(expression: str, zone: str) -> CronRule:
    try:
        return CronRule(expression, zone)
    except InvalidRequestError:
        assume(False)
        raise


@FAST
@given(expression=expressions, zone=st.sampled_from(ZONES), after=instants, near=near_transition())
def test_cron_fires_strictly_increase_and_agree_with_next_fire(
    expression: str, zone: str, after: datetime, near: tuple[str, datetime]
) -> None:
    for zone_name, start in ((zone, after), near):
        rule = _cron_rule(expression, zone_name)
        fires = next_fires(rule, start, 20)
        assert fires and fires[0] > start
        assert all(a < b for a, b in zip(fires, fires[1:], strict=False))
        assert all(f.tzinfo is UTC for f in fires)
        for previous, following in zip(fires, fires[1:], strict=False):
            assert next_fire(rule, previous) == following
            assert next_fire(rule, following - timedelta(microseconds=1)) == following


def _minute_grid(zone: str, start: datetime, minutes: int) -> list[tuple[datetime, datetime]]:
    tz = ZoneInfo(zone)
    grid = [start + timedelta(minutes=m) for m in range(minutes + 1)]
    return [(u, u.astimezone(tz).replace(tzinfo=None)) for u in grid]


def _matches(spec: _cron.CronSpec, wall: datetime) -> bool:
    return wall.minute in spec.minutes and wall.hour in spec.hours and spec.matches_day(wall.date())


@FAST
@given(
    near=near_transition(),
    expression=st.sampled_from(
        ["30 * * * *", "*/15 * * * *", "0 */2 * * *", "* 1 * * *", "*/20 0-3 * * *", "*/7 * * * *"]
    ),
)
def test_real_time_expressions_fire_at_every_instant_whose_wall_time_matches(
    near: tuple[str, datetime], expression: str
) -> None:
    # Oracle: every UTC minute of a five-hour window whose local wall time matches.
    zone, start = near
    spec = _cron.parse_cron(expression)
    grid = _minute_grid(zone, start, 300)
    expected = [u for u, wall in grid[1:] if _matches(spec, wall)]
    assert list(fires_between(CronRule(expression, zone), start, grid[-1][0])) == expected


@FAST
@given(
    near=near_transition(),
    expression=st.sampled_from(
        [
            "30 2 * * *",
            "0,30 1-3 * * *",
            "45 0,1,2 * * *",
            "0-59 2 * * *",
            "15 0 * * *",
            "59 23 * * *",
        ]
    ),
)
def test_fixed_time_expressions_fire_once_per_wall_time_at_its_first_instant(
    near: tuple[str, datetime], expression: str
) -> None:
    # Oracle: for each matching wall time, the first grid minute whose wall time reaches it
    # (a running maximum makes "reaches" a bisection). Walls near the grid's ends are cut off.
    zone, start = near
    spec = _cron.parse_cron(expression)
    grid = _minute_grid(zone, start - timedelta(hours=3), 11 * 60)
    reached = list(itertools.accumulate((wall for _, wall in grid), max))
    expected = set()
    wall = grid[0][1].replace(second=0, microsecond=0)
    while wall <= reached[-1]:
        if _matches(spec, wall):
            expected.add(grid[bisect.bisect_left(reached, wall)][0])
        wall += timedelta(minutes=1)
    end = start + timedelta(hours=5)
    wanted = sorted(u for u in expected if start < u <= end)
    assert list(fires_between(CronRule(expression, zone), start, end)) == wanted


@FAST
@given(
    zone=st.sampled_from(ZONES),
    hour=st.integers(0, 23),
    minute=st.integers(0, 59),
    year=st.integers(1995, 2045),
)
def test_fixed_daily_time_fires_exactly_once_on_every_local_date(
    zone: str, hour: int, minute: int, year: int
) -> None:
    tz = ZoneInfo(zone)
    rule = CronRule(f"{minute} {hour} * * *", zone)
    start = datetime(year, 1, 1, tzinfo=tz) - timedelta(microseconds=1)
    end = datetime(year, 12, 31, 23, 59, tzinfo=tz)
    local = [f.astimezone(tz) for f in fires_between(rule, start, end)]
    first = date(year, 1, 1)
    assert [f.date() for f in local] == [
        first + timedelta(days=i) for i in range((date(year + 1, 1, 1) - first).days)
    ]
    for fire in local:
        wanted = fire.replace(hour=hour, minute=minute, fold=0)
        if wanted.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == wanted.replace(
            tzinfo=None
        ):
            # The time exists that day: it fires at it, at its first occurrence.
            assert fire.astimezone(UTC) == wanted.astimezone(UTC)
        else:
            # Skipped that day: the fire is the first instant after the gap.
            assert fire.replace(tzinfo=None) > wanted.replace(tzinfo=None)
            assert (fire.astimezone(UTC) - timedelta(seconds=1)).astimezone(tz).replace(
                tzinfo=None
            ) < wanted.replace(tzinfo=None)


@FAST
@given(
    reference=st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2050, 1, 1)),
    zone=st.sampled_from([*ZONES, "UTC+05:30", "UTC-03:00"]),
    seconds=st.integers(60, 40 * 86400).filter(lambda s: s % 86400),
    after=instants,
)
def test_exact_interval_fires_are_congruent_to_the_reference(
    reference: datetime, zone: str, seconds: int, after: datetime
) -> None:
    tzinfo = _cron.stored_zone(zone)
    assume(_cron.instants(reference, tzinfo))  # a reference inside a DST gap is refused
    rule = IntervalRule(reference.replace(tzinfo=tzinfo), timedelta(seconds=seconds))
    anchor = rule.reference_time.astimezone(UTC)
    fires = next_fires(rule, after, 10)
    assert fires[0] > after and fires[0] - timedelta(seconds=seconds) <= after
    for fire in fires:
        assert (fire - anchor) % timedelta(seconds=seconds) == timedelta(0)
    assert all(b - a == timedelta(seconds=seconds) for a, b in zip(fires, fires[1:], strict=False))


@FAST
@given(
    reference=st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2050, 1, 1)),
    zone=st.sampled_from(ZONES),
    days=st.integers(1, 10),
    after=instants,
)
def test_whole_day_intervals_keep_the_local_date_step(
    reference: datetime, zone: str, days: int, after: datetime
) -> None:
    tz = ZoneInfo(zone)
    assume(_cron.instants(reference, tz))
    rule = IntervalRule(reference.replace(tzinfo=tz), timedelta(days=days))
    fires = [f.astimezone(tz) for f in next_fires(rule, after, 10)]
    assert fires[0] > after
    for fire in fires:
        assert (fire.date() - reference.date()).days % days == 0
    assert all((b.date() - a.date()).days == days for a, b in zip(fires, fires[1:], strict=False))


# Expressions where croniter's day rule is Vixie's: a day field starting with '*' is exactly '*'.
plain_day = st.one_of(st.just("*"), st.integers(1, 28).map(str), st.just("1,15"), st.just("10-20"))
plain_weekday = st.one_of(st.just("*"), st.just("1-5"), st.just("0,6"), st.just("fri"))


@FAST
@given(
    minute=_field(0, 59),
    hour=_field(0, 23),
    day=plain_day,
    month=_field(1, 12, MONTH_NAMES),
    weekday=plain_weekday,
    after=instants,
)
def test_matches_croniter_in_utc(
    minute: str, hour: str, day: str, month: str, weekday: str, after: datetime
) -> None:
    # With no DST, croniter 7 is an independent implementation of the same fields, except
    # that it reads a one-value range such as '5-5' (or '5-5/2') as '*'.
    expression = f"{minute} {hour} {day} {month} {weekday}"
    assume(not re.search(r"\b(\w+)-\1\b", expression))
    rule = _cron_rule(expression, "UTC")
    it = croniter(expression, after)
    assert next_fires(rule, after, 5) == [it.get_next(datetime) for _ in range(5)]


def test_module_never_reads_the_clock() -> None:
    import ast
    import inspect

    from multinode import schedule_math

    clocks = {"now", "utcnow", "today", "time", "monotonic", "perf_counter", "time_ns"}
    for module in (schedule_math, _cron):
        tree = ast.parse(inspect.getsource(module))
        calls = {
            node.func.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        }
        imports = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        assert not calls & clocks and "time" not in imports, module.__name__
