"""Instance state changes shared by the agent protocol, the provisioner and the reaper:
ending the attempts of an instance that is gone, reaping the lost, listing."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import bindparam, func, select, update

from multinode import wire
from multinode_controlplane import models as m
from multinode_controlplane.clock import to_datetime
from multinode_controlplane.domain import states
from multinode_controlplane.services.auth import Principal, allowed_app_ids, resolve_app
from multinode_controlplane.services.context import Context

ACTIVE = ("launching", "booting", "ready")  # states that hold or will hold capacity
GONE = ("terminated", "failed")


@dataclass
class Ended:
    """What ending attempts changed, for the wake-ups raised after commit."""

    requeued_apps: set[int] = field(default_factory=set)
    finished_calls: list[str] = field(default_factory=list)
    instances: set[str] = field(default_factory=set)

    def merge(self, other: Ended) -> None:
        self.requeued_apps |= other.requeued_apps
        self.finished_calls += other.finished_calls
        self.instances |= other.instances

    def notify(self, ctx: Context) -> None:
        for app_id in self.requeued_apps:
            ctx.notifier.calls_created(app_id)
        ctx.notifier.calls_finished(self.finished_calls)
        ctx.notifier.instance_changed(self.instances)


def end_attempts(
    session,  # type: ignore[no-untyped-def]
    attempt_ids: Sequence[str],
    *,
    kind: states.FailureKind,
    reason: str,
    now: float,
    max_infra: int,
) -> Ended:
    """End running attempts that produced no result (``lost`` or ``timeout``) and decide
    their calls' fate with :func:`states.after_attempt_failure`. Attempts no longer
    running are left alone, so this is safe to repeat."""
    ended = Ended()
    if not attempt_ids:
        return ended
    a, c = m.attempts.c, m.calls.c
    rows = session.execute(
        select(
            a.id,
            a.instance_id,
            a.call_id,
            c.status,
            c.current_attempt_id,
            c.retries,
            c.user_failures,
            c.infra_failures,
            c.cancel_requested,
            c.failure_reason,
            c.app_id,
        )
        .join(m.calls, c.id == a.call_id)
        .where(a.id.in_(list(attempt_ids)), a.status == "running")
    ).all()
    attempt_status = "lost" if kind == "lost" else states.TIMED_OUT
    attempt_updates, call_updates = [], []
    for row in rows:
        attempt_updates.append({"_id": row.id, "_status": attempt_status})
        ended.instances.add(row.instance_id)
        if row.status != states.RUNNING or row.current_attempt_id != row.id:
            continue
        decision = states.after_attempt_failure(
            row.retries,
            row.user_failures,
            row.infra_failures,
            max_infra,
            kind,
            cancel_requested=row.cancel_requested,
            cancel_reason=row.failure_reason,
            reason=reason,
        )
        states.check_transition(row.status, decision.status)
        requeue = decision.status == states.QUEUED
        call_updates.append(
            {
                "_id": row.call_id,
                "_status": decision.status,
                "_user": decision.user_failures,
                "_infra": decision.infra_failures,
                "_reason": decision.reason,
                "_finished": None if requeue else now,
                "_current": None if requeue else row.id,
            }
        )
        if requeue:
            ended.requeued_apps.add(row.app_id)
        else:
            ended.finished_calls.append(row.call_id)
    if attempt_updates:
        session.execute(
            update(m.attempts)
            .where(a.id == bindparam("_id"))
            .values(status=bindparam("_status"), finished_at=now, reason=reason),
            attempt_updates,
        )
    if call_updates:
        session.execute(
            update(m.calls)
            .where(c.id == bindparam("_id"))
            .values(
                status=bindparam("_status"),
                user_failures=bindparam("_user"),
                infra_failures=bindparam("_infra"),
                failure_reason=bindparam("_reason"),
                finished_at=bindparam("_finished"),
                current_attempt_id=bindparam("_current"),
            ),
            call_updates,
        )
    return ended


def end_instances(
    session,  # type: ignore[no-untyped-def]
    instance_ids: Iterable[str],
    *,
    state: str,
    reason: str,
    now: float,
    max_infra: int,
) -> Ended:
    """Move instances to ``state`` (terminated or failed) and lose their running attempts."""
    ids = list(instance_ids)
    if not ids:
        return Ended()
    i = m.instances.c
    session.execute(
        update(m.instances)
        .where(i.id.in_(ids))
        .values(state=state, terminated_at=now, reason=func.coalesce(i.reason, reason))
    )
    running = session.execute(
        select(m.attempts.c.id).where(
            m.attempts.c.instance_id.in_(ids), m.attempts.c.status == "running"
        )
    ).scalars()
    ended = end_attempts(
        session,
        list(running),
        kind="lost",
        reason=f"instance {state}: {reason}",
        now=now,
        max_infra=max_infra,
    )
    ended.instances |= set(ids)
    return ended


def reap_lost(ctx: Context, now: float) -> list[str]:
    """Fail ready instances whose agent stopped heart-beating and lose their attempts
    (requeued without spending user retries). Returns their cloud ids, to terminate.

    The grace is counted from the last heartbeat *and* from when this control plane
    started serving: after a restart, agents that polled a dead server have had no chance
    to heartbeat, and declaring them lost would run their calls a second time.
    """
    cutoff = now - ctx.settings.agent_lost_after_s
    if ctx.started_at > cutoff:
        return []
    i = m.instances.c
    with ctx.db.write() as session:
        rows = session.execute(
            select(i.id, i.cloud_id).where(i.state == "ready", i.last_heartbeat < cutoff)
        ).all()
        ended = end_instances(
            session,
            [r.id for r in rows],
            state="failed",
            reason="lost: no heartbeat",
            now=now,
            max_infra=ctx.settings.max_call_attempts,
        )
    ended.notify(ctx)
    return [r.cloud_id for r in rows if r.cloud_id]


def reap_overdue(ctx: Context, now: float) -> int:
    """End running attempts with no result ``timeout_grace_s`` past their timeout, as
    timed out (their agent failed to stop them). Returns how many."""
    a = m.attempts.c
    with ctx.db.write() as session:
        ids = list(
            session.execute(
                select(a.id).where(
                    a.status == "running",
                    a.started_at + a.timeout_s < now - ctx.settings.timeout_grace_s,
                )
            ).scalars()
        )
        ended = end_attempts(
            session,
            ids,
            kind="timeout",
            reason="no result within the timeout",
            now=now,
            max_infra=ctx.settings.max_call_attempts,
        )
    ended.notify(ctx)
    return len(ids)


def list_instances(
    ctx: Context, principal: Principal, *, app: str | None = None
) -> list[wire.InstanceInfo]:
    """Instances of the caller's apps (or of ``app``), newest first."""
    i = m.instances.c
    with ctx.db.read() as session:
        app_ids = (
            [resolve_app(session, principal, app).id]
            if app is not None
            else allowed_app_ids(session, principal)
        )
        running = (
            select(m.attempts.c.instance_id, func.count().label("n"))
            .where(m.attempts.c.status == "running")
            .group_by(m.attempts.c.instance_id)
            .subquery()
        )
        rows = session.execute(
            select(m.instances, m.apps.c.name.label("app_name"), running.c.n)
            .join(m.apps, m.apps.c.id == i.app_id)
            .outerjoin(running, running.c.instance_id == i.id)
            .where(i.app_id.in_(app_ids))
            .order_by(i.launched_at.desc())
        ).all()
    return [
        wire.InstanceInfo(
            id=r.id,
            cloud_id=r.cloud_id,
            app=r.app_name,
            instance_type=r.instance_type,
            vcpus=r.vcpus,
            memory_mib=r.memory_mib,
            price_per_hour=r.price_per_hour,
            state=wire.InstanceState(r.state),
            launched_for=r.launched_for,
            running_calls=r.n or 0,
            launched_at=to_datetime(r.launched_at),
            ready_at=to_datetime(r.ready_at),
            terminated_at=to_datetime(r.terminated_at),
            reason=r.reason,
        )
        for r in rows
    ]
