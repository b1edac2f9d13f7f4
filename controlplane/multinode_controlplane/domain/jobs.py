"""A job's status as a pure function of its call's, and the reverse for filtering.

A job run is a call; its status adds one thing the call's lacks: ``cancelling``, a
running call whose cancellation was requested and whose process has not ended yet.

==========================================  ============
call status (and cancel requested)          job status
==========================================  ============
queued                                      pending
running                                     running
running, cancel requested                   cancelling
succeeded                                   succeeded
failed, timed_out                           failed
cancelled                                   cancelled
==========================================  ============
"""

from __future__ import annotations

from dataclasses import dataclass

from multinode.wire import JobStatus
from multinode_controlplane.domain import states

_BY_CALL_STATUS: dict[str, JobStatus] = {
    states.QUEUED: JobStatus.pending,
    states.RUNNING: JobStatus.running,
    states.SUCCEEDED: JobStatus.succeeded,
    states.FAILED: JobStatus.failed,
    states.TIMED_OUT: JobStatus.failed,
    states.CANCELLED: JobStatus.cancelled,
}


def job_status(call_status: str, cancel_requested: bool) -> JobStatus:
    """The job status of a call in ``call_status``.

    Raises:
        ValueError: ``call_status`` is not a call status.
    """
    if call_status == states.RUNNING and cancel_requested:
        return JobStatus.cancelling
    try:
        return _BY_CALL_STATUS[call_status]
    except KeyError:
        raise ValueError(f"unknown call status {call_status!r}") from None


@dataclass(frozen=True)
class CallFilter:
    """The calls whose job status is one given status.

    Attributes:
        statuses: call statuses that may map to it.
        cancel_requested: for ``running`` calls only, the value the flag must have; None
            when the flag does not matter.
    """

    statuses: tuple[str, ...]
    cancel_requested: bool | None = None


def call_filter(status: JobStatus) -> CallFilter:
    """The call statuses (and flag) that :func:`job_status` maps to ``status``."""
    if status is JobStatus.running:
        return CallFilter((states.RUNNING,), cancel_requested=False)
    if status is JobStatus.cancelling:
        return CallFilter((states.RUNNING,), cancel_requested=True)
    return CallFilter(tuple(sorted(c for c, j in _BY_CALL_STATUS.items() if j is status)))
