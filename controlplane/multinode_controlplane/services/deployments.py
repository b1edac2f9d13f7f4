"""Apps and their immutable deployments."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, bindparam, func, select, update

from multinode import wire
from multinode.errors import InvalidRequestError, NotFoundError
from multinode_controlplane import models as m
from multinode_controlplane.clock import to_datetime
from multinode_controlplane.db import Memo
from multinode_controlplane.domain import states
from multinode_controlplane.services import environments, schedules, secrets
from multinode_controlplane.services.auth import Principal, ensure_owner, resolve_app
from multinode_controlplane.services.context import Context
from multinode_controlplane.services.events import SERVICES, instance_key

_d, _f = m.deployments.c, m.functions.c

# Statements of call creation's look-ups are built once: building one per execution costs
# more than running it.
_DEPLOYMENT = select(m.deployments).where(
    _d.app_id == bindparam("_app"), _d.version == bindparam("_version")
)
_VERSIONS = select(_d.version).where(_d.app_id == bindparam("_app"))
_FUNCTIONS = select(m.functions).where(_f.deployment_id == bindparam("_deployment"))


def deploy(
    ctx: Context, principal: Principal, app_name: str, req: wire.DeployRequest
) -> wire.DeploymentInfo:
    """Store a new immutable version of ``app_name`` (created on first deploy) and make it current.

    Raises:
        InvalidRequestError: a wire format this server does not know, no functions,
            duplicate function names, blobs that were never uploaded, or a secret named
            by a function that does not exist, a Python the VMs do not run, or an
            environment that is not built.
    """
    if not re.match(wire.APP_NAME_PATTERN, app_name):
        # Dict keys are "<app>#<dict>#...": a name holding '#' could reach another app's.
        raise InvalidRequestError(
            f"app name {app_name[:80]!r} is not valid; {wire.APP_NAME_RULE}",
            details={"field": "app", "rule": wire.APP_NAME_PATTERN},
        )
    if req.format != wire.WIRE_FORMAT:
        raise InvalidRequestError(
            f"wire format {req.format} is not supported (this server speaks {wire.WIRE_FORMAT}); "
            "use matching SDK and server versions",
            details={"format": req.format, "supported": [wire.WIRE_FORMAT]},
        )
    names = [f.name for f in req.functions]
    if not names:
        raise InvalidRequestError("a deployment needs at least one function")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidRequestError(
            f"function names must be unique: {', '.join(duplicates)}",
            details={"duplicates": duplicates},
        )
    rules = schedules.validate_uploads(req, ctx.settings, function_names=set(names))
    hashes = sorted({f.blob_hash for f in req.functions})
    now = ctx.clock()
    with ctx.db.write() as session:
        present = set(
            session.execute(select(m.blobs.c.sha256).where(m.blobs.c.sha256.in_(hashes))).scalars()
        )
        missing = [h for h in hashes if h not in present]
        if missing:
            raise InvalidRequestError(
                "upload the function blobs before deploying (PUT /v1/blobs/{sha256})",
                details={"missing_blobs": missing},
            )
        ensure_owner(session, principal.owner, now)
        secrets.check_named(session, principal.owner, {f.name: f.spec for f in req.functions})
        environments.check_deployable(ctx, session, req.functions, _minor(req.python_version))
        app = session.execute(
            select(m.AppRow).where(m.AppRow.owner == principal.owner, m.AppRow.name == app_name)
        ).scalar_one_or_none()
        if app is None:
            app = m.AppRow(
                owner=principal.owner, name=app_name, created_at=now, ephemeral=req.ephemeral
            )
            session.add(app)
            session.flush()
        latest = session.execute(
            select(func.max(m.DeploymentRow.version)).where(m.DeploymentRow.app_id == app.id)
        ).scalar()
        deployment = m.DeploymentRow(
            app_id=app.id,
            version=(latest or 0) + 1,
            python_version=req.python_version,
            cloudpickle_version=req.cloudpickle_version,
            created_at=now,
        )
        session.add(deployment)
        session.flush()
        rows = [
            m.FunctionRow(
                deployment_id=deployment.id,
                name=f.name,
                spec=f.spec.model_dump_json(),
                blob_hash=f.blob_hash,
            )
            for f in req.functions
        ]
        session.add_all(rows)
        schedules.sync(session, ctx, app_id=app.id, uploads=req.schedules, rules=rules, now=now)
        app.current_version = deployment.version
        app.status = "deployed"
        app.ephemeral = req.ephemeral
        session.flush()
        info = _deployment_info(app, deployment, rows)
    ctx.notifier.notify([SERVICES])  # start the new version's services
    return info


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def get_app(ctx: Context, principal: Principal, app_name: str) -> wire.AppInfo:
    with ctx.db.read() as session:
        app = resolve_app(session, principal, app_name)
        return _app_info(session, app)


def list_apps(ctx: Context, principal: Principal) -> list[wire.AppInfo]:
    with ctx.db.read() as session:
        rows = session.execute(
            select(m.AppRow).where(m.AppRow.owner == principal.owner).order_by(m.AppRow.name)
        ).scalars()
        return [_app_info(session, app) for app in rows]


def get_function(ctx: Context, principal: Principal, app_name: str, name: str) -> wire.FunctionInfo:
    """The function ``name`` of the app's current version.

    Raises:
        NotFoundError: no such app, an undeployed app, or no such function
            (``details["functions"]`` lists the ones that exist).
    """
    with ctx.db.read() as session:
        app = resolve_app(session, principal, app_name)
        deployment = current_deployment(session, app)
        row = find_function(session, app, deployment, name)
        return _function_info(app.name, deployment.version, row)


def undeploy(ctx: Context, principal: Principal, app_name: str) -> wire.AppInfo:
    """Mark the app undeployed: queued calls are cancelled, running ones asked to cancel,
    and its instances marked for termination (the provisioner loop terminates them)."""
    now = ctx.clock()
    with ctx.db.write() as session:
        app = resolve_app(session, principal, app_name)
        app.status = "undeployed"
        cancelled = list(
            session.execute(
                update(m.calls)
                .where(m.calls.c.app_id == app.id, m.calls.c.status == states.QUEUED)
                .values(status=states.CANCELLED, finished_at=now, failure_reason="app undeployed")
                .returning(m.calls.c.id)
            ).scalars()
        )
        # Why they end, kept for when they do (a running call has no failure_reason).
        session.execute(
            update(m.calls)
            .where(m.calls.c.app_id == app.id, m.calls.c.status == states.RUNNING)
            .values(cancel_requested=True, failure_reason="app undeployed")
        )
        instance_ids = list(
            session.execute(
                update(m.instances)
                .where(
                    m.instances.c.app_id == app.id,
                    m.instances.c.state.in_(("launching", "booting", "ready")),
                )
                .values(state="terminating", reason="app undeployed")
                .returning(m.instances.c.id)
            ).scalars()
        )
        info = _app_info(session, app)
    ctx.notifier.calls_finished(cancelled)
    ctx.notifier.notify(instance_key(i) for i in instance_ids)
    ctx.notifier.notify([SERVICES])
    ctx.notifier.wake_provisioner()
    return info


def current_deployment(
    session, app, version: int | None = None, *, memo: Memo | None = None
) -> Row[Any]:  # type: ignore[no-untyped-def]
    """The app's deployment ``version`` (default: current), from ``memo`` when it holds it
    (a deployment never changes once written). Raises :class:`NotFoundError`."""
    if version is None:
        if app.status != "deployed" or app.current_version is None:
            raise NotFoundError(
                f"app {app.name!r} is not deployed; run `mn deploy` first",
                details={"app": app.name},
            )
        version = app.current_version
    key = ("deployment", app.id, version)
    row = memo.get(key) if memo is not None else None
    if row is None:
        row = session.execute(_DEPLOYMENT, {"_app": app.id, "_version": version}).first()
        if row is not None and memo is not None:
            memo.put(key, row)
    if row is None:
        versions = list(session.execute(_VERSIONS, {"_app": app.id}).scalars())
        raise NotFoundError(
            f"app {app.name!r} has no version {version}",
            details={"app": app.name, "version": version, "versions": sorted(versions)},
        )
    return row


def find_function(session, app, deployment, name: str, *, memo: Memo | None = None) -> Row[Any]:  # type: ignore[no-untyped-def]
    """The function ``name`` of ``deployment``; :class:`NotFoundError` lists those that
    exist. ``memo`` may hold a deployment's functions (they never change once written)."""
    key = ("functions", deployment.id)
    by_name = memo.get(key) if memo is not None else None
    if by_name is None:
        by_name = {
            row.name: row for row in session.execute(_FUNCTIONS, {"_deployment": deployment.id})
        }
        if memo is not None:
            memo.put(key, by_name)
    if name not in by_name:
        existing = sorted(by_name)
        raise NotFoundError(
            f"app {app.name!r} version {deployment.version} has no function {name!r}; "
            f"it has: {', '.join(existing) or 'none'}",
            details={
                "app": app.name,
                "version": deployment.version,
                "function": name,
                "functions": existing,
            },
        )
    return by_name[name]


def _app_info(session, app: m.AppRow) -> wire.AppInfo:  # type: ignore[no-untyped-def]
    names: Sequence[str] = []
    if app.current_version is not None:
        names = list(
            session.execute(
                select(m.FunctionRow.name)
                .join(m.DeploymentRow, m.DeploymentRow.id == m.FunctionRow.deployment_id)
                .where(
                    m.DeploymentRow.app_id == app.id,
                    m.DeploymentRow.version == app.current_version,
                )
                .order_by(m.FunctionRow.name)
            ).scalars()
        )
    return wire.AppInfo(
        name=app.name,
        status=app.status,  # type: ignore[arg-type]
        version=app.current_version,
        created_at=to_datetime(app.created_at),
        ephemeral=app.ephemeral,
        functions=list(names),
    )


def _function_info(app_name: str, version: int, row: Any) -> wire.FunctionInfo:
    return wire.FunctionInfo(
        app=app_name,
        name=row.name,
        version=version,
        spec=wire.FunctionSpec.model_validate_json(row.spec),
        blob_hash=row.blob_hash,
    )


def _deployment_info(
    app: m.AppRow, deployment: m.DeploymentRow, rows: list[m.FunctionRow]
) -> wire.DeploymentInfo:
    return wire.DeploymentInfo(
        app=app.name,
        version=deployment.version,
        created_at=to_datetime(deployment.created_at),
        python_version=deployment.python_version,
        cloudpickle_version=deployment.cloudpickle_version,
        functions=[_function_info(app.name, deployment.version, row) for row in rows],
    )
