from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from multinode import wire
from multinode_controlplane.api.deps import CtxDep, PrincipalDep, json_list, json_response
from multinode_controlplane.services import jobs

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.get("")
def list_jobs(
    ctx: CtxDep,
    principal: PrincipalDep,
    app: str | None = None,
    status: wire.JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> Response:
    return json_list(
        jobs.list_jobs(ctx, principal, app=app, status=status, limit=limit), wire.JobInfo
    )


@router.get("/{job_id}")
def get_job(job_id: str, ctx: CtxDep, principal: PrincipalDep) -> Response:
    return json_response(jobs.get_job(ctx, principal, job_id))


@router.post("/{job_id}/cancel")
def cancel_job(job_id: str, ctx: CtxDep, principal: PrincipalDep) -> Response:
    return json_response(jobs.cancel_job(ctx, principal, job_id))
