"""Jobs: the runs of functions whose spec has kind "job".

A job run is a call (``services/calls.py`` creates it, claims and reports run it); its
row in ``jobs`` adds the latest value its generator yielded, kept as opaque bytes. This
module reads runs in the job vocabulary (``domain/jobs.py``), cancels them, and records
the progress agents report.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import and_, bindparam, or_, select, update

from multinode import wire
from multinode.errors import InvalidRequestError, NotFoundError
from multinode_controlplane import models as m
from multinode_controlplane.clock import to_datetime
from multinode_controlplane.domain import jobs as domain
from multinode_controlplane.domain import states
from multinode_controlplane.services import calls
from multinode_controlplane.services.auth import Principal, allowed_app_ids, resolve_app
from multinode_controlplane.services.context import Context


def get_job(ctx: Context, principal: Principal, job_id: str) -> wire.JobInfo:
    """The job run ``job_id``.

    Raises:
        NotFoundError: no call with this id among the caller's apps.
        InvalidRequestError: the id is a call of a function that is not a job.
    """
    with ctx.db.read() as session:
        rows = _job_infos(session, principal, [m.calls.c.id == job_id], limit=1, outer=True)
    if not rows:
        raise NotFoundError(
            f"no job {job_id!r}; `mn jobs` lists the jobs you can see",
            details={"job_id": job_id},
        )
    info = rows[0]
    if info is None:
        raise _not_a_job(ctx, principal, job_id)
    return info


def list_jobs(
    ctx: Context,
    principal: Principal,
    *,
    app: str | None = None,
    status: wire.JobStatus | None = None,
    limit: int = 100,
) -> list[wire.JobInfo]:
    """Job runs of the caller's apps (or of ``app``), newest first, at most ``limit``.

    Raises:
        NotFoundError: ``app`` is not one of the caller's apps.
        InvalidRequestError: ``limit`` outside 1..10000.
    """
    if limit < 1 or limit > 10_000:
        raise InvalidRequestError("limit must be between 1 and 10000", details={"limit": limit})
    c = m.calls.c
    where = []
    with ctx.db.read() as session:
        if app is not None:
            where.append(m.jobs.c.app_id == resolve_app(session, principal, app).id)
        if status is not None:
            wanted = domain.call_filter(status)
            where.append(c.status.in_(wanted.statuses))
            if wanted.cancel_requested is not None:
                where.append(c.cancel_requested.is_(wanted.cancel_requested))
        return [
            info
            for info in _job_infos(session, principal, where, limit=limit, outer=False)
            if info is not None
        ]


def cancel_job(ctx: Context, principal: Principal, job_id: str) -> wire.JobInfo:
    """Cancel a job run: a pending one at once; a running one becomes ``cancelling`` until
    its agent has killed its process, then ``cancelled``. A finished run is left as it
    is. Idempotent.

    Raises:
        NotFoundError, InvalidRequestError: as :func:`get_job`.
    """
    get_job(ctx, principal, job_id)
    calls.cancel_call(ctx, principal, job_id)
    return get_job(ctx, principal, job_id)


def record_progress(
    session,  # type: ignore[no-untyped-def]
    updates: Sequence[tuple[str, wire.AttemptProgress]],
    *,
    now: float,
) -> None:
    """Keep each job's newest yielded value, inside the caller's report transaction.

    Args:
        updates: ``(call_id, progress)`` pairs whose attempt the caller has checked is the
            call's current one on the reporting instance.
        now: the time recorded as ``progress_at``.

    An update replaces the stored value only if its ``(fence, seq)`` is greater, so the
    value of a newer attempt, or a later yield, is never replaced by an older one.
    """
    if not updates:
        return
    j = m.jobs.c
    session.execute(
        update(m.jobs)
        .where(
            j.call_id == bindparam("_id"),
            or_(
                j.progress_fence < bindparam("_fence"),
                and_(j.progress_fence == bindparam("_fence"), j.progress_seq < bindparam("_seq")),
            ),
        )
        .values(
            progress=bindparam("_value"),
            progress_fence=bindparam("_fence"),
            progress_seq=bindparam("_seq"),
            progress_at=now,
        ),
        [
            {"_id": call_id, "_fence": p.fence, "_seq": p.seq, "_value": bytes(p.value)}
            for call_id, p in updates
        ],
    )


def _job_infos(
    session,  # type: ignore[no-untyped-def]
    principal: Principal,
    where: list,
    *,
    limit: int,
    outer: bool,
) -> list[wire.JobInfo | None]:
    """Rows as :class:`wire.JobInfo`, newest first; with ``outer``, calls that are not jobs
    come back as None (so a lookup by id can tell "not a job" from "no such call")."""
    c, j = m.calls.c, m.jobs.c
    query = select(
        c.id,
        m.apps.c.name.label("app"),
        c.function,
        c.version,
        c.status,
        c.cancel_requested,
        c.created_at,
        c.started_at,
        c.finished_at,
        c.attempts,
        c.output,
        c.error,
        c.failure_reason,
        j.call_id.label("job_id"),
        j.progress,
        j.progress_seq,
        j.progress_at,
    )
    if outer:
        query = query.select_from(m.calls).outerjoin(m.jobs, j.call_id == c.id)
    else:
        query = query.select_from(m.jobs).join(m.calls, c.id == j.call_id)
    rows = session.execute(
        query.join(m.apps, m.apps.c.id == c.app_id)
        .where(c.app_id.in_(allowed_app_ids(session, principal)), *where)
        .order_by(c.created_at.desc(), c.id.desc())
        .limit(limit)
    )
    return [None if r.job_id is None else _job_info(r) for r in rows]


def _job_info(r) -> wire.JobInfo:  # type: ignore[no-untyped-def]
    succeeded = r.status == states.SUCCEEDED
    result = r.output if succeeded else r.progress
    # model_construct: ``result`` holds raw bytes, which validation would read as base64.
    return wire.JobInfo.model_construct(
        id=r.id,
        app=r.app,
        function=r.function,
        version=r.version,
        status=domain.job_status(r.status, r.cancel_requested),
        call_status=wire.CallStatus(r.status),
        created_at=to_datetime(r.created_at),
        started_at=to_datetime(r.started_at),
        finished_at=to_datetime(r.finished_at),
        attempts=r.attempts,
        result=None if result is None else bytes(result),
        result_at=to_datetime(r.finished_at if succeeded else r.progress_at),
        yields=r.progress_seq,
        error=None if r.error is None else wire.CallError.model_validate_json(r.error),
        reason=r.failure_reason,
    )


def _not_a_job(ctx: Context, principal: Principal, call_id: str) -> InvalidRequestError:
    info = calls.get_call(ctx, principal, call_id)
    return InvalidRequestError(
        f"{call_id!r} is a call of function {info.function!r} in app {info.app!r}, not a job; "
        f"read it with mn.get_call({call_id!r}) or `mn calls {info.app}`",
        details={"call_id": call_id, "app": info.app, "function": info.function},
    )
