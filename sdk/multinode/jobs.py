"""``@mn.job``: long work with progress, started now and read back later by id.

    @mn.job(cpu=4)
    def process(data):
        for i, chunk in enumerate(data):
            ...
            yield {"done": i + 1, "of": len(data)}  # visible through process.get(job_id)

    job_id = process.start(data)  # returns at once
    process.get(job_id)  # JobRun: status, result (the latest yielded value), error
    process.cancel(job_id)  # its process ends within seconds

A job is a function (``FunctionSpec.kind == "job"``) and each run is a call of it, so
``mn calls``, ``mn logs`` and ``mn cancel`` see runs too. What a job adds is progress and
the job vocabulary (``docs/jobs.md``): while a generator job runs, ``result`` is the
latest value it yielded; once it finishes, ``result`` is its return value when that is
not None, else the last value it yielded.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar, overload

from multinode import wire
from multinode._calls import POLL_S, unwrap
from multinode._serialization import loads
from multinode.errors import InvalidRequestError, NotFoundError
from multinode.functions import _DEFAULTS as FUNCTION_DEFAULTS
from multinode.functions import Function, get_function, make_decorator

R = TypeVar("R")

DEFAULT_TIMEOUT_S = 24 * 3600.0  # a job is long work: a day unless it says otherwise
_UNSET: Any = object()


class JobRun:
    """One run of a job as the control plane last saw it (``job.get(job_id)``).

    Attributes:
        id: the run's id (its call's id).
        app: the app it belongs to.
        job: the job's name.
        status: pending, running, succeeded, failed, cancelling or cancelled.
        attempts: how many times it was started (retries and lost machines add some).
        created_at, started_at, finished_at: when it was queued, last started, ended.
        result_at: when ``result`` last changed.
        yields: how many values its generator yielded so far (its latest attempt's).
        reason: why it failed or was cancelled, when it did.
        traceback: the remote traceback when the job raised.
    """

    def __init__(self, info: wire.JobInfo) -> None:
        self._info = info
        self.id = info.id
        self.app = info.app
        self.job = info.function
        self.status = info.status
        self.attempts = info.attempts
        self.created_at: datetime = info.created_at
        self.started_at: datetime | None = info.started_at
        self.finished_at: datetime | None = info.finished_at
        self.result_at: datetime | None = info.result_at
        self.yields = info.yields
        self.reason = info.reason
        self.traceback = info.error.traceback if info.error is not None else None
        self._result: Any = _UNSET
        self._error: Any = _UNSET

    def __repr__(self) -> str:
        return f"<mn.JobRun {self.id} {self.job} {self.status.value}>"

    @property
    def done(self) -> bool:
        """True once the run succeeded, failed or was cancelled; it will not change again."""
        return self.status.terminal

    @property
    def result(self) -> Any:
        """The final result once succeeded; before that (and after a failure or
        cancellation) the latest value the job yielded, or None if it yielded none.

        Raises:
            SerializationError: the value cannot be unpickled here (a module missing on
                this machine, another Python version); the message says which.
        """
        if self._result is _UNSET:
            data = self._info.result
            what = f"the result of job {self.job} run {self.id}"
            self._result = None if data is None else loads(data, what=what)
        return self._result

    @property
    def error(self) -> BaseException | None:
        """Why a failed run failed, as an exception to inspect or ``raise``; else None.

        The job's own exception comes back as its own type with the remote traceback as a
        note; a timeout is :class:`CallTimeoutError`; a run the platform could not
        complete is :class:`InfrastructureError`. A cancelled run has no error.
        """
        if self._error is _UNSET:
            self._error = None
            if self.status is wire.JobStatus.failed:
                output = wire.CallOutput.model_construct(
                    call_id=self.id,
                    status=self._info.call_status,
                    output=None,
                    error=self._info.error,
                    reason=self.reason,
                )
                try:
                    unwrap(output, function=f"job {self.job}")
                except Exception as exc:
                    self._error = exc
        return self._error


class Job(Function[R]):
    """A handle on a job: start runs, read them back by id, cancel them.

    Calling the handle runs the function here as plain Python (a generator job returns
    its generator). ``.call`` and ``.map`` work as for a :class:`Function`, returning
    each run's final result.
    """

    def __repr__(self) -> str:
        bound = f" app={self._app!r}" if self._app else ""
        return f"<mn.Job {self.name}{bound}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_job, super().__reduce__()[1])

    def start(self, *args: Any, **kwargs: Any) -> str:  # type: ignore[override]
        """Queue one run of the job and return its id at once.

        Raises:
            SerializationError: an argument cannot be pickled (nothing is sent).
            InvalidRequestError: the handle is not bound to a deployed app.
        """
        return self._start(args, kwargs, wait=0.0).id

    def get(self, job_id: str) -> JobRun:
        """The run ``job_id`` as it is now (one request).

        Raises:
            NotFoundError: no such run, or it is a run of another job.
            InvalidRequestError: ``job_id`` is the id of a call that is not a job's.
        """
        from multinode._client import get_client

        return self._check(get_client().get_job(job_id))

    def wait(self, job_id: str, timeout: float | None = None) -> JobRun:
        """Wait until the run ends, or at most ``timeout`` seconds, and return it as it is
        then (check ``.done``). Raises as :meth:`get`."""
        from multinode._client import get_client

        client = get_client()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = POLL_S if deadline is None else max(0.0, deadline - time.monotonic())
            finished = client.wait_outputs([job_id], timeout=min(POLL_S, remaining))
            if finished or (deadline is not None and time.monotonic() >= deadline):
                return self.get(job_id)

    def cancel(self, job_id: str) -> JobRun:
        """Stop the run: a pending one is cancelled at once, a running one is
        ``cancelling`` until its process has been killed (within seconds), then
        ``cancelled``. A finished run is left as it is. Raises as :meth:`get`."""
        from multinode._client import get_client

        client = get_client()
        self._check(client.get_job(job_id))
        return JobRun(client.cancel_job(job_id))

    def list(self, *, status: str | None = None, limit: int = 50) -> builtins.list[JobRun]:
        """This job's runs, newest first, optionally only those in ``status``."""
        from multinode._client import get_client

        app = self._target().app
        runs = get_client().list_jobs(app=app, status=status, limit=limit)
        return [JobRun(info) for info in runs if info.function == self.name]

    def _check(self, info: wire.JobInfo) -> JobRun:
        app = self.app
        if info.function != self.name or (app is not None and info.app != app):
            raise NotFoundError(
                f"{info.id!r} is a run of job {info.function!r} in app {info.app!r}, not of "
                f"{self.name!r}; read it with mn.get_job({info.app!r}, {info.function!r})",
                details={"job_id": info.id, "app": info.app, "job": info.function},
            )
        return JobRun(info)


@overload
def job(_func: Callable[..., R], /) -> Job[R]: ...


@overload
def job(
    _func: None = None,
    /,
    *,
    cpu: float = 1,
    memory: int | str | None = None,
    gpu: str | None = None,
    timeout: Any = DEFAULT_TIMEOUT_S,
    retries: int = 0,
    max_workers: int = 10,
    cooldown: Any = 60,
    env: dict[str, str] | None = None,
    secrets: list[str] | None = None,
    pip: list[str] | None = None,
    python: str | None = None,
    capacity_timeout: Any = 1800,
) -> Callable[[Callable[..., R]], Job[R]]: ...


def job(
    _func: Callable[..., Any] | None = None,
    /,
    *,
    cpu: float = 1,
    memory: int | str | None = None,
    gpu: str | None = None,
    timeout: Any = DEFAULT_TIMEOUT_S,
    retries: int = 0,
    max_workers: int = 10,
    cooldown: Any = 60,
    env: dict[str, str] | None = None,
    secrets: list[str] | None = None,
    pip: list[str] | None = None,
    python: str | None = None,
    capacity_timeout: Any = 1800,
) -> Any:
    """Declare a job: long work started with ``.start`` and followed by id.

    Use as ``@mn.job`` or with options. A generator function reports progress: each value
    it yields becomes the run's ``result`` while it runs.

    Args:
        cpu, memory, gpu, retries, max_workers, cooldown, env, secrets, pip, python,
            capacity_timeout: as for ``@mn.function``.
        timeout: seconds (or a timedelta) one run may last before it is stopped and
            failed; default one day.

    Raises:
        InvalidRequestError: at decoration time, for any invalid option, with the fix.
    """
    options = {
        "cpu": cpu,
        "memory": memory,
        "gpu": gpu,
        "timeout": timeout,
        "retries": retries,
        "max_workers": max_workers,
        "cooldown": cooldown,
        "env": env,
        "secrets": secrets,
        "pip": pip,
        "python": python,
        "capacity_timeout": capacity_timeout,
    }
    return make_decorator(_func, options, defaults=_DEFAULTS, cls=Job, kind="job")


_DEFAULTS: dict[str, Any] = {**FUNCTION_DEFAULTS, "timeout": DEFAULT_TIMEOUT_S}


def get_job(app: str, name: str) -> Job[Any]:
    """A handle on job ``name`` of the deployed ``app`` (one request to check it).

    Raises:
        NotFoundError: no such app or function; the message names what exists.
        InvalidRequestError: ``name`` is a function but not a job.
    """
    handle = get_function(app, name)
    if handle.spec.kind != "job":
        raise InvalidRequestError(
            f"{name!r} in app {app!r} is a {handle.spec.kind}, not a job; use "
            f'mn.get_function("{app}", "{name}"), or decorate it with @mn.job and redeploy',
            details={"app": app, "function": name, "kind": handle.spec.kind},
        )
    return Job(None, name=name, spec=handle.spec, app=app)


def _rebuild_job(
    func: Callable[..., Any] | None,
    name: str,
    spec: dict[str, Any],
    app: str | None,
    version: int | None,
) -> Job[Any]:
    return Job(func, name=name, spec=wire.FunctionSpec(**spec), app=app, version=version)
