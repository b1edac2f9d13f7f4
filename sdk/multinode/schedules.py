"""Scheduled tasks: ``@mn.scheduled_task`` and ``@mn.schedule``, and the calls that operate them.

    @mn.scheduled_task(reference_time=datetime(2023, 9, 8, 23, 0), interval=timedelta(days=1))
    def nightly(): ...

    @mn.schedule(cron="0 23 * * 1-5", timezone="Europe/London", cpu=1)
    def weekdays(): ...

A scheduled task is a function: it takes the resources and options of ``@mn.function``
and each fire is an ordinary call of it (so ``mn calls`` and ``mn logs`` show its runs).
Both decorators accept the same arguments and differ only in name; every mistake is an
:class:`InvalidRequestError` at decoration time, and the control plane checks again at
deploy. The semantics are in ``docs/schedules.md`` and :mod:`multinode.schedule_math`.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from multinode import schedule_math, wire
from multinode._calls import CallHandle, pickle_inputs
from multinode._spec import build_spec, parse_seconds
from multinode.errors import InvalidRequestError
from multinode.functions import _REGISTRY, Function, argless_function_name

OVERLAP_POLICIES = ("skip", "queue", "allow")
DEFAULT_CATCHUP_WINDOW = timedelta(hours=1)
MIN_INTERVAL_ENV = "MN_MIN_SCHEDULE_INTERVAL_S"


class ScheduledTask(Function[Any]):
    """A :class:`Function` that also carries a schedule.

    Attributes:
        rule: when it fires (:class:`multinode.schedule_math.IntervalRule` or ``CronRule``).
        overlap: ``"skip"``, ``"queue"`` or ``"allow"``.
        catchup_window_s: how late the one catch-up run after downtime may be, in seconds.
    """

    def __init__(
        self,
        func: Callable[..., Any],
        *,
        name: str,
        spec: wire.FunctionSpec,
        rule: schedule_math.ScheduleRule,
        overlap: str,
        catchup_window_s: float,
    ) -> None:
        super().__init__(func, name=name, spec=spec)
        self.rule = rule
        self.overlap = overlap
        self.catchup_window_s = catchup_window_s

    def __repr__(self) -> str:
        return f"<mn.ScheduledTask {self.name} {self.rule.describe()}>"

    def next_fires(self, count: int = 3, *, after: datetime | None = None) -> list[datetime]:
        """The next ``count`` fire times after ``after`` (default: now), in UTC."""
        start = after or datetime.now(schedule_math.UTC)
        return schedule_math.next_fires(self.rule, start, count)

    def upload(self) -> wire.ScheduleUpload:
        """The schedule as sent at deploy; its input is the pickled ``((), {})``."""
        data = pickle_inputs(self.name, (), {})
        return wire.ScheduleUpload(
            function=self.name,
            rule=self.rule.to_json(),
            overlap=self.overlap,  # type: ignore[arg-type]
            catchup_window_s=self.catchup_window_s,
            input=base64.b64encode(data),
        )


def scheduled_task(_func: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Run a function on a schedule; see :func:`schedule` for the arguments.

    Raises:
        InvalidRequestError: at decoration time, naming the argument and the fix.
    """
    return _decorator("scheduled_task", _func, options)


def schedule(
    _func: Callable[..., Any] | None = None,
    /,
    *,
    interval: timedelta | None = None,
    period: timedelta | None = None,
    reference_time: datetime | None = None,
    cron: str | None = None,
    timezone: str | None = None,
    overlap: str = "skip",
    catchup_window: timedelta | float = DEFAULT_CATCHUP_WINDOW,
    **function_options: Any,
) -> Any:
    """Run a function on a schedule: an interval or a cron expression.

    Args:
        interval: fire every ``interval`` in phase with ``reference_time`` (default: the
            Unix epoch, UTC); a whole number of days in an IANA zone keeps the wall time.
        period: the same as ``interval`` anchored at the Unix epoch.
        reference_time: a datetime fixing the interval's phase (naive means UTC).
        cron: a five-field cron expression evaluated in ``timezone`` (default UTC).
        timezone: an IANA zone name, for ``cron`` only.
        overlap: when the previous run is still going at a due time: ``"skip"`` records
            the fire as skipped, ``"queue"`` runs it after (holding at most one),
            ``"allow"`` runs both.
        catchup_window: after downtime, the latest missed due time runs if it is at most
            this old (a timedelta or seconds); the others are recorded as missed.
        **function_options: ``cpu``, ``memory``, ``gpu``, ``timeout``, ``retries``,
            ``max_workers``, ``cooldown``, ``env``, ``secrets``, ``pip``, ``python``,
            ``capacity_timeout``, as for ``@mn.function``.

    Raises:
        InvalidRequestError: at decoration time: both or neither of interval/cron, a bad
            cron string or zone, ``CRON_TZ=`` in the expression, an expression that never
            fires, an interval under the minimum (15 minutes, or ``MN_MIN_SCHEDULE_INTERVAL_S``)
            or not a timedelta, a bad policy or resource option.
    """
    options = dict(
        interval=interval,
        period=period,
        reference_time=reference_time,
        cron=cron,
        timezone=timezone,
        overlap=overlap,
        catchup_window=catchup_window,
        **function_options,
    )
    return _decorator("schedule", _func, options)


def min_interval() -> timedelta:
    """The minimum spacing checked at decoration: ``MN_MIN_SCHEDULE_INTERVAL_S`` or 15 min.

    Zero on a VM (``MN_INSTANCE_ID`` set): there the app's module is imported to run its
    functions, and its schedules passed the control plane's own minimum at deploy, which
    may differ from this process's default.
    """
    if os.environ.get("MN_INSTANCE_ID"):
        return timedelta(0)
    raw = os.environ.get(MIN_INTERVAL_ENV)
    if not raw:
        return schedule_math.DEFAULT_MIN_INTERVAL
    try:
        return timedelta(seconds=float(raw))
    except ValueError:
        raise InvalidRequestError(
            f"{MIN_INTERVAL_ENV}={raw!r} is not a number of seconds, e.g. {MIN_INTERVAL_ENV}=60"
        ) from None


def collect_schedules(functions: Iterable[Function[Any]]) -> list[wire.ScheduleUpload]:
    """The schedules of the scheduled tasks among ``functions``, for a deploy request."""
    return [fn.upload() for fn in functions if isinstance(fn, ScheduledTask)]


# ---------------------------------------------------------------------------- operating


def list_schedules(
    app: str | None = None, *, after: datetime | None = None, count: int = 3
) -> list[wire.ScheduleInfo]:
    """The schedules of ``app`` (or of all your apps), each with its next ``count`` fire
    times after ``after`` (default: now), computed by the control plane's scheduler code."""
    params: dict[str, Any] = {"count": count}
    if after is not None:
        params["from"] = after.isoformat()
    path = f"/apps/{app}/schedules" if app else "/schedules"
    response = _client()._request("GET", path, params=params)
    return [wire.ScheduleInfo.model_validate(item) for item in response.json()]


def list_fires(app: str, function: str, *, limit: int = 50) -> list[wire.FireInfo]:
    """What happened at the latest ``limit`` due times of a schedule, newest first."""
    path = f"/apps/{app}/schedules/{function}/fires"
    response = _client()._request("GET", path, params={"limit": limit})
    return [wire.FireInfo.model_validate(item) for item in response.json()]


def trigger(app: str, function: str) -> CallHandle:
    """Run a scheduled task once now; returns the handle of its call."""
    path = f"/apps/{app}/schedules/{function}/trigger"
    response = _client()._request("POST", path, retry=False)
    created = wire.TriggerResponse.model_validate(response.json())
    return CallHandle(created.call_id, function=function)


def pause(app: str, function: str | None = None) -> list[wire.ScheduleInfo]:
    """Stop a schedule (or all of the app's) from firing until :func:`resume`."""
    return _set_paused(app, function, "pause")


def resume(app: str, function: str | None = None) -> list[wire.ScheduleInfo]:
    """Resume a paused schedule; it next fires at its first due time from now."""
    return _set_paused(app, function, "resume")


def _set_paused(app: str, function: str | None, action: str) -> list[wire.ScheduleInfo]:
    path = (
        f"/apps/{app}/schedules/{function}/{action}"
        if function
        else f"/apps/{app}/schedules/{action}"
    )
    response = _client()._request("POST", path)
    return [wire.ScheduleInfo.model_validate(item) for item in response.json()]


def _client() -> Any:
    from multinode._client import get_client

    return get_client()


# ---------------------------------------------------------------------------- decoration

_SCHEDULE_ARGS = ("interval", "period", "reference_time", "cron", "timezone")
_FUNCTION_ARGS = (
    "cpu",
    "memory",
    "gpu",
    "timeout",
    "retries",
    "max_workers",
    "cooldown",
    "env",
    "secrets",
    "pip",
    "python",
    "capacity_timeout",
)


def _decorator(kind: str, func: Callable[..., Any] | None, options: dict[str, Any]) -> Any:
    where = f"@mn.{kind}(...)"
    if func is not None:
        raise InvalidRequestError(
            f"@mn.{kind} needs a schedule: write @mn.{kind}(interval=timedelta(hours=6)) or "
            f"@mn.{kind}(cron='0 23 * * *') above def {getattr(func, '__name__', 'f')}"
        )
    unknown = sorted(set(options) - {*_SCHEDULE_ARGS, *_FUNCTION_ARGS, "overlap", "catchup_window"})
    if unknown:
        raise InvalidRequestError(
            f"{where} got unknown argument(s) {', '.join(unknown)}; it takes "
            f"{', '.join((*_SCHEDULE_ARGS, 'overlap', 'catchup_window', *_FUNCTION_ARGS))}",
            details={"argument": unknown[0]},
        )
    interval = options.get("interval")
    if interval is not None and not isinstance(interval, timedelta):
        raise InvalidRequestError(
            f"{where}: interval={interval!r} is not a datetime.timedelta; write e.g. "
            "interval=timedelta(hours=6)",
            details={"field": "interval", "reason": "not_a_timedelta"},
        )
    rule = schedule_math.rule_from_args(
        **{name: options.get(name) for name in _SCHEDULE_ARGS}, min_interval=min_interval()
    )
    overlap = options.get("overlap", "skip")
    if overlap not in OVERLAP_POLICIES:
        raise InvalidRequestError(
            f"{where}: overlap={overlap!r} is not valid; use one of "
            + ", ".join(repr(p) for p in OVERLAP_POLICIES),
            details={"field": "overlap", "reason": "unknown_policy"},
        )
    catchup_s = parse_seconds(
        options.get("catchup_window", DEFAULT_CATCHUP_WINDOW),
        arg="catchup_window",
        where=where,
        example="catchup_window=timedelta(hours=2)",
        allow_zero=True,
    )
    function_options = {name: options[name] for name in _FUNCTION_ARGS if name in options}
    build_spec("the decorated function", **function_options)

    def decorate(fn: Callable[..., Any]) -> ScheduledTask:
        name = argless_function_name(fn, where=where, called="a scheduled task is called")
        handle = ScheduledTask(
            fn,
            name=name,
            spec=build_spec(name, **function_options),
            rule=rule,
            overlap=overlap,
            catchup_window_s=catchup_s,
        )
        _REGISTRY.setdefault(getattr(fn, "__module__", None) or "__main__", {})[name] = handle
        return handle

    return decorate
