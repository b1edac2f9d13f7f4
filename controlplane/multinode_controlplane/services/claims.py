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
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update

from multinode import wire
from multinode_controlplane import models as m
from multinode_controlplane.domain import states
from multinode_controlplane.domain.capacity import Resources, pack

_CANDIDATES = 1000  # queued rows examined per claim: bounds the work of one poll
_PAGE = 32  # rows read at a time; most polls need one page


def free_capacity(session, instance_id: str, vcpus: float, memory_mib: int, gpus: int) -> Resources:  # type: ignore[no-untyped-def]
    """The instance's resources minus those of the attempts running on it."""
    a = m.attempts.c
    used = session.execute(
        select(
            func.coalesce(func.sum(a.cpu), 0.0),
            func.coalesce(func.sum(a.memory_mib), 0),
            func.coalesce(func.sum(a.gpu_count), 0),
        ).where(a.instance_id == instance_id, a.status == "running")
    ).one()
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
) -> list[wire.Assignment]:
    """Claim the queued calls of the instance's app that fit its free capacity (with
    ``prefetch``, that capacity plus ``prefetch`` times the instance's whole size: the agent
    queues the extra calls and starts them as its slots free up, so no slot waits on a
    round trip).

    Must run inside a write transaction that already holds the instance's row (the
    heartbeat update takes it), so two polls of one instance cannot book the same
    capacity twice.

    Returns:
        The assignments, oldest call first; empty when nothing fits.
    """
    free = free_capacity(
        session, instance.id, instance.vcpus, instance.memory_mib, instance.gpu_count
    )
    if prefetch > 0 and not instance.dedicated:
        whole = Resources.of(instance.vcpus, instance.memory_mib, instance.gpu_count)
        free = free + Resources(
            whole.cpu_m * prefetch, whole.memory_mib * prefetch, whole.gpus * prefetch
        )
    if free.cpu_m <= 0:
        return []
    c = m.calls.c
    if instance.dedicated:
        # An instance launched for a service runs one replica of it and nothing else.
        if free != Resources.of(instance.vcpus, instance.memory_mib, instance.gpu_count):
            return []
        pool = [c.kind == "service", c.function == instance.launched_for]
        limit = 1
    else:
        pool = [c.kind != "service"]
    # Only calls that fit the free capacity on their own, read a page at a time: a poll
    # with room for a few calls must not read a thousand-call backlog.
    base = (
        select(
            c.id,
            c.cpu,
            c.memory_mib,
            c.gpu_count,
            c.attempts,
            c.function_id,
            c.function,
            c.version,
            c.timeout_s,
            c.kind,
        )
        .where(
            c.app_id == instance.app_id,
            c.status == states.QUEUED,
            *pool,
            c.cpu * 1000 <= free.cpu_m + 0.5,  # millicores, rounded as pack() rounds
            c.gpu_count <= free.gpus,
        )
        .order_by(c.created_at, c.id)
    )
    if skip_locked:
        base = base.with_for_update(skip_locked=True)
    candidates: dict[str, Any] = {}
    chosen: list[str] = []
    for offset in range(0, _CANDIDATES, _PAGE):
        page = session.execute(base.offset(offset).limit(_PAGE)).all()
        candidates.update((row.id, row) for row in page)
        chosen = pack(
            free,
            [
                (row.id, Resources.of(row.cpu, row.memory_mib, row.gpu_count))
                for row in candidates.values()
            ],
            limit=limit,
        )
        if len(page) < _PAGE or len(chosen) < len(candidates) or len(chosen) >= limit:
            break  # the backlog is read, or the instance is full
    if not chosen:
        return []
    inputs = dict(session.execute(select(c.id, c.input).where(c.id.in_(chosen))).all())
    function_ids = {candidates[call_id].function_id for call_id in chosen}
    f, d = m.functions.c, m.deployments.c
    blobs = {
        row.id: row
        for row in session.execute(
            select(f.id, f.blob_hash, f.spec, d.python_version, d.cloudpickle_version)
            .join(m.deployments, d.id == f.deployment_id)
            .where(f.id.in_(function_ids))
        )
    }
    attempt_rows, call_updates, assignments = [], [], []
    for call_id in chosen:
        row = candidates[call_id]
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
        call_updates.append({"_id": call_id, "_fence": fence, "_attempt": attempt_id})
        blob = blobs[row.function_id]
        # model_construct: ``input`` holds raw bytes, which validation would take for base64.
        assignments.append(
            wire.Assignment.model_construct(
                attempt_id=attempt_id,
                call_id=call_id,
                fence=fence,
                app=app_name,
                function=row.function,
                version=row.version,
                blob_hash=blob.blob_hash,
                input=bytes(inputs[call_id]),
                timeout_s=row.timeout_s,
                cpu=row.cpu,
                python_version=blob.python_version,
                cloudpickle_version=blob.cloudpickle_version,
                kind=row.kind,
                port=_service_port(blob.spec) if row.kind == "service" else None,
            )
        )
    session.execute(insert(m.attempts), attempt_rows)
    session.execute(
        update(m.calls)
        .where(c.id == bindparam("_id"), c.status == states.QUEUED)
        .values(
            status=states.RUNNING,
            started_at=now,
            attempts=bindparam("_fence"),
            current_attempt_id=bindparam("_attempt"),
            instance_id=instance.id,
        ),
        call_updates,
    )
    return assignments


def _service_port(spec_json: str) -> int | None:
    return wire.FunctionSpec.model_validate_json(spec_json).port
