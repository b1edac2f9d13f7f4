"""Calls: create in bulk (the hot path), read, list, cancel, and wait for outputs."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import anyio
from sqlalchemy import bindparam, insert, select, update

from multinode import wire
from multinode.errors import InvalidRequestError, NotFoundError
from multinode_controlplane import models as m
from multinode_controlplane.clock import to_datetime
from multinode_controlplane.db import Memo
from multinode_controlplane.domain import states
from multinode_controlplane.services.auth import (
    Principal,
    allowed_app_ids,
    app_columns,
    resolve_app,
)
from multinode_controlplane.services.context import Context
from multinode_controlplane.services.deployments import current_deployment, find_function
from multinode_controlplane.services.events import call_key, instance_key

CHUNK = 900  # ids per IN (...) query: under SQLite's default 999 bound parameters
_TERMINAL = tuple(sorted(states.TERMINAL))

_c = m.calls.c

# Statements of call creation and output reads are built once: building one per execution
# costs more than running it.
_INSERT_CALLS = insert(m.calls)
_INSERT_JOBS = insert(m.jobs)
# A chunk's rows (any status: they also say which ids exist), or only its terminal ones.
_OUTPUTS_OR_STATUS = select(_c.id, _c.status, _c.output, _c.error, _c.failure_reason).where(
    _c.id.in_(bindparam("_ids", expanding=True)),
    _c.app_id.in_(bindparam("_apps", expanding=True)),
)
_OUTPUTS = _OUTPUTS_OR_STATUS.where(_c.status.in_(_TERMINAL))


def create_calls(ctx: Context, principal: Principal, req: wire.CallsCreate) -> wire.CallsCreated:
    """Queue one call per input, in one transaction (one multi-row insert), and wake the
    app's waiting agents and the provisioner.

    Raises:
        NotFoundError: unknown app, version or function (the details list what exists).
        ForbiddenError: an agent creating calls of another app.
    """
    now = ctx.clock()
    batch = uuid.uuid4().hex[:24]
    # Ids sort in input order within a batch, so a map is claimed in the order it was given.
    ids = [f"c{batch}{i:04x}" for i in range(len(req.inputs))]
    memo = ctx.db.memo
    with ctx.db.write() as session:
        app = app_columns(session, principal, req.app)  # read each time: a deploy moves it on
        deployment = current_deployment(session, app, req.version, memo=memo)
        function = find_function(session, app, deployment, req.function, memo=memo)
        spec = _spec(memo, function)
        if spec.kind == "service":
            raise InvalidRequestError(
                f"{req.function} is a service: it runs on its own once deployed and cannot be "
                "called; send requests to its URL (`mn services`)",
                details={"app": req.app, "function": req.function},
            )
        common = {
            "app_id": app.id,
            "version": deployment.version,
            "function_id": function.id,
            "function": function.name,
            "kind": spec.kind,
            "status": states.QUEUED,
            "created_at": now,
            "parent_call_id": req.parent_call_id,
            "cpu": spec.cpu,
            "memory_mib": spec.memory_mib,
            "gpu_count": spec.gpu_count,
            "timeout_s": spec.timeout_s,
            "retries": spec.retries,
        }
        session.execute(
            _INSERT_CALLS,
            [
                {**common, "id": call_id, "input": data}
                for call_id, data in zip(ids, req.inputs, strict=True)
            ],
        )
        if spec.kind == "job":
            # What a job adds to its call (its progress) lives in its own row: services/jobs.py.
            session.execute(
                _INSERT_JOBS,
                [{"call_id": call_id, "app_id": app.id, "created_at": now} for call_id in ids],
            )
        app_id, version = app.id, deployment.version
    ctx.notifier.calls_created(app_id)
    return wire.CallsCreated(app=req.app, function=req.function, version=version, call_ids=ids)


def _spec(memo: Memo, function: Any) -> wire.FunctionSpec:
    """The function's spec, parsed once per function (a function never changes)."""
    key = ("spec", function.id)
    spec = memo.get(key)
    if spec is None:
        spec = wire.FunctionSpec.model_validate_json(function.spec)
        memo.put(key, spec)
    return spec


async def create_and_wait(
    ctx: Context, principal: Principal, req: wire.CallsCreate
) -> wire.CallsCreated:
    """Create the calls; with ``req.wait``, also answer with the outputs ready within it.

    Waiting goes through :func:`wait_outputs`, which reads the database after it starts
    listening, so a call finishing between the two steps is not missed.
    """
    created = await anyio.to_thread.run_sync(create_calls, ctx, principal, req)
    if req.wait <= 0:
        return created
    waited = await wait_outputs(
        ctx, principal, wire.OutputsRequest(call_ids=created.call_ids, timeout=req.wait)
    )
    return created.model_copy(update={"outputs": waited.outputs})


def get_call(ctx: Context, principal: Principal, call_id: str) -> wire.CallInfo:
    """Raises :class:`NotFoundError` for a call that does not exist or is not the caller's."""
    with ctx.db.read() as session:
        rows = _call_infos(session, principal, [m.calls.c.id == call_id], limit=1)
    if not rows:
        raise NotFoundError(f"no call {call_id!r}", details={"call_id": call_id})
    return rows[0]


def list_calls(
    ctx: Context,
    principal: Principal,
    *,
    app: str | None = None,
    status: wire.CallStatus | None = None,
    limit: int = 100,
) -> list[wire.CallInfo]:
    """Newest first, at most ``limit``; only the caller's apps."""
    with ctx.db.read() as session:
        where = []
        if app is not None:
            where.append(m.calls.c.app_id == resolve_app(session, principal, app).id)
        if status is not None:
            where.append(m.calls.c.status == status.value)
        return _call_infos(session, principal, where, limit=limit)


def cancel_call(ctx: Context, principal: Principal, call_id: str) -> wire.CallInfo:
    """Cancel a call: a queued one at once; a running one when its agent stops it (it hears
    of the request on its next poll) or its instance is lost. Terminal calls are left as
    they are. Idempotent."""
    now = ctx.clock()
    finished: list[str] = []
    instance_id = None
    with ctx.db.write() as session:
        allowed = allowed_app_ids(session, principal)
        row = session.execute(
            select(m.calls.c.status, m.calls.c.instance_id).where(
                m.calls.c.id == call_id, m.calls.c.app_id.in_(allowed)
            )
        ).first()
        if row is None:
            raise NotFoundError(f"no call {call_id!r}", details={"call_id": call_id})
        if row.status == states.QUEUED:
            states.check_transition(row.status, states.CANCELLED)
            session.execute(
                update(m.calls)
                .where(m.calls.c.id == call_id)
                .values(status=states.CANCELLED, finished_at=now, failure_reason="cancelled")
            )
            finished.append(call_id)
        elif row.status == states.RUNNING:
            session.execute(
                update(m.calls).where(m.calls.c.id == call_id).values(cancel_requested=True)
            )
            instance_id = row.instance_id
    ctx.notifier.calls_finished(finished)
    if instance_id:
        ctx.notifier.notify([instance_key(instance_id)])
    return get_call(ctx, principal, call_id)


def terminal_outputs(
    ctx: Context, principal: Principal, call_ids: Sequence[str], *, check_exist: bool = False
) -> list[wire.CallOutput]:
    """Outputs of the calls among ``call_ids`` that are terminal (one query per chunk).

    Raises:
        NotFoundError: with ``check_exist``, when some ids are unknown or not the caller's.
    """
    outputs: list[wire.CallOutput] = []
    found = 0
    with ctx.db.read() as session:
        allowed = allowed_app_ids(session, principal)
        # With check_exist, one query per chunk answers both questions: every row says it
        # exists, and only terminal rows carry an output.
        query = _OUTPUTS_OR_STATUS if check_exist else _OUTPUTS
        for start in range(0, len(call_ids), CHUNK):
            chunk = call_ids[start : start + CHUNK]
            rows = session.execute(query, {"_ids": chunk, "_apps": allowed}).all()
            found += len(rows)
            outputs.extend(
                wire.CallOutput.model_construct(
                    call_id=row.id,
                    status=wire.CallStatus(row.status),
                    output=None if row.output is None else bytes(row.output),
                    error=None
                    if row.error is None
                    else wire.CallError.model_validate_json(row.error),
                    reason=row.failure_reason,
                )
                for row in rows
                if row.status in _TERMINAL
            )
        if check_exist and found < len(call_ids):
            _check_exist(session, allowed, call_ids)
    return outputs


async def wait_outputs(
    ctx: Context, principal: Principal, req: wire.OutputsRequest
) -> wire.OutputsResponse:
    """Long-poll: the terminal outputs among ``req.call_ids`` as soon as there is at least
    one, or an empty list after ``req.timeout`` seconds.

    Once some outputs are in but not all, the answer lingers a few milliseconds
    (``outputs_linger_s``) to collect the calls finishing alongside them, so a map over
    thousands of calls costs one request per batch rather than per call, while a single
    call is answered the moment it finishes. Only the calls a wake-up names are re-read.
    """
    ids = list(dict.fromkeys(req.call_ids))
    deadline = anyio.current_time() + req.timeout
    recheck = ctx.recheck_s
    with ctx.notifier.subscribe(call_key(i) for i in ids) as sub:
        outputs = await anyio.to_thread.run_sync(
            lambda: terminal_outputs(ctx, principal, ids, check_exist=True)
        )
        while not outputs:
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                break
            fired = await sub.wait(min(remaining, recheck) if recheck else remaining)
            if fired:
                subset = [key.partition(":")[2] for key in fired]
            elif recheck:
                subset = ids
            else:
                continue
            outputs = await anyio.to_thread.run_sync(
                lambda subset=subset: terminal_outputs(ctx, principal, subset)
            )
        if outputs and len(outputs) < len(ids):
            outputs += await _linger(ctx, principal, sub, {o.call_id for o in outputs})
    return wire.OutputsResponse.model_construct(outputs=outputs)


async def _linger(ctx: Context, principal: Principal, sub, have: set[str]) -> list[wire.CallOutput]:  # type: ignore[no-untyped-def]
    """Collect wake-ups for up to ``outputs_linger_s`` and read the calls they name."""
    until = anyio.current_time() + ctx.settings.outputs_linger_s
    fired: set[str] = set()
    while (remaining := until - anyio.current_time()) > 0:
        fired.update(key.partition(":")[2] for key in await sub.wait(remaining))
    subset = [call_id for call_id in fired if call_id not in have]
    if not subset:
        return []
    return await anyio.to_thread.run_sync(lambda: terminal_outputs(ctx, principal, subset))


def _check_exist(session, allowed: list[int], call_ids: Sequence[str]) -> None:  # type: ignore[no-untyped-def]
    found: set[str] = set()
    for start in range(0, len(call_ids), CHUNK):
        chunk = call_ids[start : start + CHUNK]
        found.update(
            session.execute(
                select(m.calls.c.id).where(m.calls.c.id.in_(chunk), m.calls.c.app_id.in_(allowed))
            ).scalars()
        )
    if len(found) < len(call_ids):
        unknown = [i for i in call_ids if i not in found]
        raise NotFoundError(
            f"{len(unknown)} of the call ids are unknown (or not yours), e.g. {unknown[0]!r}",
            details={"unknown": unknown[:20], "count": len(unknown)},
        )


def _call_infos(session, principal: Principal, where: list, *, limit: int) -> list[wire.CallInfo]:  # type: ignore[no-untyped-def]
    if limit < 1 or limit > 10_000:
        raise InvalidRequestError("limit must be between 1 and 10000", details={"limit": limit})
    c = m.calls.c
    rows = session.execute(
        select(
            c.id,
            m.apps.c.name.label("app"),
            c.function,
            c.version,
            c.status,
            c.created_at,
            c.started_at,
            c.finished_at,
            c.attempts,
            c.failure_reason,
            c.instance_id,
            c.parent_call_id,
        )
        .join(m.apps, m.apps.c.id == c.app_id)
        .where(c.app_id.in_(allowed_app_ids(session, principal)), *where)
        .order_by(c.created_at.desc(), c.id.desc())
        .limit(limit)
    )
    return [
        wire.CallInfo(
            id=r.id,
            app=r.app,
            function=r.function,
            version=r.version,
            status=wire.CallStatus(r.status),
            created_at=to_datetime(r.created_at),
            started_at=to_datetime(r.started_at),
            finished_at=to_datetime(r.finished_at),
            attempts=r.attempts,
            failure_reason=r.failure_reason,
            instance_id=r.instance_id,
            parent_call_id=r.parent_call_id,
        )
        for r in rows
    ]
