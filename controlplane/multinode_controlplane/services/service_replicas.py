"""Services: keep each deployed service's replicas running, one per dedicated instance.

A replica is a call of the service function that never ends on its own (kind
``service``), placed only on an instance launched for that service (``dedicated``), which
runs nothing else. Its agent supervises the process: it reports ``starting``, ``ready``
(with the URL, once the port answers) and ``crashed`` (with a back-off restart in place,
so a crash loop burns no instances). This module turns those reports into the
``service_replicas`` rows and, in :func:`reconcile`, makes the rows match what is
deployed:

- every service of an app's current version has ``replicas`` live replicas of that
  version (new ones are queued as calls; the provisioner launches their instances);
- replicas of an older version keep serving until *all* replicas of the current version
  are ready and ``service_drain_s`` has passed, then their calls are cancelled (the
  agent stops the process; the idle instance is terminated), so a redeploy leaves no
  window without a running service;
- replicas of an undeployed app, or of a service the current version no longer has, stop;
- a replica whose call ended (stopped, or failed after the infrastructure's retries) is
  marked ``stopped``; the next pass queues a replacement if it is still wanted.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import and_, bindparam, func, insert, select, update

from multinode import wire
from multinode.errors import NotFoundError
from multinode_controlplane import models as m
from multinode_controlplane.clock import to_datetime
from multinode_controlplane.domain import states
from multinode_controlplane.services.auth import Principal, allowed_app_ids, resolve_app
from multinode_controlplane.services.context import Context
from multinode_controlplane.services.events import instance_key

# A replica's call never times out: it runs until it is replaced or undeployed.
SERVICE_TIMEOUT_S = 1e9
LIVE = ("pending", "starting", "ready", "crashed")


@dataclass
class ReconcileReport:
    """What one :func:`reconcile` pass changed (for logs and tests)."""

    created: list[str] = field(default_factory=list)  # replica ids queued
    stopping: list[str] = field(default_factory=list)  # replica ids whose call was cancelled
    stopped: list[str] = field(default_factory=list)  # replica ids whose call had ended


def reconcile(ctx: Context, now: float | None = None) -> ReconcileReport:
    """One pass making replicas match the deployed services (see the module docstring)."""
    now = ctx.clock() if now is None else now
    report = ReconcileReport()
    r, c = m.service_replicas.c, m.calls.c
    created_apps: set[int] = set()
    cancel_instances: set[str] = set()
    finished_calls: list[str] = []
    with ctx.db.write() as session:
        rows = session.execute(
            select(
                r.id,
                r.app_id,
                r.function,
                r.version,
                r.replica,
                r.state,
                r.ready_at,
                r.call_id,
                c.status.label("call_status"),
                c.failure_reason,
                c.instance_id,
            )
            .join(m.calls, c.id == r.call_id)
            .where(r.state != "stopped")
        ).all()
        live = []
        for row in rows:
            if row.call_status in states.TERMINAL:
                session.execute(
                    update(m.service_replicas)
                    .where(r.id == row.id)
                    .values(state="stopped", stopped_at=now, updated_at=now, url=None)
                )
                report.stopped.append(row.id)
            else:
                live.append(row)
        by_service: dict[tuple[int, str], list] = defaultdict(list)
        for row in live:
            by_service[(row.app_id, row.function)].append(row)
        wanted = _wanted(session)
        for (app_id, name), (version, function_id, spec) in wanted.items():
            replicas = by_service.get((app_id, name), [])
            current = [row for row in replicas if row.version == version]
            have = {row.replica for row in current}
            for index in range(spec.replicas):
                if index in have:
                    continue
                report.created.append(
                    _queue_replica(session, app_id, name, function_id, version, index, spec, now)
                )
                created_apps.add(app_id)
            old = [row for row in replicas if row.version != version and row.state != "stopping"]
            ready = [row.ready_at for row in current if row.state == "ready"]
            switched = (
                len(ready) >= spec.replicas and max(ready) + ctx.settings.service_drain_s <= now
            )
            if old and switched:
                _stop(session, old, now, report, cancel_instances, finished_calls)
        for key, replicas in by_service.items():
            if key not in wanted:
                leaving = [row for row in replicas if row.state != "stopping"]
                _stop(session, leaving, now, report, cancel_instances, finished_calls)
    for app_id in created_apps:
        ctx.notifier.calls_created(app_id)
    ctx.notifier.calls_finished(finished_calls)
    ctx.notifier.notify(instance_key(i) for i in cancel_instances)
    if report.stopping or report.stopped:
        ctx.notifier.wake_provisioner()
    return report


def apply_events(
    session,  # type: ignore[no-untyped-def]
    events: Sequence[wire.ServiceEvent],
    attempts: dict,
    *,
    instance_id: str,
    now: float,
) -> bool:
    """Record what agents said of their replicas; returns whether anything was recorded.

    ``attempts`` maps attempt ids to rows with ``instance_id``, ``fence``,
    ``current_attempt_id`` and ``call_id`` (the report's own lookup): an event counts only
    from the instance holding the call's current attempt with the same fence, as results do.
    """
    r = m.service_replicas.c
    changes = []
    for event in events:
        row = attempts.get(event.attempt_id)
        if (
            row is None
            or row.instance_id != instance_id
            or row.fence != event.fence
            or row.current_attempt_id != event.attempt_id
        ):
            continue
        changes.append(
            {
                "_call": row.call_id,
                "_state": event.state,
                "_url": event.url if event.state == "ready" else None,
                "_restarts": event.restarts,
                "_looping": event.crash_looping,
                "_exit": event.detail,
                "_instance": instance_id,
                "_ready": now if event.state == "ready" else None,  # the server's clock
            }
        )
    if not changes:
        return False
    # A replica being stopped stays "stopping" whatever its process reports meanwhile.
    session.execute(
        update(m.service_replicas)
        .where(r.call_id == bindparam("_call"), r.state.in_(LIVE))
        .values(
            state=bindparam("_state"),
            url=bindparam("_url"),
            restarts=bindparam("_restarts"),
            crash_looping=bindparam("_looping"),
            last_exit=func.coalesce(bindparam("_exit"), r.last_exit),  # kept across restarts
            instance_id=bindparam("_instance"),
            ready_at=bindparam("_ready"),
            updated_at=now,
        ),
        changes,
    )
    return True


def list_services(
    ctx: Context,
    principal: Principal,
    *,
    app: str | None = None,
    include_stopped: bool = False,
) -> list[wire.ServiceInfo]:
    """The replicas of ``app`` (default: every app of the owner), newest version first.

    Raises:
        NotFoundError: ``app`` does not exist.
    """
    r, ap = m.service_replicas.c, m.apps.c
    with ctx.db.read() as session:
        if app is not None:
            app_ids = [resolve_app(session, principal, app).id]
        else:
            app_ids = allowed_app_ids(session, principal)
        where = [r.app_id.in_(app_ids)]
        if not include_stopped:
            where.append(r.state != "stopped")
        rows = session.execute(
            select(m.service_replicas, ap.name.label("app_name"))
            .join(m.apps, ap.id == r.app_id)
            .where(*where)
            .order_by(ap.name, r.function, r.version.desc(), r.replica)
        ).all()
    return [_info(ctx, row) for row in rows]


def get_service(ctx: Context, principal: Principal, app: str, name: str) -> list[wire.ServiceInfo]:
    """The live replicas of service ``name`` of ``app`` (stopped ones too if none is live);
    empty while the current deployment declares it but the services loop has not yet
    started its replicas (right after a deploy).

    Raises:
        NotFoundError: no such app, or the app neither declares nor ever ran a service of
            that name.
    """
    rows = [
        s for s in list_services(ctx, principal, app=app, include_stopped=True) if s.name == name
    ]
    if not rows and _declared(ctx, principal, app, name):
        return []
    if not rows:
        raise NotFoundError(
            f"app {app!r} has no service {name!r}; declare one with @mn.service(port=...) and "
            "deploy the app",
            details={"app": app, "service": name},
        )
    live = [s for s in rows if s.state != wire.ServiceState.stopped]
    return live or rows


# ---------------------------------------------------------------------------- helpers


def _declared(ctx: Context, principal: Principal, app: str, name: str) -> bool:
    """Whether the app's current deployment has a service called ``name``."""
    ap, d, f = m.apps.c, m.deployments.c, m.functions.c
    with ctx.db.read() as session:
        app_id = resolve_app(session, principal, app).id
        spec = session.execute(
            select(f.spec)
            .join(m.deployments, d.id == f.deployment_id)
            .join(m.apps, and_(ap.id == d.app_id, ap.current_version == d.version))
            .where(ap.id == app_id, ap.status == "deployed", f.name == name)
        ).scalar_one_or_none()
    return spec is not None and wire.FunctionSpec.model_validate_json(spec).kind == "service"


def _wanted(session) -> dict[tuple[int, str], tuple[int, int, wire.FunctionSpec]]:  # type: ignore[no-untyped-def]
    """``{(app id, service name): (current version, function id, spec)}`` of deployed apps."""
    ap, d, f = m.apps.c, m.deployments.c, m.functions.c
    rows = session.execute(
        select(ap.id, ap.current_version, f.id.label("function_id"), f.name, f.spec)
        .join(m.deployments, and_(d.app_id == ap.id, d.version == ap.current_version))
        .join(m.functions, f.deployment_id == d.id)
        .where(ap.status == "deployed", f.spec.contains('"service"'))
    ).all()
    wanted = {}
    for row in rows:
        spec = wire.FunctionSpec.model_validate_json(row.spec)
        if spec.kind == "service":
            wanted[(row.id, row.name)] = (row.current_version, row.function_id, spec)
    return wanted


def _queue_replica(
    session,  # type: ignore[no-untyped-def]
    app_id: int,
    name: str,
    function_id: int,
    version: int,
    index: int,
    spec: wire.FunctionSpec,
    now: float,
) -> str:
    call_id = "c" + uuid.uuid4().hex[:28]
    replica_id = "s" + uuid.uuid4().hex[:16]
    session.execute(
        insert(m.calls).values(
            id=call_id,
            app_id=app_id,
            version=version,
            function_id=function_id,
            function=name,
            kind="service",
            status=states.QUEUED,
            input=b"",  # a service takes no arguments; the agent calls it with none
            created_at=now,
            cpu=spec.cpu,
            memory_mib=spec.memory_mib,
            gpu_count=spec.gpu_count,
            timeout_s=SERVICE_TIMEOUT_S,
            retries=0,
        )
    )
    session.execute(
        insert(m.service_replicas).values(
            id=replica_id,
            app_id=app_id,
            function=name,
            version=version,
            replica=index,
            call_id=call_id,
            state="pending",
            created_at=now,
            updated_at=now,
        )
    )
    return replica_id


def _stop(session, rows, now, report, cancel_instances, finished_calls) -> None:  # type: ignore[no-untyped-def]
    """Cancel the calls of ``rows``: a queued one at once, a running one via its agent."""
    r, c = m.service_replicas.c, m.calls.c
    for row in rows:
        if row.call_status == states.QUEUED:
            session.execute(
                update(m.calls)
                .where(c.id == row.call_id, c.status == states.QUEUED)
                .values(status=states.CANCELLED, finished_at=now, failure_reason="replaced")
            )
            finished_calls.append(row.call_id)
        else:
            session.execute(
                update(m.calls).where(c.id == row.call_id).values(cancel_requested=True)
            )
            if row.instance_id:
                cancel_instances.add(row.instance_id)
        session.execute(
            update(m.service_replicas)
            .where(r.id == row.id)
            .values(state="stopping", updated_at=now)
        )
        report.stopping.append(row.id)


def endpoint(ctx: Context, app: str, service: str) -> str | None:
    """The service's stable address at the gateway (``MN_SERVER_GATEWAY_URL``), if any."""
    base = ctx.settings.gateway_url
    return f"{base.rstrip('/')}/{app}/{service}/" if base else None


def _info(ctx: Context, row) -> wire.ServiceInfo:  # type: ignore[no-untyped-def]
    return wire.ServiceInfo(
        endpoint=endpoint(ctx, row.app_name, row.function),
        app=row.app_name,
        name=row.function,
        version=row.version,
        replica=row.replica,
        state=wire.ServiceState(row.state),
        url=row.url,
        restarts=row.restarts,
        crash_looping=row.crash_looping,
        last_exit=row.last_exit,
        call_id=row.call_id,
        instance_id=row.instance_id,
        created_at=to_datetime(row.created_at),
        ready_at=to_datetime(row.ready_at) if row.ready_at is not None else None,
        stopped_at=to_datetime(row.stopped_at) if row.stopped_at is not None else None,
    )
