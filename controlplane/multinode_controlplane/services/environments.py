"""Environments: the packages a function runs with, built once and reused by every VM.

An environment is identified by a hash of what decides its content: the Python minor
version, the platform of the VMs, the requirements (app-wide ``requirements.txt`` plus the
function's ``pip=``) and the *base*, the packages every VM already has (the SDK's own
dependencies, pinned at this control plane's versions). ``mn deploy`` asks for each
environment it needs (:func:`request`); a new one is queued, and the builder loop
(:mod:`multinode_controlplane.services.environment_builds`) resolves it with uv against the
base, installs what the base lacks, packs it and stores it in the bucket. The deploy
follows the build (:func:`get`, with the log) and is accepted only once every environment
it names is ready (:func:`check_deployable`). Agents download the packed environment by a
presigned URL (:func:`ref`) and keep it on disk.

Building on the control plane means the package index must be reachable from there, and
only from there: VMs (the local cloud's, or production ones in private subnets) need the
bucket alone.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from multinode import wire
from multinode.errors import InvalidRequestError, NotFoundError
from multinode_controlplane import models as m
from multinode_controlplane.clock import to_datetime
from multinode_controlplane.services.auth import Principal, require_key
from multinode_controlplane.services.base_packages import base_pins
from multinode_controlplane.services.context import Context
from multinode_controlplane.services.events import BUILDER

FORMAT = 1
# VMs are x86_64 Linux (the catalog holds x86_64 types only); manylinux_2_28 is what
# current Linux AMIs (glibc 2.34 and later) and the local cloud's host run.
PLATFORM = "x86_64-manylinux_2_28"
OBJECT_PREFIX = "_environments/"
MAX_LOG_ANSWER = 64 * 1024


def environment_id(python: str, requirements: Iterable[str]) -> str:
    """The id of the environment of these requirements on this control plane's VMs."""
    identity = {
        "format": FORMAT,
        "python": python,
        "platform": PLATFORM,
        "requirements": sorted({_normal(r) for r in requirements}),
        "base": sorted(f"{name}=={version}" for name, version in base_pins().items()),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def request(
    ctx: Context, principal: Principal, req: wire.EnvironmentRequest
) -> wire.EnvironmentInfo:
    """The environment of ``req``: as it is when known, else queued for a build. A failed
    one is queued again (the index may have changed since).

    Raises:
        InvalidRequestError: VMs here do not run that Python (the message lists what they run).
    """
    require_key(principal)
    check_python(ctx, req.python, where="the environment")
    env_id = environment_id(req.python, req.requirements)
    now = ctx.clock()
    with ctx.db.write() as session:
        row = session.get(m.EnvironmentRow, env_id)
        if row is None:
            row = m.EnvironmentRow(
                id=env_id,
                python=req.python,
                platform=PLATFORM,
                requirements=json.dumps(req.requirements),
                status=wire.EnvironmentStatus.pending.value,
                created_at=now,
                updated_at=now,
            )
            session.add(row)
        elif row.status == wire.EnvironmentStatus.failed.value:
            row.status, row.error, row.log, row.updated_at = "pending", None, "", now
        session.flush()
        info = _info(row, log_offset=0)
    if info.status is wire.EnvironmentStatus.pending:
        ctx.notifier.notify([BUILDER])
    return info


def get(
    ctx: Context, principal: Principal, env_id: str, *, log_offset: int = 0
) -> wire.EnvironmentInfo:
    """The environment with its build log from ``log_offset`` (characters).

    Raises:
        NotFoundError: no such environment.
    """
    require_key(principal)
    with ctx.db.read() as session:
        row = session.get(m.EnvironmentRow, env_id)
        if row is None:
            raise NotFoundError(f"no environment {env_id}", details={"environment": env_id})
        return _info(row, log_offset=log_offset)


def check_python(ctx: Context, python: str, *, where: str) -> None:
    """Refuse a Python minor version the VMs do not run, listing the ones they do."""
    available = ctx.settings.vm_pythons
    if python not in available:
        raise InvalidRequestError(
            f"{where} needs Python {python}, which this cluster's VMs do not run; they run "
            f"{', '.join(available)}: deploy from Python {available[0]}, or pass "
            f'python="{available[0]}" to the decorator',
            details={"python": python, "available": list(available)},
        )


def check_deployable(
    ctx: Context, session: Session, functions: list[wire.FunctionUpload], default_python: str
) -> None:
    """Refuse a deployment whose functions need a Python the VMs lack, or an environment
    that is not built.

    Raises:
        InvalidRequestError: the first such function, saying what to do.
    """
    for fn in functions:
        check_python(ctx, fn.spec.python or default_python, where=f"function {fn.name}")
        if fn.spec.environment is None:
            continue
        status = session.execute(
            select(m.EnvironmentRow.status).where(m.EnvironmentRow.id == fn.spec.environment)
        ).scalar()
        if status != wire.EnvironmentStatus.ready.value:
            raise InvalidRequestError(
                f"function {fn.name} names environment {fn.spec.environment[:12]}, which is "
                f"{status or 'unknown'}, not ready; deploy with the SDK, which builds it first",
                details={"function": fn.name, "environment": fn.spec.environment},
            )


def ref(ctx: Context, storage: object, env_id: str) -> wire.EnvironmentRef:
    """Where a VM downloads a ready environment: a presigned URL of the bucket's object.

    Raises:
        NotFoundError: the environment is not ready.
    """
    with ctx.db.read() as session:
        row = session.get(m.EnvironmentRow, env_id)
    if row is None or row.status != "ready" or not row.object_key or row.sha256 is None:
        raise NotFoundError(f"environment {env_id} is not ready", details={"environment": env_id})
    bucket = storage.ready().bucket  # type: ignore[attr-defined]
    url = storage.client("s3").generate_presigned_url(  # type: ignore[attr-defined]
        "get_object",
        Params={"Bucket": bucket, "Key": row.object_key},
        ExpiresIn=ctx.settings.environment_url_ttl_s,
    )
    return wire.EnvironmentRef(id=env_id, url=url, sha256=row.sha256, size=row.size or 0)


def _normal(requirement: str) -> str:
    return re.sub(r"\s+", " ", requirement.strip())


def _info(row: m.EnvironmentRow, *, log_offset: int) -> wire.EnvironmentInfo:
    offset = max(0, min(log_offset, len(row.log)))
    return wire.EnvironmentInfo(
        id=row.id,
        python=row.python,
        platform=row.platform,
        requirements=json.loads(row.requirements),
        status=wire.EnvironmentStatus(row.status),
        builds=row.builds,
        size=row.size,
        packages=json.loads(row.packages),
        build_s=row.build_s,
        error=row.error,
        log=row.log[offset : offset + MAX_LOG_ANSWER],
        log_offset=offset,
        log_size=len(row.log),
        created_at=to_datetime(row.created_at),
    )
