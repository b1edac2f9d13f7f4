"""The call state machine and the retry decisions, as data and pure functions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from multinode.errors import ConflictError

QUEUED, RUNNING = "queued", "running"
SUCCEEDED, FAILED, CANCELLED, TIMED_OUT = "succeeded", "failed", "cancelled", "timed_out"
TERMINAL: frozenset[str] = frozenset({SUCCEEDED, FAILED, CANCELLED, TIMED_OUT})

# running -> queued is the retry edge (user retries and infrastructure retries alike).
TRANSITIONS: dict[str, frozenset[str]] = {
    QUEUED: frozenset({RUNNING, CANCELLED}),
    RUNNING: frozenset({QUEUED, SUCCEEDED, FAILED, CANCELLED, TIMED_OUT}),
    SUCCEEDED: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
    TIMED_OUT: frozenset(),
}

# Attempt statuses: running, then exactly one of these.
# "released": a prefetched attempt its agent gave back unstarted (the call is queued again).
ATTEMPT_FINAL: frozenset[str] = frozenset(
    {SUCCEEDED, FAILED, CANCELLED, TIMED_OUT, "lost", "released"}
)

FailureKind = Literal["error", "timeout", "lost", "final"]


def check_transition(current: str, new: str) -> None:
    """Raise :class:`ConflictError` unless a call may move from ``current`` to ``new``."""
    if new not in TRANSITIONS.get(current, frozenset()):
        raise ConflictError(
            f"a call cannot go from {current} to {new}",
            details={"from": current, "to": new, "allowed": sorted(TRANSITIONS.get(current, ()))},
        )


@dataclass(frozen=True)
class Decision:
    """What to do with a call whose attempt just failed.

    Attributes:
        status: ``queued`` (another attempt) or the call's final status.
        user_failures: the call's new count of attempts failed by user code.
        infra_failures: the call's new count of attempts lost to infrastructure.
        reason: why, for the call's ``failure_reason`` (None when requeued by a user retry).
    """

    status: str
    user_failures: int
    infra_failures: int
    reason: str | None = None


def after_attempt_failure(
    spec_retries: int,
    user_failures: int,
    infra_failures: int,
    max_infra: int,
    kind: FailureKind,
    *,
    cancel_requested: bool = False,
    cancel_reason: str | None = None,
    reason: str | None = None,
) -> Decision:
    """Decide the fate of a call whose running attempt ended without success.

    ``spec_retries`` counts retries after the first attempt, and is spent only by the
    user's code: an exception (``error``) or exceeding the function's timeout
    (``timeout``; a timeout is retried like an exception while retries remain, and is
    final as ``timed_out`` once they are spent). An attempt ``lost`` to infrastructure
    (the VM vanished or stopped heart-beating) spends the separate budget ``max_infra``:
    the call is requeued while fewer than ``max_infra`` attempts were lost, then fails.
    A call whose cancellation was requested is cancelled, whatever the failure. A ``final``
    failure (the VM cannot load what was deployed, e.g. another Python) fails the call at
    once: no attempt could succeed, so no retry is spent on it.

    Args:
        spec_retries: the function's ``retries``.
        user_failures: attempts failed by user code before this one.
        infra_failures: attempts lost to infrastructure before this one.
        max_infra: attempts a call may lose to infrastructure (``max_call_attempts``).
        kind: how this attempt ended.
        cancel_requested: the caller asked to cancel the call...
        cancel_reason: ...for this reason, when one was recorded (an undeploy says
            "app undeployed"); "cancelled" otherwise.
        reason: the attempt's own explanation, kept on a final status.
    """
    if kind == "lost":
        infra_failures += 1
    else:
        user_failures += 1
    if cancel_requested:
        return Decision(CANCELLED, user_failures, infra_failures, cancel_reason or "cancelled")
    if kind == "lost":
        if infra_failures < max_infra:
            return Decision(QUEUED, user_failures, infra_failures)
        return Decision(
            FAILED,
            user_failures,
            infra_failures,
            f"infrastructure: {infra_failures} attempts lost ({reason or 'instance lost'})",
        )
    if kind == "final":
        return Decision(FAILED, user_failures, infra_failures, reason or "cannot run here")
    if user_failures <= spec_retries:
        return Decision(QUEUED, user_failures, infra_failures)
    if kind == "timeout":
        return Decision(TIMED_OUT, user_failures, infra_failures, reason or "timed out")
    return Decision(FAILED, user_failures, infra_failures, reason or "the function raised")
