"""Multinode: run Python functions on cloud VMs that exist only while there is work.

    import multinode as mn

    @mn.function(cpu=16)
    def crunch(x): ...

    @mn.job(cpu=4)
    def process(data): ...  # process.start(data) -> job id; process.get(job_id)

Then ``mn deploy app.py`` and ``crunch.map(range(1000))``. Importing this package is
cheap: cloudpickle, httpx and rich load only when a call, map or deploy needs them.
"""

from __future__ import annotations

from typing import Any

from multinode._calls import CallHandle
from multinode.dicts import Dict, get_dict
from multinode.errors import (
    AuthError,
    CallCancelledError,
    CallTimeoutError,
    ConflictError,
    ControlPlaneUnreachableError,
    ForbiddenError,
    InfrastructureError,
    InvalidRequestError,
    MultinodeError,
    NotFoundError,
    RemoteError,
    ResultTimeoutError,
    SerializationError,
    ServiceNotReadyError,
)
from multinode.functions import Function, function, get_call, get_function
from multinode.jobs import Job, JobRun, get_job, job
from multinode.schedules import ScheduledTask, schedule, scheduled_task
from multinode.services import Service, get_service, service
from multinode.wire import JobStatus

__all__ = [
    # functions and calls
    "function",
    "Function",
    "CallHandle",
    "get_call",
    "get_function",
    "deploy",
    "undeploy",
    "list_instances",
    # jobs
    "job",
    "Job",
    "JobRun",
    "JobStatus",
    "get_job",
    # scheduled tasks
    "scheduled_task",
    "schedule",
    "ScheduledTask",
    # services
    "service",
    "Service",
    "get_service",
    # dicts
    "get_dict",
    "Dict",
    # errors
    "MultinodeError",
    "SerializationError",
    "InvalidRequestError",
    "NotFoundError",
    "RemoteError",
    "CallTimeoutError",
    "CallCancelledError",
    "ResultTimeoutError",
    "ControlPlaneUnreachableError",
    "InfrastructureError",
    "AuthError",
    "ForbiddenError",
    "ConflictError",
    "ServiceNotReadyError",
    "__version__",
]


def deploy(target: Any, *, name: str, ephemeral: bool = False) -> Any:
    """Deploy a file, module or list of handles as app ``name``; see ``multinode._deploy.deploy``."""
    from multinode._deploy import deploy as _deploy

    return _deploy(target, name=name, ephemeral=ephemeral)


def undeploy(app: str) -> Any:
    """Undeploy ``app``: its calls, jobs and services stop and its instances end.

    Returns its :class:`multinode.wire.AppInfo`. Raises NotFoundError for an unknown app.
    """
    from multinode._client import get_client

    return get_client().undeploy(app)


def list_instances(app: str | None = None) -> list[Any]:
    """The instances the control plane launched (for ``app``, or all of yours), newest first.

    Each is a :class:`multinode.wire.InstanceInfo`: id, instance type, vCPUs, state, price.
    """
    from multinode._client import get_client

    return get_client().instances(app=app)


def __getattr__(name: str) -> Any:
    # Resolved on first use: reading installed metadata costs more than the rest of import.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("multinode")
        except PackageNotFoundError:
            return "0+unknown"
    raise AttributeError(f"module 'multinode' has no attribute {name!r}")
