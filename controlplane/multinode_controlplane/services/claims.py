"""Claiming work: the transaction that turns queued calls into running attempts.

An agent's poll claims, oldest first, the queued calls of its app that fit the free
capacity of its instance (its vCPUs, memory and GPUs minus those of the attempts running
on it), as many as fit, in one transaction. Each claim creates an attempt whose ``fence``
is the call's attempt count after the claim; a result is accepted only with the fence of
the call's current attempt, so a holder whose attempt was reassigned cannot overwrite the
outcome. On PostgreSQL concurrent claimers skip each other's rows
(``FOR UPDATE SKIP LOCKED``); on SQLite, one replica, the database's write lock
serialises claims.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, insert, or_, select, update

from multinode import wire
from multinode_controlplane import models as m
from multinode_controlplane.db import Memo
from multinode_controlplane.domain import states
from multinode_controlplane.domain.capacity import Resources, pack
from multinode_controlplane.services.instances import ACTIVE

_CANDIDATES = 1000  # queued rows examined per claim: bounds the work of one poll
_PAGE = 32  # rows of a claim's first page when nothing is known of the queue's calls

_a, _c = m.attempts.c, m.calls.c

# Statements are built once: building one per execution costs more than running it.

# The resources of the attempts running on an instance.
_USED = select(
    func.coalesce(func.sum(_a.cpu), 0.0),
    func.coalesce(func.sum(_a.memory_mib), 0),
    func.coalesce(func.sum(_a.gpu_count), 0),
).where(_a.instance_id == bindparam("_instance"), _a.status == "running")


def _candidates(*, dedicated: bool, skip_locked: bool):  # type: ignore[no-untyped-def]
    """Queued calls of an app that fit the free capacity on their own, oldest first, a
    page at a time (a poll with room for a few calls must not read a thousand-call
    backlog)."""
    # An instance launched for a service runs one replica of it and nothing else.
    pool = (
        [_c.kind == "service", _c.function == bindparam("_function")]
        if dedicated
        else [_c.kind != "service"]
    )
    query = (
        select(
            _c.id,
            _c.cpu,
            _c.memory_mib,
            _c.gpu_count,
            _c.attempts,
            _c.function_id,
            _c.function,
            _c.version,
            _c.timeout_s,
            _c.kind,
        )
        .where(
            _c.app_id == bindparam("_app"),
            _c.status == states.QUEUED,
            *pool,
            _c.cpu * 1000 <= bindparam("_cpu_m"),  # millicores, rounded as pack() rounds
            func.coalesce(_c.memory_mib, 0) <= bindparam("_memory_mib"),
            _c.gpu_count <= bindparam("_gpus"),
        )
        .order_by(_c.created_at, _c.id)
        .offset(bindparam("_offset"))
        .limit(bindparam("_limit"))
    )
    return query.with_for_update(skip_locked=True) if skip_locked else query


# One variant per (dedicated instance, FOR UPDATE SKIP LOCKED).
_CANDIDATE_QUERIES = {
    (dedicated, skip_locked): _candidates(dedicated=dedicated, skip_locked=skip_locked)
    for dedicated in (False, True)
    for skip_locked in (False, True)
}
_INPUTS = select(_c.id, _c.input).where(_c.id.in_(bindparam("_ids", expanding=True)))
_f, _d = m.functions.c, m.deployments.c
_FUNCTIONS = (
    select(_f.id, _f.blob_hash, _f.spec, _d.python_version, _d.cloudpickle_version)
    .join(m.deployments, _d.id == _f.deployment_id)
    .where(_f.id.in_(bindparam("_ids", expanding=True)))
)
_i = m.instances.c
# Instances of the app other than this one that serve a function: launched for it, or
# running one of its calls. ``max_workers`` caps them.
_SERVING = select(func.count(func.distinct(_i.id))).where(
    _i.app_id == bindparam("_app"),
    _i.state.in_(ACTIVE),
    _i.id != bindparam("_instance"),
    or_(
        _i.launched_for == bindparam("_function"),
        _i.id.in_(
            select(_c.instance_id).where(
                _c.app_id == bindparam("_app"),
                _c.status == states.RUNNING,
                _c.function == bindparam("_function"),
            )
        ),
    ),
)
_RUNS_HERE = (
    select(_c.id)
    .where(
        _c.instance_id == bindparam("_instance"),
        _c.status == states.RUNNING,
        _c.function == bindparam("_function"),
    )
    .limit(1)
)
_INSERT_ATTEMPTS = insert(m.attempts)
_START_CALLS = (
    update(m.calls)
    .where(_c.id == bindparam("_id"), _c.status == states.QUEUED)
    .values(
        status=states.RUNNING,
        started_at=bindparam("_now"),
        attempts=bindparam("_fence"),
        current_attempt_id=bindparam("_attempt"),
        instance_id=bindparam("_instance"),
    )
)


@dataclass(frozen=True)
class _Function:
    """What an assignment needs of a function and its deployment (both immutable)."""

    blob_hash: str
    python_version: str
    cloudpickle_version: str
    port: int | None
    max_workers: int


def free_capacity(session, instance_id: str, vcpus: float, memory_mib: int, gpus: int) -> Resources:  # type: ignore[no-untyped-def]
    """The instance's resources minus those of the attempts running on it."""
    used = session.execute(_USED, {"_instance": instance_id}).one()
    return Resources.of(vcpus, memory_mib, gpus) - Resources.of(used[0], int(used[1]), int(used[2]))


def claim(
    session,  # type: ignore[no-untyped-def]
    *,
    skip_locked: bool,
    instance: m.InstanceRow,
    app_name: str,
    now: float,
    limit: int,
    prefetch: int = 0,
    memo: Memo | None = None,
) -> list[wire.Assignment]:
    """Claim the queued calls of the instance's app that fit its free capacity (with
    ``prefetch``, that capacity plus ``prefetch`` times the instance's whole size: the agent
    queues the extra calls and starts them as its slots free up, so no slot waits on a
    round trip).

    Must run inside a write transaction that already holds the instance's row (the
    heartbeat update takes it), so two polls of one instance cannot book the same
    capacity twice. ``memo`` (the database's) keeps what is read of immutable functions.

    Returns:
        The assignments, oldest call first; empty when nothing fits.
    """
    free = free_capacity(
        session, instance.id, instance.vcpus, instance.memory_mib, instance.gpu_count
    )
    whole = Resources.of(instance.vcpus, instance.memory_mib, instance.gpu_count)
    # What one call may need: what is free now. Prefetching adds room for more calls to
    # wait for a slot, never room for a larger call: each still fits the instance's
    # size, so a call lands only where it can run (a 16-vCPU call never on a 2-vCPU box).
    one = Resources(min(free.cpu_m, whole.cpu_m), min(free.memory_mib, whole.memory_mib), free.gpus)
    if prefetch > 0 and not instance.dedicated:
        free = free + Resources(
            whole.cpu_m * prefetch, whole.memory_mib * prefetch, whole.gpus * prefetch
        )
        one = whole
    if free.cpu_m <= 0:
        return []
    params: dict[str, Any] = {
        "_app": instance.app_id,
        "_cpu_m": one.cpu_m + 0.5,
        "_memory_mib": one.memory_mib,
        "_gpus": one.gpus,
    }
    if instance.dedicated:
        if free != Resources.of(instance.vcpus, instance.memory_mib, instance.gpu_count):
            return []
        params["_function"] = instance.launched_for
        limit = 1
    chosen = _choose(
        session,
        _CANDIDATE_QUERIES[(bool(instance.dedicated), skip_locked)],
        params,
        free,
        limit,
        memo_key=("smallest_cpu_m", instance.app_id),
        memo=memo,
    )
    if not chosen:
        return []
    functions = _functions(session, {row.function_id for row in chosen}, memo)
    chosen = _within_max_workers(session, chosen, functions, instance)
    if not chosen:
        return []
    inputs = dict(session.execute(_INPUTS, {"_ids": [row.id for row in chosen]}).all())
    attempt_rows, call_updates, assignments = [], [], []
    for row in chosen:
        call_id = row.id
        attempt_id = "a" + uuid.uuid4().hex
        fence = row.attempts + 1
        attempt_rows.append(
            {
                "id": attempt_id,
                "call_id": call_id,
                "number": fence,
                "instance_id": instance.id,
                "fence": fence,
                "status": "running",
                "started_at": now,
                "cpu": row.cpu,
                "memory_mib": row.memory_mib,
                "gpu_count": row.gpu_count,
                "timeout_s": row.timeout_s,
            }
        )
        call_updates.append(
            {
                "_id": call_id,
                "_fence": fence,
                "_attempt": attempt_id,
                "_now": now,
                "_instance": instance.id,
            }
        )
        function = functions[row.function_id]
        # model_construct: ``input`` holds raw bytes, which validation would take for base64.
        assignments.append(
            wire.Assignment.model_construct(
                attempt_id=attempt_id,
                call_id=call_id,
                fence=fence,
                app=app_name,
                function=row.function,
                version=row.version,
                blob_hash=function.blob_hash,
                input=bytes(inputs[call_id]),
                timeout_s=row.timeout_s,
                cpu=row.cpu,
                python_version=function.python_version,
                cloudpickle_version=function.cloudpickle_version,
                kind=row.kind,
                port=function.port if row.kind == "service" else None,
            )
        )
    session.execute(_INSERT_ATTEMPTS, attempt_rows)
    session.execute(_START_CALLS, call_updates)
    return assignments


def _choose(
    session,  # type: ignore[no-untyped-def]
    query,  # type: ignore[no-untyped-def]
    params: dict[str, Any],
    free: Resources,
    limit: int,
    *,
    memo_key: tuple[str, int],
    memo: Memo | None,
) -> list[Any]:
    """The candidate rows :func:`pack` chooses for ``free``, at most ``limit``, read a page
    at a time: each page as large as the number of calls that could still fit (free
    capacity over the smallest call seen), so a claim of a hundred small calls reads one
    or two pages, not one per thirty-two rows. Stops at the end of the backlog, at the
    first candidate that does not fit, when full, or after ``_CANDIDATES`` rows."""
    smallest = memo.get(memo_key) if memo is not None else None  # a hint from the last claim
    size = _PAGE if smallest is None else free.cpu_m // smallest
    chosen: list[Any] = []
    offset = 0
    while offset < _CANDIDATES:
        size = max(1, min(size, limit - len(chosen), _CANDIDATES - offset))
        page = session.execute(query, {**params, "_offset": offset, "_limit": size}).all()
        offset += len(page)
        if not page:
            break
        needs = {row.id: Resources.of(row.cpu, row.memory_mib, row.gpu_count) for row in page}
        taken = set(pack(free, list(needs.items()), limit=limit - len(chosen)))
        for row in page:
            if row.id in taken:
                chosen.append(row)
                free = free - needs[row.id]
        smallest_here = max(1, min(need.cpu_m for need in needs.values()))
        smallest = smallest_here if smallest is None else min(smallest, smallest_here)
        if len(page) < size or len(taken) < len(page) or len(chosen) >= limit or free.cpu_m <= 0:
            break  # the backlog is read, or the instance is full
        size = free.cpu_m // smallest
    if memo is not None and smallest is not None:
        memo.put(memo_key, smallest)
    return chosen


def _within_max_workers(
    session, chosen: list[Any], functions: dict[int, _Function], instance: m.InstanceRow
) -> list[Any]:  # type: ignore[no-untyped-def]
    """``chosen`` less the calls of functions this instance may not serve: a function's
    ``max_workers`` caps the instances serving it (launched for it, or running one of its
    calls), so an instance launched for another function takes its calls only while that
    leaves the cap unpassed. Calls of the function the instance was launched for, and of
    one it already runs, are always its to take."""
    allowed: dict[str, bool] = {}
    kept = []
    for row in chosen:
        name = row.function
        if name not in allowed:
            params = {"_app": instance.app_id, "_instance": instance.id, "_function": name}
            allowed[name] = (
                name == instance.launched_for
                or row.kind == "service"
                or session.execute(_RUNS_HERE, params).first() is not None
                or session.execute(_SERVING, params).scalar()
                < functions[row.function_id].max_workers
            )
        if allowed[name]:
            kept.append(row)
    return kept


def _functions(session, function_ids: set[int], memo: Memo | None) -> dict[int, _Function]:  # type: ignore[no-untyped-def]
    """Blob, interpreter versions and port of each function, from ``memo`` when known."""
    found: dict[int, _Function] = {}
    missing = []
    for function_id in function_ids:
        known = memo.get(("function", function_id)) if memo is not None else None
        if known is None:
            missing.append(function_id)
        else:
            found[function_id] = known
    if missing:
        for row in session.execute(_FUNCTIONS, {"_ids": missing}):
            spec = wire.FunctionSpec.model_validate_json(row.spec)
            function = _Function(
                blob_hash=row.blob_hash,
                python_version=row.python_version,
                cloudpickle_version=row.cloudpickle_version,
                port=spec.port,
                max_workers=spec.max_workers,
            )
            found[row.id] = function
            if memo is not None:
                memo.put(("function", row.id), function)
    return found
