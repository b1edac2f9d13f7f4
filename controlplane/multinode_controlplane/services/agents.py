"""The agent protocol: register with a single-use bootstrap token, poll (heartbeat and
claim work), report results and logs."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
from sqlalchemy import bindparam, insert, select, update

from multinode import wire
from multinode.errors import AuthError, ConflictError
from multinode_controlplane import models as m
from multinode_controlplane.domain import states
from multinode_controlplane.domain.tokens import hash_token, new_token
from multinode_controlplane.services import jobs, service_replicas
from multinode_controlplane.services.auth import Principal, require_agent
from multinode_controlplane.services.claims import claim
from multinode_controlplane.services.context import Context
from multinode_controlplane.services.events import SERVICES, app_key, instance_key

_SHUTDOWN_STATES = ("terminating", "terminated", "failed")
_CHUNK = 900

_i, _a, _c = m.instances.c, m.attempts.c, m.calls.c

# Statements of the poll and report paths are built once: building one per execution
# costs more than running it.

# The heartbeat: its update takes the instance's row lock before anything else is read.
_HEARTBEAT = (
    update(m.instances)
    .where(_i.id == bindparam("_id"))
    .values(last_heartbeat=bindparam("_now"))
    .returning(*m.instances.c)
)
_RUNNING_HERE = (
    select(_a.id, _c.cancel_requested)
    .join(m.calls, _c.id == _a.call_id)
    .where(_a.instance_id == bindparam("_instance"), _a.status == "running")
)
_REPORTED = (
    select(
        _a.id,
        _a.instance_id,
        _a.status.label("attempt_status"),
        _a.fence,
        _a.call_id,
        _c.status,
        _c.current_attempt_id,
        _c.retries,
        _c.user_failures,
        _c.infra_failures,
        _c.cancel_requested,
        _c.failure_reason,
        _c.app_id,
        _c.function,
    )
    .join(m.calls, _c.id == _a.call_id)
    .where(_a.id.in_(bindparam("_ids", expanding=True)))
)
_END_ATTEMPTS = (
    update(m.attempts)
    .where(_a.id == bindparam("_id"))
    .values(status=bindparam("_status"), finished_at=bindparam("_now"), reason=bindparam("_reason"))
)
_END_CALLS = (
    update(m.calls)
    .where(_c.id == bindparam("_id"))
    .values(
        status=bindparam("_status"),
        output=bindparam("_output"),
        error=bindparam("_error"),
        failure_reason=bindparam("_reason"),
        finished_at=bindparam("_finished"),
        user_failures=bindparam("_user"),
        current_attempt_id=bindparam("_current"),
    )
)
_INSERT_LOGS = insert(m.logs)
_APP_NAME = select(m.apps.c.name).where(m.apps.c.id == bindparam("_id"))


def register(ctx: Context, req: wire.RegisterRequest) -> wire.RegisterResponse:
    """Exchange a bootstrap token (from user-data; usable once) for an agent token.

    Raises:
        AuthError: the token is unknown or was already used.
        ConflictError: the instance is already terminating or gone.
    """
    now = ctx.clock()
    digest = hash_token(req.bootstrap_token)
    token = new_token("agent")
    with ctx.db.write() as session:
        instance = session.execute(
            select(m.InstanceRow).where(m.InstanceRow.bootstrap_token_hash == digest)
        ).scalar_one_or_none()
        if instance is None:
            raise AuthError("unknown or already used bootstrap token")
        if instance.state not in ("launching", "booting"):
            raise ConflictError(
                f"instance {instance.id} is {instance.state}; it can no longer register",
                details={"instance_id": instance.id, "state": instance.state},
            )
        instance.bootstrap_token_hash = None  # single use
        instance.agent_token_hash = hash_token(token)
        instance.state = "ready"
        instance.ready_at = instance.last_heartbeat = instance.idle_since = now
        instance.hostname = req.hostname
        app_name = session.execute(
            select(m.apps.c.name).where(m.apps.c.id == instance.app_id)
        ).scalar_one()
        response = wire.RegisterResponse(
            instance_id=instance.id,
            agent_token=token,
            app=app_name,
            vcpus=instance.vcpus,
            memory_mib=instance.memory_mib,
            heartbeat_interval_s=ctx.settings.heartbeat_interval_s,
            poll_timeout_s=ctx.settings.agent_poll_timeout_s,
        )
    return response


def poll_once(
    ctx: Context, instance_id: str, running: Sequence[str], prefetch: int = 0
) -> wire.PollResponse:
    """Record a heartbeat, then answer what the agent must do now (no waiting).

    ``cancel`` lists this instance's attempts whose call the caller cancelled, and
    attempts the agent still runs that are no longer running here (reaped or reassigned).
    """
    now = ctx.clock()
    with ctx.db.write() as session:
        # The update takes the instance's row lock first: a concurrent poll of the same
        # instance, or the provisioner deciding it is idle, waits for this transaction.
        instance = session.execute(_HEARTBEAT, {"_id": instance_id, "_now": now}).first()
        if instance is None:
            raise AuthError("this agent's instance no longer exists")
        if instance.state in _SHUTDOWN_STATES:
            return wire.PollResponse(cancel=list(running), shutdown=True)
        running_here = dict(session.execute(_RUNNING_HERE, {"_instance": instance_id}).all())
        cancel = [att for att, requested in running_here.items() if requested]
        cancel += [att for att in running if att not in running_here]
        assignments = _claim_for(ctx, session, instance, now, prefetch=prefetch)
    return wire.PollResponse.model_construct(assignments=assignments, cancel=cancel, shutdown=False)


async def poll(ctx: Context, principal: Principal, req: wire.PollRequest) -> wire.PollResponse:
    """Long-poll: answer at once when there is work, a cancellation or a shutdown; else
    wait (bounded by ``req.wait`` and ``agent_poll_timeout_s``) for calls of the app to
    become claimable or for news about this instance, and try again."""
    instance_id = require_agent(principal)
    assert principal.app_id is not None
    wait = min(req.wait, ctx.settings.agent_poll_timeout_s)
    deadline = anyio.current_time() + wait
    recheck = ctx.recheck_s
    with ctx.notifier.subscribe([app_key(principal.app_id), instance_key(instance_id)]) as sub:
        response = await anyio.to_thread.run_sync(
            poll_once, ctx, instance_id, req.running, req.prefetch
        )
        while not (response.assignments or response.cancel or response.shutdown):
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                break
            fired = await sub.wait(min(remaining, recheck) if recheck else remaining)
            if fired or recheck:
                response = await anyio.to_thread.run_sync(
                    poll_once, ctx, instance_id, req.running, req.prefetch
                )
    return response


def report(ctx: Context, principal: Principal, req: wire.ReportRequest) -> wire.ReportResponse:
    """Apply results, keep jobs' progress and store log lines, in one transaction.

    A result (or a job's progress) is accepted only for an attempt of this instance that is still running and
    whose fence is the call's current one; others are listed in ``rejected``. A failure
    or timeout requeues the call while the function's ``retries`` last.
    """
    instance_id = require_agent(principal)
    now = ctx.clock()
    max_infra = ctx.settings.max_call_attempts
    ids = list(
        {r.attempt_id for r in req.results}
        | {log.attempt_id for log in req.logs}
        | {event.attempt_id for event in req.services}
        | set(req.released)
        | {p.attempt_id for p in req.progress}
    )
    rejected: list[str] = []
    finished: list[str] = []
    requeued_apps: set[int] = set()
    assignments: list[wire.Assignment] = []
    with ctx.db.write() as session:
        instance = session.execute(_HEARTBEAT, {"_id": instance_id, "_now": now}).first()
        rows = {}
        for start in range(0, len(ids), _CHUNK):
            for row in session.execute(_REPORTED, {"_ids": ids[start : start + _CHUNK]}):
                rows[row.id] = row
        # Progress first: it is only taken from attempts still running, which a result
        # in this same report may end. Stale progress is dropped without a word.
        jobs.record_progress(
            session,
            [
                (rows[p.attempt_id].call_id, p)
                for p in req.progress
                if _is_current(rows.get(p.attempt_id), instance_id, p.attempt_id, p.fence)
            ],
            now=now,
        )
        attempt_updates, call_updates = [], []
        for result in req.results:
            row = rows.get(result.attempt_id)
            if not _is_current(row, instance_id, result.attempt_id, result.fence):
                rejected.append(result.attempt_id)
                continue
            update_row = _apply_result(result, row, now, max_infra)
            states.check_transition(row.status, update_row["_status"])
            attempt_updates.append(
                {"_id": row.id, "_status": result.status, "_reason": result.reason, "_now": now}
            )
            call_updates.append(update_row)
            if update_row["_status"] == states.QUEUED:
                requeued_apps.add(row.app_id)
            else:
                finished.append(row.call_id)
        for attempt_id in req.released:
            row = rows.get(attempt_id)
            if (
                row is None
                or row.instance_id != instance_id
                or row.attempt_status != "running"
                or row.current_attempt_id != attempt_id
                or row.status != states.RUNNING
            ):
                continue
            # Never started: back to the queue, spending neither retries nor attempts.
            attempt_updates.append(
                {"_id": row.id, "_status": "released", "_reason": None, "_now": now}
            )
            call_updates.append(
                {
                    "_id": row.call_id,
                    "_status": states.QUEUED,
                    "_output": None,
                    "_error": None,
                    "_reason": None,
                    "_finished": None,
                    "_user": row.user_failures,
                    "_current": None,
                }
            )
            requeued_apps.add(row.app_id)
        if attempt_updates:
            session.execute(_END_ATTEMPTS, attempt_updates)
        if call_updates:
            session.execute(_END_CALLS, call_updates)
        log_rows = [
            {
                "ts": log.ts,
                "app_id": rows[log.attempt_id].app_id,
                "function": rows[log.attempt_id].function,
                "call_id": rows[log.attempt_id].call_id,
                "stream": log.stream,
                "text": log.text,
            }
            for log in req.logs
            if log.attempt_id in rows and rows[log.attempt_id].instance_id == instance_id
        ]
        if log_rows:
            session.execute(_INSERT_LOGS, log_rows)
        services_changed = bool(req.services) and service_replicas.apply_events(
            session, req.services, rows, instance_id=instance_id, now=now
        )
        if call_updates and instance is not None and instance.state not in _SHUTDOWN_STATES:
            # The results freed capacity: refill it in this same transaction (the heartbeat
            # update above holds the instance's row lock) and answer with the new work,
            # which saves a map one poll round trip per batch.
            assignments = _claim_for(
                ctx, session, instance, now, prefetch=0 if req.released else req.prefetch
            )
    ctx.notifier.calls_finished(finished)
    if services_changed:
        ctx.notifier.notify([SERVICES])
    for app_id in requeued_apps:
        ctx.notifier.calls_created(app_id)
    if call_updates and not assignments:
        # Capacity was freed and nothing was waiting for it: the agent's own waiting
        # poll may claim whatever arrives next.
        ctx.notifier.instance_changed([instance_id])
    return wire.ReportResponse.model_construct(rejected=rejected, assignments=assignments)


def _is_current(row, instance_id: str, attempt_id: str, fence: int) -> bool:  # type: ignore[no-untyped-def]
    """Whether ``row`` is a running attempt of this instance, holding its call's current
    attempt and fence: the only one whose results and progress are taken."""
    return (
        row is not None
        and row.instance_id == instance_id
        and row.attempt_status == "running"
        and row.fence == fence
        and row.current_attempt_id == attempt_id
        and row.status == states.RUNNING
    )


def _claim_for(
    ctx: Context, session, instance, now: float, *, prefetch: int = 0
) -> list[wire.Assignment]:  # type: ignore[no-untyped-def]
    """Claim what fits ``instance`` (whose row this transaction has already locked)."""
    memo = ctx.db.memo
    app_name = memo.get(("app_name", instance.app_id))  # an app's name never changes
    if app_name is None:
        app_name = session.execute(_APP_NAME, {"_id": instance.app_id}).scalar_one()
        memo.put(("app_name", instance.app_id), app_name)
    return claim(
        session,
        skip_locked=not ctx.db.is_sqlite,
        instance=instance,
        app_name=app_name,
        now=now,
        limit=ctx.settings.max_assignments_per_poll,
        prefetch=prefetch,
        memo=memo,
    )


def _apply_result(result: wire.AttemptResult, row, now: float, max_infra: int) -> dict:  # type: ignore[no-untyped-def]
    """The call's new columns after ``result`` (bind names for the bulk update)."""
    error = result.error.model_dump_json() if result.error is not None else None
    out = {
        "_id": row.call_id,
        "_status": result.status,
        "_output": None,
        "_error": error,
        "_reason": result.reason,
        "_finished": now,
        "_user": row.user_failures,
        "_current": row.id,
    }
    if result.status == states.SUCCEEDED:
        out["_output"] = result.output
        out["_reason"] = None
    elif result.status in (states.FAILED, states.TIMED_OUT):
        kind: states.FailureKind = (
            "timeout"
            if result.status == states.TIMED_OUT
            else ("final" if result.final else "error")
        )
        default = f"{result.error.type}: {result.error.message}" if result.error else None
        decision = states.after_attempt_failure(
            row.retries,
            row.user_failures,
            row.infra_failures,
            max_infra,
            kind,
            cancel_requested=row.cancel_requested,
            cancel_reason=row.failure_reason,
            reason=result.reason or default,
        )
        out.update(_status=decision.status, _user=decision.user_failures, _reason=decision.reason)
        if decision.status == states.QUEUED:
            out.update(_finished=None, _current=None)
    else:
        # A running call carries a failure_reason only when its cancel recorded why.
        out["_reason"] = row.failure_reason or result.reason or "cancelled"
    return out
