"""The stored-rule parser against crafted input: whatever a client sends as a rule, the
parser answers a valid rule or InvalidRequestError (a 422), never another exception."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from multinode.errors import InvalidRequestError
from multinode.schedule_math import FORMAT, next_fires, rule_from_json, validate

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
TIMES = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)).map(
    datetime.isoformat
)
ZONES = st.sampled_from(["UTC", "Europe/London", "America/New_York", "EST5EDT", "US/Pacific", ""])
CRON_PARTS = st.sampled_from(["*", "*/5", "0", "59", "60", "1-5", "5-1", "*/0", "0,30", "L", "?"])
CRON = st.lists(CRON_PARTS, min_size=0, max_size=7).map(" ".join) | st.text(max_size=60)

INTERVAL = st.fixed_dictionaries(
    {"kind": st.just("interval"), "format": st.just(FORMAT)},
    optional={
        "interval_seconds": st.floats(allow_nan=True, allow_infinity=True) | JSON,
        "reference_time": TIMES | JSON,
        "timezone": ZONES | JSON,
        "fold": st.integers(min_value=-5, max_value=10) | JSON,
    },
)
CRON_RULE = st.fixed_dictionaries(
    {"kind": st.just("cron"), "format": st.just(FORMAT)},
    optional={"expression": CRON | JSON, "timezone": ZONES | JSON},
)
ANY = st.dictionaries(st.sampled_from(["kind", "format", "expression"]), JSON, max_size=3)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(INTERVAL | CRON_RULE | ANY)
def test_a_crafted_rule_is_read_or_refused_with_a_422(data: dict) -> None:
    try:
        rule = validate(rule_from_json(data), min_interval=timedelta(0))
    except InvalidRequestError:
        return
    # A rule that was accepted must also be usable by the scheduler.
    next_fires(rule, datetime(2026, 1, 1, tzinfo=timezone.utc), 2)
