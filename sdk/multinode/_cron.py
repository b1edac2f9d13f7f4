"""Cron expressions and wall-clock time: the machinery under :mod:`multinode.schedule_math`.

It parses the five-field Vixie cron syntax into sets of values, enumerates the wall-clock
times (naive datetimes) an expression matches, and maps wall times onto real instants in a
zone under the DST policy that :mod:`multinode.schedule_math` documents. It also names
zones for storage.

Syntax accepted (and nothing else, so a typo never silently means something):

* five whitespace-separated fields: minute (0-59), hour (0-23), day of month (1-31),
  month (1-12 or ``jan``-``dec``), day of week (0-7 or ``sun``-``sat``; 0 and 7 are Sunday);
* in each field a comma-separated list of items, each ``*``, a value, or a range ``a-b``
  (``a <= b``), optionally followed by a step ``/n`` (``n >= 1``); ``a/n`` means ``a-max/n``;
* the macros ``@yearly``/``@annually``, ``@monthly``, ``@weekly``, ``@daily``/``@midnight``
  and ``@hourly``.

Day matching follows Vixie cron: when the day-of-month and day-of-week fields both start with
something other than ``*`` a day matches if *either* field matches; otherwise (at least one of
them starts with ``*``, including ``*/n``) it must match both.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from multinode.errors import InvalidRequestError

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# (name, low, high, names) per field, in crontab order.
_FIELDS = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day-of-month", 1, 31, ()),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 0, 7, _WEEKDAYS),
)
_ITEM = re.compile(r"^(?:(?P<star>\*)|(?P<low>\w+)(?:-(?P<high>\w+))?)(?:/(?P<step>\w+))?$")
# Every (month, day, weekday) combination, leap days included, occurs within these 28 years.
CYCLE_START = date(2024, 1, 1)
CYCLE_DAYS = (date(2052, 1, 1) - CYCLE_START).days
# A valid expression matches at least once in any 28-year span except across a skipped
# century leap year; searching further than this means the expression can never match.
_HORIZON = timedelta(days=100 * 366)
UTC = timezone.utc
MICROSECOND = timedelta(microseconds=1)
_FIXED_OFFSET = re.compile(r"^UTC([+-])(\d\d):(\d\d)(?::(\d\d))?$")


@dataclass(frozen=True)
class CronSpec:
    """A parsed cron expression.

    Attributes:
        minutes: matching minutes, ascending.
        hours: matching hours, ascending.
        days: matching days of the month.
        months: matching months (1 = January).
        weekdays: matching days of the week (0 = Sunday; 7 is folded into 0).
        day_or: True when a day matches on day-of-month *or* day-of-week (both restricted).
        fixed_time: True when neither the minute nor the hour field has ``*`` or a step, so
            each day has a fixed list of wall-clock times (the DST policy depends on it).
    """

    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    day_or: bool
    fixed_time: bool

    def matches_day(self, day: date) -> bool:
        """Whether the expression fires at some time on ``day`` (a wall-clock date)."""
        if day.month not in self.months:
            return False
        in_days = day.day in self.days
        in_weekdays = (day.weekday() + 1) % 7 in self.weekdays
        return (in_days or in_weekdays) if self.day_or else (in_days and in_weekdays)


def cron_error(expression: str, problem: str, fix: str, *, reason: str) -> InvalidRequestError:
    """The error for an unusable cron expression: what is wrong, then how to fix it."""
    return InvalidRequestError(
        f"Invalid cron expression {expression!r}: {problem}. {fix}",
        details={"field": "cron", "reason": reason, "value": expression},
    )


MAX_EXPRESSION_LENGTH = 200


@functools.lru_cache(maxsize=4096)
def parse_cron(expression: str) -> CronSpec:
    """Parse a cron expression, raising :class:`InvalidRequestError` if it is malformed.

    Does not check that the expression ever fires (see :func:`first_matching_day`).
    """
    text = expression.strip()
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise cron_error(
            expression[:40] + "...",
            f"it is longer than {MAX_EXPRESSION_LENGTH} characters",
            "Write five short fields, e.g. '0 23 * * 1-5'.",
            reason="malformed_cron",
        )
    if re.match(r"^(CRON_TZ|TZ)\s*=", text, flags=re.IGNORECASE):
        raise cron_error(
            expression,
            "a time zone prefix inside the expression is not supported",
            "Remove it and pass the zone separately, e.g. timezone='Europe/London'.",
            reason="timezone_in_expression",
        )
    if text.startswith("@"):
        if text.lower() not in _MACROS:
            raise cron_error(
                expression,
                f"unknown macro {text!r}",
                f"Use one of {', '.join(sorted(_MACROS))} or five fields.",
                reason="malformed_cron",
            )
        text = _MACROS[text.lower()]
    parts = text.split()
    if len(parts) != 5:
        raise cron_error(
            expression,
            f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(parts)}",
            "Seconds and years are not supported; write e.g. '0 23 * * 1-5'.",
            reason="malformed_cron",
        )
    values = [
        _parse_field(expression, part, *spec) for part, spec in zip(parts, _FIELDS, strict=True)
    ]
    minutes, hours, days, months, weekdays = values
    return CronSpec(
        minutes=tuple(sorted(minutes)),
        hours=tuple(sorted(hours)),
        days=frozenset(days),
        months=frozenset(months),
        weekdays=frozenset(w % 7 for w in weekdays),
        # Vixie cron's DOM_STAR/DOW_STAR: a field "is *" when its text starts with '*'.
        day_or=not parts[2].startswith("*") and not parts[4].startswith("*"),
        fixed_time=not any(c in parts[0] + parts[1] for c in "*/"),
    )


def _parse_field(
    expression: str, text: str, name: str, low: int, high: int, names: tuple[str, ...]
) -> set[int]:
    result: set[int] = set()
    for item in text.split(","):
        match = _ITEM.match(item)
        if match is None:
            raise cron_error(
                expression,
                f"cannot read {item!r} in the {name} field",
                "Each item is '*', a value, or a range 'a-b', optionally followed by '/step'.",
                reason="malformed_cron",
            )
        if match["star"]:
            start, end = low, high
        else:
            start = _value(expression, match["low"], name, low, high, names)
            end = start
            if match["high"] is not None:
                end = _value(expression, match["high"], name, low, high, names)
                if names is _WEEKDAYS and match["high"].lower() == "sun":
                    end = 7  # 'fri-sun' ends on Sunday, the 7 of the numeric form
            elif match["step"] is not None:
                end = high  # 'a/n' is shorthand for 'a-max/n'
            if start > end:
                raise cron_error(
                    expression,
                    f"the range {item!r} in the {name} field runs backwards",
                    "Split it into ranges that do not wrap around, e.g. '22-23,0-2'.",
                    reason="malformed_cron",
                )
        step = 1
        if match["step"] is not None:
            if not match["step"].isdigit() or int(match["step"]) == 0:
                raise cron_error(
                    expression,
                    f"the step in {item!r} ({name} field) must be a whole number of at least 1",
                    "Write e.g. '*/15'.",
                    reason="malformed_cron",
                )
            step = int(match["step"])
        result.update(range(start, end + 1, step))
    return result


def _value(
    expression: str, token: str, name: str, low: int, high: int, names: tuple[str, ...]
) -> int:
    if token.isdigit():
        value = int(token)
        if low <= value <= high:
            return value
        raise cron_error(
            expression,
            f"{name} value {value} is out of range",
            f"Use a value from {low} to {high}.",
            reason="malformed_cron",
        )
    if token.lower() in names:
        # Month names count from 1; weekday names from 0 (Sunday), like their numbers.
        return names.index(token.lower()) + low
    hint = f" or a name ({names[0]}-{names[-1]})" if names else ""
    raise cron_error(
        expression,
        f"{token!r} is not a valid {name} value",
        f"Use a number from {low} to {high}{hint}.",
        reason="malformed_cron",
    )


def first_matching_day(spec: CronSpec, start: date, *, days: int) -> date | None:
    """The first day in ``[start, start + days)`` on which ``spec`` fires, or None."""
    try:
        day, end = start, start + timedelta(days=days)
        while day < end:
            if day.month not in spec.months:
                # Skip the whole month: sparse expressions (a leap day) then cost few steps.
                day = date(day.year + day.month // 12, day.month % 12 + 1, 1)
                continue
            if spec.matches_day(day):
                return day
            day += timedelta(days=1)
    except (OverflowError, ValueError):  # ran off the end of the calendar (year 9999)
        return None
    return None


def iter_walls(spec: CronSpec, start: datetime) -> Iterator[datetime]:
    """Yield, in increasing order, every naive wall-clock time ``>= start`` that matches.

    Stops (rather than looping forever) once no day matches within a century, which only
    happens near the end of the calendar or for expressions that never fire.
    """
    day = start.date()
    floor = start
    while True:
        found = first_matching_day(spec, day, days=_HORIZON.days)
        if found is None:
            return
        for hour in spec.hours:
            if found == floor.date() and hour < floor.hour:
                continue
            for minute in spec.minutes:
                wall = datetime(found.year, found.month, found.day, hour, minute)
                if wall >= floor:
                    yield wall
        if found == date.max:
            return
        day = found + timedelta(days=1)


def regular_gap_below(spec: CronSpec, limit: timedelta) -> timedelta | None:
    """The smallest wall-clock gap between consecutive fires if it is below ``limit``.

    Gaps are measured on the wall clock, as if the zone never changed its offset, so a gap
    that a DST transition shortens does not count. Returns None when every gap is at least
    ``limit``. Assumes the expression fires at all.
    """
    times = sorted(h * 60 + m for h in spec.hours for m in spec.minutes)
    within = min((b - a for a, b in zip(times, times[1:], strict=False)), default=None)
    best = timedelta(minutes=within) if within is not None else None
    if best is not None and best >= limit:
        best = None
    # From the last fire of one matching day to the first fire of the next matching day:
    # at least `overnight`, more when the days are not consecutive.
    overnight = timedelta(minutes=times[0] + 24 * 60 - times[-1])
    if overnight >= (best or limit):
        return best
    previous: date | None = None
    day, end = CYCLE_START, CYCLE_START + timedelta(days=CYCLE_DAYS)
    while (found := first_matching_day(spec, day, days=(end - day).days)) is not None:
        if previous is not None:
            gap = overnight + (found - previous) - timedelta(days=1)
            if gap < (best or limit):
                best = gap
            if gap == overnight:
                break  # consecutive days: nothing can be closer
        previous, day = found, found + timedelta(days=1)
    return best


def fires_after(spec: CronSpec, zone: tzinfo, after: datetime) -> Iterator[datetime]:
    """Yield the fires of ``spec`` in ``zone`` strictly after ``after`` (aware), increasing, in UTC.

    Applies the DST policy of :mod:`multinode.schedule_math`: fixed-time expressions fire
    once per matching wall time at its first instant; others fire at every real instant whose
    wall time matches.
    """
    local = after.astimezone(zone)
    start = local.replace(tzinfo=None, fold=0)
    repeat = utc_offset(local.replace(fold=0)) - utc_offset(local.replace(fold=1))
    if local.fold == 0 and repeat > timedelta(0):
        # `after` is in the first pass of a repeated hour: second occurrences of wall times
        # just before its own are still to come.
        start -= repeat
    # Walls come in order and their first instants are non-decreasing; second occurrences
    # (real-time expressions only) wait here until a later first instant passes them.
    pending: deque[datetime] = deque()
    last = after
    for wall in iter_walls(spec, start):
        moments = instants(wall, zone)
        if not moments:
            if not spec.fixed_time:
                continue
            moments = (first_instant(wall, zone),)
        elif spec.fixed_time:
            moments = moments[:1]
        while pending and pending[0] < moments[0]:
            instant = pending.popleft()
            if instant > last:
                yield instant
                last = instant
        if moments[0] > last:
            yield moments[0]
            last = moments[0]
        pending.extend(moments[1:])
    yield from (instant for instant in pending if instant > last)


def instants(wall: datetime, zone: tzinfo) -> tuple[datetime, ...]:
    """The UTC instants at which the clock in ``zone`` shows ``wall``: one, two, or none.

    Relies on PEP 495, which ``zoneinfo`` implements: in a repeated hour ``fold=0`` gives
    the earlier instant (larger offset); in a gap it gives the pre-transition offset.
    """
    first = utc_offset(wall.replace(tzinfo=zone, fold=0))
    second = utc_offset(wall.replace(tzinfo=zone, fold=1))
    base = wall.replace(tzinfo=UTC, fold=0)
    if first == second:
        return (base - first,)
    if first > second:
        return (base - first, base - second)
    return ()


def first_instant(wall: datetime, zone: tzinfo) -> datetime:
    """The first instant at which the clock in ``zone`` shows ``wall`` or later, in UTC.

    That is ``wall`` itself, its first occurrence if the clocks go back over it, or the end
    of the gap if they skip it.
    """
    moments = instants(wall, zone)
    if moments:
        return moments[0]
    # In a gap: `before` reads earlier than `wall`, `after` later; find the transition by
    # bisection (zoneinfo does not expose its transition table).
    base = wall.replace(tzinfo=UTC, fold=0)
    before = base - utc_offset(wall.replace(tzinfo=zone, fold=1))
    after = base - utc_offset(wall.replace(tzinfo=zone, fold=0))
    while after - before > MICROSECOND:
        middle = before + (after - before) // 2
        if wall_time(middle, zone) >= wall:
            after = middle
        else:
            before = middle
    return after


def wall_time(instant: datetime, zone: tzinfo) -> datetime:
    """The naive wall-clock time that ``instant`` shows in ``zone``."""
    return instant.astimezone(zone).replace(tzinfo=None, fold=0)


def utc_offset(value: datetime) -> timedelta:
    """``value.utcoffset()`` of an aware datetime, never None."""
    offset = value.utcoffset()
    assert offset is not None
    return offset


def zone_name(zone: tzinfo | None) -> str:
    """How a zone is stored and shown: its IANA key, ``"UTC"``, or ``"UTC+05:30"``."""
    if isinstance(zone, ZoneInfo) and zone.key is not None:
        return zone.key
    offset = zone.utcoffset(None) if zone is not None else timedelta(0)
    assert offset is not None
    if not offset:
        return "UTC"
    sign = "-" if offset < timedelta(0) else "+"
    minutes, seconds = divmod(int(abs(offset).total_seconds()), 60)
    return f"UTC{sign}{minutes // 60:02d}:{minutes % 60:02d}" + (
        f":{seconds:02d}" if seconds else ""
    )


def stored_zone(name: str) -> tzinfo:
    """The inverse of :func:`zone_name`. Raises InvalidRequestError for an unknown name."""
    if name == "UTC":
        return UTC
    match = _FIXED_OFFSET.match(name)
    if match is None:
        return zone_from_name(name)
    sign, hours, minutes, seconds = match.groups()
    offset = timedelta(hours=int(hours), minutes=int(minutes), seconds=int(seconds or 0))
    return timezone(-offset if sign == "-" else offset)


def zone_from_name(name: object) -> ZoneInfo:
    """The IANA zone called ``name`` (or ``name`` itself if already a keyed ZoneInfo).

    Raises:
        InvalidRequestError: for an unknown or machine-dependent name, suggesting a close one.
    """
    if isinstance(name, ZoneInfo) and name.key is not None:
        return name
    if isinstance(name, str) and name != "localtime":  # 'localtime' differs per machine
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            pass
    hint = ""
    if isinstance(name, str):
        keys = {key.lower(): key for key in _zone_keys()}
        close = difflib.get_close_matches(name.strip().lower(), keys, n=1)
        hint = f" Did you mean {keys[close[0]]!r}?" if close else ""
    raise InvalidRequestError(
        f"Unknown timezone {name!r}: use an IANA name such as 'Europe/London' or 'UTC'.{hint}",
        details={"field": "timezone", "reason": "unknown_timezone", "value": str(name)},
    )


@functools.lru_cache(maxsize=1)
def _zone_keys() -> frozenset[str]:
    return frozenset(available_timezones())
