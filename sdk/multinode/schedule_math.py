"""When schedules fire: the one implementation shared by the SDK and the scheduler.

A rule is an :class:`IntervalRule` or a :class:`CronRule`, frozen and checked when built.
:func:`validate` adds the minimum spacing between runs, which servers may configure.
:func:`next_fire`, :func:`next_fires` and :func:`fires_between` are pure: every "now" is an
argument, results are aware datetimes in UTC, and a naive datetime given to this module
means UTC. Rules serialise to a versioned dict (``"format": 1``) for storage.

Interval rules
    Fire at ``reference_time + k * interval`` for every whole k, negative k included: the
    reference time fixes the phase, not a start. ``period=``, and ``interval=`` without
    ``reference_time=``, anchor at 1970-01-01 00:00 UTC. Fire k is computed from k, never by
    adding to the previous fire, so the phase cannot drift.

    * A whole number of days with a reference time in an IANA zone (``ZoneInfo``) keeps the
      wall-clock time: fire k is at local date ``reference date + k * days`` at the
      reference's wall time, resolved by the *first-instant rule* below (23:00 London stays
      23:00 London across DST). The reference's own ``fold`` does not matter.
    * Any other interval, or a reference with a fixed offset (``datetime.timezone``), is
      exact elapsed time: fire k is the instant ``reference + k * interval``.

    A reference wall time that does not exist in its zone (inside a spring-forward gap) is
    rejected. A tzinfo other than ``ZoneInfo`` or ``datetime.timezone`` (e.g. pytz) is
    replaced by the ``ZoneInfo`` of the same name if they agree on the offset, else rejected.

Cron rules
    Five fields, Vixie semantics (see :mod:`multinode._cron`), evaluated on the wall clock of
    ``timezone`` (an IANA name, default ``"UTC"``).

    * *Fixed-time* expressions, whose minute and hour fields contain neither ``*`` nor a
      step ``/`` (values, lists, plain ranges: ``30 2 * * *``, ``0 9-17 * * 1-5``), fire once
      per matching wall time by the first-instant rule. Several skipped wall times in one gap
      fire once, together.
    * Other expressions (``30 * * * *``, ``*/15 * * * *``, ``0 */2 * * *``) follow real
      time: they fire at every instant whose local wall time matches. A skipped wall time
      never occurs, so it does not fire; a repeated one fires at both occurrences (01:30 EDT
      and 01:30 EST for ``30 * * * *`` in New York on 2025-11-02).

The first-instant rule
    A wall time fires at the first instant at which the local clock shows that time or later:
    the time itself when it occurs once; its first occurrence (``fold=0``) when the clocks go
    back and it occurs twice; the end of the gap when the clocks skip it (``02:30`` in New
    York on 2025-03-09 fires at 03:00 EDT, 07:00 UTC).

Minimum spacing (:func:`validate`)
    An interval must be at least ``min_interval``. A cron expression is rejected when two
    consecutive fires can be closer than ``min_interval`` on the wall clock, that is as if the
    zone never changed offset: a gap shortened only by a DST transition does not count.
    Day patterns are checked over a 28-year cycle, so every leap day and weekday combination
    is seen.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from multinode import _cron
from multinode.errors import InvalidRequestError

UTC = timezone.utc
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DEFAULT_MIN_INTERVAL = timedelta(minutes=15)
FORMAT = 1

_DAY = timedelta(days=1)


def _invalid(message: str, *, field: str, reason: str, **extra: Any) -> InvalidRequestError:
    return InvalidRequestError(message, details={"field": field, "reason": reason, **extra})


@dataclass(frozen=True, eq=False)
class IntervalRule:
    """Fire every ``interval``, in phase with ``reference_time``.

    Attributes:
        reference_time: aware; its tzinfo is a ``ZoneInfo`` with a key or a
            ``datetime.timezone``. A naive value given to the constructor means UTC.
        interval: positive. The minimum spacing is checked by :func:`validate`.

    Raises:
        InvalidRequestError: on a wrong type, a non-positive interval, an unsupported tzinfo
            or a reference wall time that its zone skips.
    """

    reference_time: datetime
    interval: timedelta
    kind: ClassVar[Literal["interval"]] = "interval"

    def __post_init__(self) -> None:
        object.__setattr__(self, "reference_time", _normalize_reference(self.reference_time))
        if not isinstance(self.interval, timedelta):
            raise _invalid(
                f"Schedule interval must be a datetime.timedelta, got "
                f"{type(self.interval).__name__} {self.interval!r}: write e.g. "
                "interval=timedelta(hours=6).",
                field="interval",
                reason="not_a_timedelta",
            )
        if self.interval <= timedelta(0):
            raise _invalid(
                f"Schedule interval must be positive, got {_duration(self.interval)}: write "
                "e.g. interval=timedelta(hours=6).",
                field="interval",
                reason="not_positive",
            )

    @property
    def timezone(self) -> str:
        """The reference's zone: an IANA name, ``"UTC"``, or a fixed offset ``"UTC+05:30"``."""
        return _cron.zone_name(self.reference_time.tzinfo)

    @property
    def keeps_wall_time(self) -> bool:
        """True when fires keep the reference's local wall time (whole days in an IANA zone)."""
        return isinstance(self.reference_time.tzinfo, ZoneInfo) and not self.interval % _DAY

    def describe(self) -> str:
        """A human summary, e.g. ``"every 1 day from 2023-09-08 23:00 Europe/London"``."""
        return f"every {_duration(self.interval)} from {_wall_text(self.reference_time)} {self.timezone}"

    def to_json(self) -> dict[str, Any]:
        """A versioned, JSON-ready dict; :func:`rule_from_json` reads it back equal."""
        seconds = self.interval.total_seconds()
        return {
            "format": FORMAT,
            "kind": self.kind,
            "reference_time": self.reference_time.replace(tzinfo=None, fold=0).isoformat(),
            "fold": self.reference_time.fold,
            "timezone": self.timezone,
            "interval_seconds": int(seconds) if seconds.is_integer() else seconds,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IntervalRule:
        """Rebuild a rule from :meth:`to_json` output. Raises InvalidRequestError if malformed."""
        _check_stored(data, cls.kind)
        try:
            wall = datetime.fromisoformat(data["reference_time"])
            seconds = data["interval_seconds"]
            if isinstance(seconds, bool) or not math.isfinite(seconds):
                raise ValueError(f"interval_seconds must be a finite number, not {seconds!r}")
            interval = timedelta(seconds=seconds)
            fold, zone_name = data.get("fold", 0), str(data["timezone"])
            if fold not in (0, 1) or isinstance(fold, bool):
                raise ValueError(f"fold must be 0 or 1, not {fold!r}")
            wall = wall.replace(tzinfo=_cron.stored_zone(zone_name), fold=fold)
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise _invalid(
                f"Stored schedule is malformed: {exc!r}.", field="schedule", reason="malformed_json"
            ) from exc
        return cls(wall, interval)

    def __eq__(self, other: object) -> bool:
        # datetime equality ignores the zone, which matters here (it decides the wall clock).
        return isinstance(other, IntervalRule) and self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.to_json().items())))


@dataclass(frozen=True)
class CronRule:
    """Fire when a five-field cron expression matches the wall clock of ``timezone``.

    Attributes:
        expression: the expression, whitespace normalised to single spaces.
        timezone: an IANA zone name (a ``ZoneInfo`` given to the constructor becomes its key).

    Raises:
        InvalidRequestError: on a malformed expression, a ``CRON_TZ=``/``TZ=`` prefix, an
            expression that can never fire, or an unknown zone.
    """

    expression: str
    timezone: str = "UTC"
    kind: ClassVar[Literal["cron"]] = "cron"
    _spec: _cron.CronSpec = field(init=False, repr=False, compare=False)
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.expression, str):
            raise _invalid(
                f"Cron expression must be a string such as '0 23 * * *', got {self.expression!r}.",
                field="cron",
                reason="not_a_string",
            )
        expression = " ".join(self.expression.split())
        zone = _cron.zone_from_name(self.timezone)
        object.__setattr__(self, "expression", expression)
        object.__setattr__(self, "timezone", zone.key)
        object.__setattr__(self, "_spec", _checked_spec(expression))
        object.__setattr__(self, "_zone", zone)

    def describe(self) -> str:
        """A human summary, e.g. ``"cron '0 23 * * 1-5' in Europe/London"``."""
        return f"cron {self.expression!r} in {self.timezone}"

    def to_json(self) -> dict[str, Any]:
        """A versioned, JSON-ready dict; :func:`rule_from_json` reads it back equal."""
        return {
            "format": FORMAT,
            "kind": self.kind,
            "expression": self.expression,
            "timezone": self.timezone,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CronRule:
        """Rebuild a rule from :meth:`to_json` output. Raises InvalidRequestError if malformed."""
        _check_stored(data, cls.kind)
        try:
            return cls(data["expression"], data["timezone"])
        except KeyError as exc:
            raise _invalid(
                f"Stored schedule is malformed: missing {exc}.",
                field="schedule",
                reason="malformed_json",
            ) from exc


ScheduleRule = IntervalRule | CronRule


def rule_from_args(
    *,
    interval: timedelta | None = None,
    period: timedelta | None = None,
    reference_time: datetime | None = None,
    cron: str | None = None,
    timezone: str | ZoneInfo | None = None,
    min_interval: timedelta = DEFAULT_MIN_INTERVAL,
) -> ScheduleRule:
    """Build and :func:`validate` the rule that a schedule decorator's arguments describe.

    Exactly one of ``interval``, ``period`` (the same, anchored at the Unix epoch) and
    ``cron`` must be given; ``reference_time`` goes only with ``interval`` and ``timezone``
    only with ``cron``.

    Raises:
        InvalidRequestError: naming the argument and the fix.
    """
    given = [
        n for n, v in (("interval", interval), ("period", period), ("cron", cron)) if v is not None
    ]
    if not given:
        raise _invalid(
            "A schedule needs one of interval=, period= or cron=, e.g. "
            "interval=timedelta(hours=6) or cron='0 23 * * *'.",
            field="interval",
            reason="missing_argument",
        )
    if len(given) > 1:
        raise _invalid(
            f"A schedule takes only one of interval=, period= and cron=, got {' and '.join(given)}=: keep one.",
            field=given[1],
            reason="conflicting_arguments",
        )
    rule: ScheduleRule
    if cron is not None:
        if reference_time is not None:
            raise _invalid(
                "reference_time= applies to interval schedules only; a cron expression sets its own times.",
                field="reference_time",
                reason="conflicting_arguments",
            )
        rule = CronRule(cron, "UTC" if timezone is None else timezone)  # type: ignore[arg-type]
    else:
        if timezone is not None:
            raise _invalid(
                "timezone= applies to cron schedules only; for an interval give reference_time= "
                "an aware datetime, e.g. datetime(2023, 9, 8, 23, 0, tzinfo=ZoneInfo('Europe/London')).",
                field="timezone",
                reason="conflicting_arguments",
            )
        if period is not None and reference_time is not None:
            raise _invalid(
                "period= is anchored at the Unix epoch; to choose the phase, use interval= with reference_time=.",
                field="reference_time",
                reason="conflicting_arguments",
            )
        every = interval if interval is not None else period
        rule = IntervalRule(EPOCH if reference_time is None else reference_time, every)  # type: ignore[arg-type]
    return validate(rule, min_interval=min_interval)


def validate(rule: ScheduleRule, *, min_interval: timedelta = DEFAULT_MIN_INTERVAL) -> ScheduleRule:
    """Check that ``rule`` never fires closer together than ``min_interval``; return it.

    Raises:
        InvalidRequestError: for an interval under the minimum, or a cron expression whose
            smallest regular (wall-clock) gap is under it; the message names the minimum.
    """
    if not isinstance(min_interval, timedelta) or min_interval < timedelta(0):
        raise TypeError(f"min_interval must be a non-negative timedelta, got {min_interval!r}")
    minimum = _duration(min_interval)
    if isinstance(rule, IntervalRule):
        if rule.interval < min_interval:
            raise _invalid(
                f"Schedule interval of {_duration(rule.interval)} is shorter than the minimum "
                f"of {minimum} between runs: use an interval of at least {minimum}.",
                field="interval",
                reason="too_frequent",
                minimum_seconds=min_interval.total_seconds(),
            )
        return rule
    if not isinstance(rule, CronRule):
        raise TypeError(f"expected an IntervalRule or a CronRule, got {type(rule).__name__}")
    gap = _cron.regular_gap_below(rule._spec, min_interval)
    if gap is not None:
        raise _invalid(
            f"Cron expression {rule.expression!r} fires {_duration(gap)} apart at its closest, "
            f"more often than the minimum of {minimum} between runs: space its times at least "
            f"{minimum} apart (e.g. '*/15 * * * *' for every 15 minutes).",
            field="cron",
            reason="too_frequent",
            minimum_seconds=min_interval.total_seconds(),
        )
    return rule


def rule_from_json(data: dict[str, Any]) -> ScheduleRule:
    """Rebuild either kind of rule from its :meth:`to_json` dict."""
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind == IntervalRule.kind:
        return IntervalRule.from_json(data)
    if kind == CronRule.kind:
        return CronRule.from_json(data)
    raise _invalid(
        f"Stored schedule has unknown kind {kind!r}.", field="kind", reason="malformed_json"
    )


def next_fire(rule: ScheduleRule, after: datetime) -> datetime:
    """The first fire strictly after ``after``, as an aware UTC datetime.

    Raises:
        InvalidRequestError: if the rule never fires again (only near the end of the calendar).
    """
    for instant in _fires_after(rule, _as_utc(after, "after")):
        return instant
    raise _invalid(
        f"Schedule {rule.describe()} never fires after {after}.",
        field="after",
        reason="no_next_fire",
    )


def next_fires(rule: ScheduleRule, after: datetime, count: int) -> list[datetime]:
    """The first ``count`` fires strictly after ``after``, increasing, in UTC (fewer only at
    the end of the calendar)."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    return list(itertools.islice(_fires_after(rule, _as_utc(after, "after")), count))


def fires_between(rule: ScheduleRule, start: datetime, end: datetime) -> Iterator[datetime]:
    """Every fire in ``(start, end]``, strictly increasing, in UTC. Lazy: cheap to stop early."""
    limit = _as_utc(end, "end")
    return itertools.takewhile(lambda t: t <= limit, _fires_after(rule, _as_utc(start, "start")))


# --- fire generation -------------------------------------------------------------------------


def _fires_after(rule: ScheduleRule, after: datetime) -> Iterator[datetime]:
    if isinstance(rule, CronRule):
        return _cron.fires_after(rule._spec, rule._zone, after)
    if rule.keeps_wall_time:
        return _calendar_fires(rule, after)
    return _exact_fires(rule, after)


def _exact_fires(rule: IntervalRule, after: datetime) -> Iterator[datetime]:
    reference = rule.reference_time.astimezone(UTC)
    k = (after - reference) // rule.interval + 1
    try:
        while True:
            yield reference + k * rule.interval
            k += 1
    except OverflowError:  # past year 9999
        return


def _calendar_fires(rule: IntervalRule, after: datetime) -> Iterator[datetime]:
    zone = rule.reference_time.tzinfo
    assert isinstance(zone, ZoneInfo)
    origin = rule.reference_time.replace(tzinfo=None, fold=0)

    def fire(k: int) -> datetime:
        return _cron.first_instant(origin + k * rule.interval, zone)

    try:
        # Fires are non-decreasing in k, so start at or below the answer and walk up.
        k = (_cron.wall_time(after, zone) - origin) // rule.interval
        while fire(k) > after:
            k -= 1
        last = after
        while True:
            instant = fire(k)
            if instant > last:
                yield instant
                last = instant
            k += 1
    except OverflowError:
        return


# --- arguments, zones, storage ---------------------------------------------------------------


def _as_utc(value: datetime, name: str) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.utcoffset() is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _normalize_reference(value: datetime) -> datetime:
    if not isinstance(value, datetime):
        raise _invalid(
            f"reference_time must be a datetime, got {type(value).__name__} {value!r}.",
            field="reference_time",
            reason="not_a_datetime",
        )
    zone = value.tzinfo
    if zone is None or value.utcoffset() is None:
        return value.replace(tzinfo=UTC)
    if not isinstance(zone, (ZoneInfo, timezone)) or (
        isinstance(zone, ZoneInfo) and zone.key is None
    ):
        value = _as_zoneinfo(value)
    if not _cron.instants(value.replace(tzinfo=None), value.tzinfo):  # type: ignore[arg-type]
        raise _invalid(
            f"reference_time {value.replace(tzinfo=None)} does not exist in {_cron.zone_name(value.tzinfo)} "
            "(the clocks skip it that day): pick a time that exists, e.g. on another date.",
            field="reference_time",
            reason="nonexistent_time",
        )
    return value


def _as_zoneinfo(value: datetime) -> datetime:
    """Swap a foreign tzinfo (pytz, dateutil) for the ZoneInfo of the same name if they agree."""
    name = getattr(value.tzinfo, "key", None) or getattr(value.tzinfo, "zone", None)
    try:
        converted = value.astimezone(ZoneInfo(name)) if isinstance(name, str) else None
    except (ZoneInfoNotFoundError, ValueError):
        converted = None
    if converted is None or (converted.replace(tzinfo=None), converted.utcoffset()) != (
        value.replace(tzinfo=None),
        value.utcoffset(),
    ):
        raise _invalid(
            f"reference_time has an unsupported tzinfo {value.tzinfo!r}: use "
            "zoneinfo.ZoneInfo('Area/City') or datetime.timezone (a pytz zone must be attached "
            "with localize()).",
            field="reference_time",
            reason="unsupported_tzinfo",
        )
    return converted


@functools.lru_cache(maxsize=4096)
def _checked_spec(expression: str) -> _cron.CronSpec:
    spec = _cron.parse_cron(expression)
    if _cron.first_matching_day(spec, _cron.CYCLE_START, days=_cron.CYCLE_DAYS) is None:
        raise _cron.cron_error(
            expression,
            "it never fires (no month has such a day)",
            "Check the day-of-month and month fields, e.g. February has at most 29 days.",
            reason="never_fires",
        )
    return spec


def _check_stored(data: dict[str, Any], kind: str) -> None:
    if not isinstance(data, dict) or data.get("kind") != kind:
        raise _invalid(
            f"Stored schedule is not a {kind} rule: {data!r}.",
            field="kind",
            reason="malformed_json",
        )
    if data.get("format") != FORMAT:
        raise _invalid(
            f"Stored schedule has format {data.get('format')!r}; this version of multinode reads "
            f"format {FORMAT}: upgrade multinode.",
            field="format",
            reason="unsupported_format",
        )


def _wall_text(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M" + (":%S" if value.second or value.microsecond else ""))


def _duration(value: timedelta) -> str:
    if value < timedelta(0):
        return f"-{_duration(-value)}"
    hours, rest = divmod(value.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    second_text = (
        f"{seconds}.{value.microseconds:06d}".rstrip("0") if value.microseconds else str(seconds)
    )
    parts = [
        f"{text} {unit}{'' if text == '1' else 's'}"
        for text, unit in (
            (str(value.days), "day"),
            (str(hours), "hour"),
            (str(minutes), "minute"),
            (second_text, "second"),
        )
        if text != "0"
    ]
    return " ".join(parts) or "0 seconds"
