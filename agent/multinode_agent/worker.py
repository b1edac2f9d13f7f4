"""Worker processes, as the agent sees them: start, run one job at a time, kill, reuse.

A :class:`Worker` is a long-lived ``python`` process running
:func:`multinode_agent.runtime.main`, connected by a socket pair over which pickled tuples
travel (the protocol is described in :mod:`multinode_agent.runtime`). Reusing the process
keeps a no-op call far below a millisecond; a process is only replaced after it was killed
(timeout, cancel) or died. :class:`WorkerPool` hands out idle workers and retires the ones
idle for too long.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Literal

from multinode.wire import CallError

log = logging.getLogger(__name__)

LogLine = tuple[str | None, str, str, float]
"""``(attempt_id, stream, text, unix_ts)``; attempt_id is None for output between jobs."""
LogSink = Callable[[list[LogLine]], None]
ProgressSink = Callable[[int, bytes], None]
"""Called with ``(seq, pickled_value)`` for the latest value a job's generator yielded."""

_START_TIMEOUT_S = 60.0
# How long a skipped job may stay at the head of a batch before it counts as started.
_SKIP_ANSWER_S = 0.05
_BOOT = "import multinode_agent.runtime as r; r.main()"


class WorkerStartError(RuntimeError):
    """A worker process exited or stayed silent instead of reporting ready."""


@dataclass(frozen=True)
class Job:
    """One attempt to run in a worker.

    Attributes:
        blob: the pickled function; may be None when ``worker.has_function(blob_hash)``.
        input: pickled ``(args, kwargs)``.
        env: variables set in the worker's environment before the function runs.
        kind: the function's kind; for ``"job"``, a returned generator is run to its end
            and its values reported as progress.
        progress_interval_s: least time between two progress reports of this job.
        environment: the folder of the function's environment (its packages), or None
            for the agent's own packages only. A worker keeps the first it is given.
    """

    attempt_id: str
    function: str
    blob_hash: str
    blob: bytes | None
    input: bytes
    timeout_s: float
    python_version: str
    cloudpickle_version: str
    env: Mapping[str, str] = field(default_factory=dict)
    kind: str = "function"
    progress_interval_s: float = 0.5
    environment: str | None = None


@dataclass(frozen=True)
class Outcome:
    """How a job ended; the fields of :class:`multinode.wire.AttemptResult` minus ids."""

    status: Literal["succeeded", "failed", "timed_out", "cancelled"]
    output: bytes | None = None
    error: CallError | None = None
    reason: str | None = None
    final: bool = False  # no other attempt could succeed (see AttemptResult.final)


class Worker:
    """One worker process. ``run`` is called by one thread at a time; ``cancel`` by any.

    Args:
        kill_grace_s: after SIGTERM, how long the process may take to exit before SIGKILL.
        env: the process environment (default: this process's, minus ``MN_AGENT_*``).

    Raises:
        WorkerStartError: the process did not report ready.
    """

    def __init__(self, *, kill_grace_s: float = 1.0, env: Mapping[str, str] | None = None) -> None:
        self.kill_grace_s = kill_grace_s
        ours, theirs = socket.socketpair()
        child_fd = theirs.fileno()
        # Its own session, so killing the process group also ends what user code spawned.
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, str(child_fd)],
            pass_fds=(child_fd,),
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else worker_env(),
            start_new_session=True,
        )
        theirs.close()
        self._conn = Connection(ours.detach())
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._poller = select.poll()
        self._poller.register(self._conn.fileno(), select.POLLIN)
        self._poller.register(self._wake_r, select.POLLIN)
        self._cancels: set[str] = set()
        self._events: list[tuple[int, int]] = []
        self._functions: set[str] = set()
        self.bound = False  # whether it has run a job (and so holds an environment)
        self.environment: str | None = None
        self._dead = False
        self.idle_since = time.monotonic()
        if not self._conn.poll(_START_TIMEOUT_S):
            self.kill()
            raise WorkerStartError(
                f"worker process {self.pid} did not start in {_START_TIMEOUT_S}s"
            )
        try:
            self._conn.recv()  # ("ready", pid)
        except (EOFError, OSError) as exc:
            code = self._reap()
            raise WorkerStartError(
                f"worker process exited with code {code} while starting"
            ) from exc

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def alive(self) -> bool:
        """False once the process was killed or found dead; such a worker is never reused."""
        return not self._dead and self._proc.poll() is None

    def fits(self, environment: str | None) -> bool:
        """Whether a job of ``environment`` may run here: a worker keeps the environment
        of its first job (packages, once imported, cannot be swapped)."""
        return not self.bound or self.environment == environment

    def has_function(self, blob_hash: str) -> bool:
        """True when the function is loaded here, so a job may omit its blob."""
        return blob_hash in self._functions

    def run(
        self, job: Job, *, on_logs: LogSink, on_progress: ProgressSink | None = None
    ) -> Outcome:
        """Run ``job`` to its end and return how it ended; output lines go to ``on_logs``,
        a job's yielded values (throttled, the latest winning) to ``on_progress``.

        Past ``job.timeout_s`` the process is killed (``timed_out``); after
        ``cancel(job.attempt_id)`` it is killed (``cancelled``); if it dies on its own the
        job fails with the exit code. In all three cases the worker is dead afterwards.

        Raises:
            ValueError: ``job.blob`` is None but this worker has not loaded that function.
        """
        outcomes: list[Outcome] = []
        self.run_batch(
            [job],
            on_logs=on_logs,
            on_done=lambda _job, outcome: outcomes.append(outcome),
            on_progress=None if on_progress is None else lambda _job, seq, v: on_progress(seq, v),
        )
        return outcomes[0]

    def run_batch(
        self,
        jobs: Sequence[Job],
        *,
        on_logs: LogSink,
        on_done: Callable[[Job, Outcome], None],
        on_progress: Callable[[Job, int, bytes], None] | None = None,
    ) -> list[Job]:
        """Run ``jobs`` one after another in this process, handing each outcome to
        ``on_done`` as soon as that job ends. Sending them together costs the process one
        wake-up per batch of short calls rather than per call.

        Each job has its own ``timeout_s``, counted from when the job before it ended. A
        timeout, a :meth:`cancel` of the running job, or the process dying ends the
        running job as in :meth:`run` and kills the worker; the jobs after it never
        started and are returned, for the caller to run elsewhere. A :meth:`cancel` of a
        job that has not started drops it (``cancelled``) and the batch goes on.

        Returns:
            The jobs that never started (empty when every job got an outcome).

        Raises:
            ValueError: a job's function is neither loaded here nor sent with an earlier
                job of the batch.
        """
        loaded = set(self._functions)
        for job in jobs:
            if job.blob is None and job.blob_hash not in loaded:
                raise ValueError(f"worker {self.pid} has not loaded {job.blob_hash}; send the blob")
            if not self.fits(job.environment):
                raise ValueError(f"worker {self.pid} runs another environment than {job.function}")
            loaded.add(job.blob_hash)
        self.bound, self.environment = True, jobs[0].environment if jobs else self.environment
        by_id = {job.attempt_id: job for job in jobs}
        self._cancels.intersection_update(by_id)  # requests for earlier batches are stale
        sent_blobs: set[str] = set()
        try:
            for job in jobs:
                blob = None
                if job.blob_hash not in self._functions and job.blob_hash not in sent_blobs:
                    blob = job.blob
                    sent_blobs.add(job.blob_hash)
                self._conn.send(("run", self._message(job, blob)))
        except OSError:
            outcome = self._died()
            on_done(jobs[0], outcome)
            return list(jobs[1:])
        remaining = list(jobs)  # in order; the first is running
        skipped: set[str] = set()
        deadline = time.monotonic() + remaining[0].timeout_s
        confirm_by = math.inf  # see below: when an unanswered skip means the job started
        while remaining:
            head = remaining[0]
            timed_out = self._wait(min(deadline, confirm_by))
            if timed_out and time.monotonic() >= confirm_by:
                # The head was skipped while queued, but the worker had started it before
                # it read the skip (a skip it applies is answered at once): stop it.
                self.kill()
                on_done(head, Outcome("cancelled", reason="cancelled on request"))
                return remaining[1:]
            if timed_out:
                self.kill()
                on_done(
                    head, Outcome("timed_out", reason=f"exceeded timeout of {head.timeout_s:g}s")
                )
                return remaining[1:]
            if self._woken():
                if head.attempt_id in self._cancels:
                    self.kill()
                    on_done(head, Outcome("cancelled", reason="cancelled on request"))
                    return remaining[1:]
                for attempt_id in self._cancels - skipped:
                    skipped.add(attempt_id)
                    try:
                        self._conn.send(("skip", attempt_id))
                    except OSError:
                        break  # the recv below sees the death
            while self._conn.poll(0):
                try:
                    reply = self._conn.recv()
                except (EOFError, OSError):
                    on_done(head, self._died())
                    return remaining[1:]
                if reply[0] == "logs":
                    on_logs(reply[1])
                elif reply[0] == "progress" and reply[1] in by_id:
                    if on_progress is not None:
                        on_progress(by_id[reply[1]], reply[2], reply[3])
                elif reply[0] == "done":
                    for attempt_id, outcome in reply[1]:
                        job = by_id.get(attempt_id)
                        if job is None or job not in remaining:
                            continue
                        remaining.remove(job)
                        on_done(job, self._finished(job, outcome))
                    if remaining and remaining[0] is not head:
                        head = remaining[0]
                        deadline = time.monotonic() + head.timeout_s
                        confirm_by = math.inf
                        if head.attempt_id in skipped:
                            confirm_by = time.monotonic() + _SKIP_ANSWER_S
                        elif head.attempt_id in self._cancels:
                            self.kill()  # cancelled as it started: stop it as if running
                            on_done(head, Outcome("cancelled", reason="cancelled on request"))
                            return remaining[1:]
                if not remaining:
                    break
        return []

    def cancel(self, attempt_id: str) -> None:
        """Stop ``attempt_id`` if it runs here, or drop it if it waits in the running batch;
        safe from any thread."""
        self._cancels.add(attempt_id)
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def terminate(self) -> None:
        """Send SIGTERM to the worker's process group without waiting; it is not reused."""
        self._dead = True
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGTERM the worker's process group, SIGKILL it after the grace period, reap it."""
        self._dead = True
        if self._proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self._proc.wait(self.kill_grace_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
        # Whatever the worker started may outlive it in the group; end that too.
        self._signal(signal.SIGKILL)
        self._reap()

    def close(self) -> None:
        """Kill the process if needed and release every descriptor."""
        self.kill()
        self._conn.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _message(self, job: Job, blob: bytes | None) -> dict:
        return {
            "attempt_id": job.attempt_id,
            "function": job.function,
            "blob_hash": job.blob_hash,
            "blob": blob,
            "input": job.input,
            "python_version": job.python_version,
            "cloudpickle_version": job.cloudpickle_version,
            "env": dict(job.env),
            "kind": job.kind,
            "progress_interval_s": job.progress_interval_s,
            "environment": job.environment,
        }

    def _wait(self, deadline: float) -> bool:
        """Wait until the process says something or a cancel arrives; True past ``deadline``."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            # poll() takes a C int of milliseconds; a service's timeout is far beyond it.
            self._events = self._poller.poll(max(1, int(min(remaining, 3600.0) * 1000) + 1))
            if self._events:
                return False

    def _woken(self) -> bool:
        """Whether :meth:`cancel` was called since the last look (and forget that it was)."""
        if not any(fd == self._wake_r for fd, _ in self._events):
            return False
        _drain(self._wake_r)
        return True

    def _finished(self, job: Job, outcome: dict) -> Outcome:
        if outcome.get("cached"):
            self._functions.add(job.blob_hash)
        error = outcome.get("error")
        return Outcome(
            outcome["status"],
            output=outcome.get("output"),
            # model_construct: the bytes are raw already (validation would expect base64).
            error=CallError.model_construct(**error) if error else None,
            reason=outcome.get("reason"),
            final=bool(outcome.get("final")),
        )

    def _died(self) -> Outcome:
        self._signal(signal.SIGKILL)  # what it started may still run in its group
        code = self._reap()
        self._dead = True
        name = ""
        if code is not None and code < 0:
            with contextlib.suppress(ValueError):
                name = f" ({signal.Signals(-code).name})"
        return Outcome("failed", reason=f"worker process exited with code {code}{name}")

    def _reap(self) -> int | None:
        try:
            return self._proc.wait(5.0)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            return self._proc.wait()

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)


class WorkerPool:
    """Idle workers to reuse, started on demand; one job per worker at a time.

    When no worker is idle, :meth:`acquire` starts one in the background and takes
    whichever comes first: that new worker or one released meanwhile. A burst of short
    calls is then served by the workers that finish first, while the new ones join the
    pool for later; a long call never waits for another call to end.

    Args:
        idle_s: a worker idle longer than this is retired by :meth:`reap_idle`...
        warm: ...unless it is one of the ``warm`` most recently used idle workers.
        kill_grace_s: passed to each :class:`Worker`.
        env: the workers' environment (default: :func:`worker_env`).
    """

    def __init__(
        self,
        *,
        idle_s: float = 60.0,
        warm: int = 1,
        kill_grace_s: float = 1.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.idle_s = idle_s
        self.warm = warm
        self.kill_grace_s = kill_grace_s
        self._env = dict(env) if env is not None else worker_env()
        self._cond = threading.Condition()
        self._idle: list[Worker] = []  # most recently released last
        self._busy: set[Worker] = set()
        self._closed = False
        self._spawning = 0
        # Starting hundreds of interpreters at once would starve the running calls of CPU.
        self._max_spawning = max(2, os.cpu_count() or 2)

    def acquire(
        self, *, prefer_function: str | None = None, environment: str | None = None
    ) -> Worker:
        """An idle worker that fits ``environment`` (one that has ``prefer_function``
        loaded if any), else a new one.

        Raises:
            WorkerStartError: the worker started for this caller failed to start.
            RuntimeError: the pool is closed.
        """
        spawn: _Spawn | None = None
        with self._cond:
            while True:
                if self._closed:
                    raise RuntimeError("worker pool is closed")
                worker = self._pick(prefer_function, environment)
                if worker is not None:
                    self._busy.add(worker)
                    return worker
                if spawn is not None and spawn.error is not None:
                    raise spawn.error
                if (spawn is None or spawn.done) and self._spawning < self._max_spawning:
                    # None started yet, or ours was taken by another caller: start one.
                    spawn = _Spawn()
                    self._spawning += 1
                    threading.Thread(target=self._start, args=(spawn,), daemon=True).start()
                self._cond.wait()

    def release(self, worker: Worker) -> None:
        """Give ``worker`` back after a job; a dead one is discarded."""
        with self._cond:
            self._busy.discard(worker)
            self._cond.notify_all()
            if worker.alive and not self._closed:
                worker.idle_since = time.monotonic()
                self._idle.append(worker)
                return
        worker.close()

    def prestart(self) -> None:
        """Start workers in the background until ``warm`` are idle or starting; returns at once."""
        with self._cond:
            missing = self.warm - len(self._idle) - self._spawning
            for _ in range(max(missing, 0) if not self._closed else 0):
                self._spawning += 1
                threading.Thread(target=self._start, args=(_Spawn(),), daemon=True).start()

    def reap_idle(self) -> int:
        """Stop workers idle for longer than ``idle_s`` beyond the ``warm`` ones; how many."""
        cutoff = time.monotonic() - self.idle_s
        with self._cond:
            spare = len(self._idle) - self.warm
            retired = [w for w in self._idle[: max(spare, 0)] if w.idle_since <= cutoff]
            self._idle = [w for w in self._idle if w not in retired]
        for worker in retired:
            worker.close()
        return len(retired)

    def counts(self) -> tuple[int, int]:
        """``(idle, busy)`` worker counts."""
        with self._cond:
            return len(self._idle), len(self._busy)

    def close(self) -> None:
        """Kill every worker, busy ones included; their ``run`` returns a failed outcome."""
        with self._cond:
            self._closed = True
            idle, busy = self._idle, list(self._busy)
            self._idle = []
            self._cond.notify_all()
        for worker in busy + idle:
            worker.terminate()  # all at once, so the grace periods overlap
        for worker in busy:
            worker.kill()  # its runner closes it on release
        for worker in idle:
            worker.close()

    def _start(self, spawn: _Spawn) -> None:
        try:
            worker = Worker(kill_grace_s=self.kill_grace_s, env=self._env)
        except Exception as exc:
            log.error("could not start a worker process: %s", exc)
            with self._cond:
                spawn.done, spawn.error = True, exc
                self._spawning -= 1
                self._cond.notify_all()
            return
        with self._cond:
            spawn.done = True
            self._spawning -= 1
            self._cond.notify_all()
            if not self._closed:
                self._idle.append(worker)
                return
        worker.close()

    def _pick(self, prefer_function: str | None, environment: str | None) -> Worker | None:
        while True:
            fitting = [i for i, w in enumerate(self._idle) if w.fits(environment)]
            if not fitting:
                return None
            index = fitting[-1]
            if prefer_function is not None:
                for i in reversed(fitting):
                    if self._idle[i].has_function(prefer_function):
                        index = i
                        break
            worker = self._idle.pop(index)
            if worker.alive:
                return worker
            worker.close()


@dataclass
class _Spawn:
    """A worker being started for one waiting caller of :meth:`WorkerPool.acquire`."""

    done: bool = False
    error: Exception | None = None


def worker_env() -> dict[str, str]:
    """This process's environment without the agent's own settings (the bootstrap token)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MN_AGENT_")}


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 4096):
            pass
