"""The pure rules: call transitions, retry decisions, tokens, capacity packing."""

from __future__ import annotations

import pytest

from multinode.errors import ConflictError
from multinode_controlplane.domain import states
from multinode_controlplane.domain.capacity import Resources, pack, slots, uncovered
from multinode_controlplane.domain.tokens import hash_token, new_token, token_kind

ALLOWED = [
    ("queued", "running"),
    ("queued", "cancelled"),
    ("running", "succeeded"),
    ("running", "failed"),
    ("running", "cancelled"),
    ("running", "timed_out"),
    ("running", "queued"),
]
REFUSED = [
    ("queued", "succeeded"),
    ("queued", "failed"),
    ("succeeded", "running"),
    ("failed", "queued"),
    ("cancelled", "running"),
    ("timed_out", "queued"),
]


@pytest.mark.parametrize(("current", "new"), ALLOWED)
def test_allowed_transitions(current: str, new: str) -> None:
    states.check_transition(current, new)


@pytest.mark.parametrize(("current", "new"), REFUSED)
def test_refused_transitions_raise_conflict(current: str, new: str) -> None:
    with pytest.raises(ConflictError) as info:
        states.check_transition(current, new)
    assert info.value.details["from"] == current


# (retries, user_failures, infra_failures, max_infra, kind, cancel) -> (status, user, infra)
DECISIONS = [
    ((0, 0, 0, 3, "error", False), ("failed", 1, 0)),
    ((2, 0, 0, 3, "error", False), ("queued", 1, 0)),
    ((2, 1, 0, 3, "error", False), ("queued", 2, 0)),
    ((2, 2, 0, 3, "error", False), ("failed", 3, 0)),
    ((0, 0, 0, 3, "timeout", False), ("timed_out", 1, 0)),
    ((1, 0, 0, 3, "timeout", False), ("queued", 1, 0)),
    # infrastructure losses never spend the user's retries
    ((0, 0, 0, 3, "lost", False), ("queued", 0, 1)),
    ((0, 0, 1, 3, "lost", False), ("queued", 0, 2)),
    ((0, 0, 2, 3, "lost", False), ("failed", 0, 3)),
    ((5, 0, 0, 3, "lost", True), ("cancelled", 0, 1)),
    ((5, 0, 0, 3, "error", True), ("cancelled", 1, 0)),
    # a final failure (the VM cannot load what was deployed) is never retried
    ((5, 0, 0, 3, "final", False), ("failed", 1, 0)),
]


@pytest.mark.parametrize(("args", "expected"), DECISIONS)
def test_after_attempt_failure(args: tuple, expected: tuple) -> None:
    retries, user, infra, max_infra, kind, cancel = args
    decision = states.after_attempt_failure(
        retries, user, infra, max_infra, kind, cancel_requested=cancel
    )
    assert (decision.status, decision.user_failures, decision.infra_failures) == expected
    assert (decision.reason is None) == (decision.status == "queued")


def test_infrastructure_failure_names_the_cause() -> None:
    decision = states.after_attempt_failure(0, 0, 2, 3, "lost", reason="lost: no heartbeat")
    assert decision.reason.startswith("infrastructure:") and "no heartbeat" in decision.reason


@pytest.mark.parametrize(
    ("kind", "prefix"), [("key", "mnk_"), ("agent", "mna_"), ("bootstrap", "mnb_")]
)
def test_tokens_carry_their_kind(kind: str, prefix: str) -> None:
    token = new_token(kind)  # type: ignore[arg-type]
    assert token.startswith(prefix) and len(token) > 40
    assert token_kind(token) == kind
    assert hash_token(token) == hash_token(token) != token
    assert new_token(kind) != token  # type: ignore[arg-type]


def test_unknown_prefix_has_no_kind() -> None:
    assert token_kind("secret") is None


@pytest.mark.parametrize(
    ("vcpus", "cpu", "expected"), [(2, 1.0, 2), (2, 0.1, 20), (2, 0.3, 6), (2, 4.0, 0), (96, 16, 6)]
)
def test_pack_fills_cpu_exactly(vcpus: float, cpu: float, expected: int) -> None:
    candidates = [(str(i), Resources.of(cpu)) for i in range(100)]
    assert len(pack(Resources.of(vcpus, 8192), candidates, limit=1000)) == expected


def test_pack_skips_a_call_too_big_for_a_smaller_one_behind_it() -> None:
    candidates = [("big", Resources.of(4)), ("small", Resources.of(1))]
    assert pack(Resources.of(2, 1024), candidates, limit=10) == ["small"]


def test_pack_respects_memory_and_limit() -> None:
    candidates = [(str(i), Resources.of(0.5, 3000)) for i in range(10)]
    assert len(pack(Resources.of(8, 8192), candidates, limit=10)) == 2
    assert len(pack(Resources.of(8, 100_000), candidates, limit=3)) == 3


def test_slots_and_uncovered() -> None:
    need = Resources.of(1, 1024)
    assert slots(Resources.of(4, 2048), need) == 2
    free = [Resources.of(2, 8192), Resources.of(1, 8192)]
    assert uncovered(5, need, free) == 2
    assert uncovered(1, need, free) == 1  # the first call consumed the free capacity
