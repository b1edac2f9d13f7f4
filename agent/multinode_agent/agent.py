"""The agent: register, long-poll for assignments, run each in a worker, report.

Threads of one agent, each with its own HTTP client:

* the control thread registers, then long-polls ``/v1/agent/poll`` (the poll is also the
  heartbeat) and queues each assignment at once;
* lane threads (:mod:`multinode_agent.dispatch`) each take the oldest queued call that
  fits the free CPU, with, while calls are short, more calls of the same function, fetch
  the function blob if the worker lacks it, run the batch in one worker process and queue
  the results; a service replica gets a runner thread of its own;
* the reporter thread posts results and log lines in batches.

:meth:`Agent.run` blocks until the agent stops: on :meth:`Agent.stop`, when the server
says ``shutdown``, when it answers 401, or when the control plane stays unreachable longer
than ``unreachable_limit_s``. In all but the first case the machine is shut down with
``shutdown_command`` when one is set, so a VM nobody can reach stops billing.
"""

from __future__ import annotations

import logging
import math
import platform
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum

import cloudpickle

from multinode.wire import (
    MAX_PREFETCH,
    AgentLog,
    Assignment,
    AttemptProgress,
    AttemptResult,
    FunctionEnv,
    FunctionEnvRequest,
    PollRequest,
    PollResponse,
    RegisterRequest,
    RegisterResponse,
    ServiceEvent,
)
from multinode_agent import __version__
from multinode_agent.blobs import BlobCache
from multinode_agent.client import (
    ControlPlaneClient,
    Reachability,
    Refused,
    Unauthorized,
    Unreachable,
    backoff,
)
from multinode_agent.dispatch import Dispatcher, Pace
from multinode_agent.environments import EnvironmentCache, EnvironmentUnavailable
from multinode_agent.reporter import Reporter
from multinode_agent.service_runner import ServiceRunner, placement
from multinode_agent.settings import AgentSettings
from multinode_agent.sources import SourceError, SourceTrees, is_import_reference
from multinode_agent.worker import Job, LogLine, Outcome, Worker, WorkerPool

log = logging.getLogger(__name__)

_MAX_RUNNERS = 4096  # far above any instance's service replicas; threads are reused
_FLUSH_S = 5.0
# While calls are short, a lane batches about this much work into one worker round trip,
# and the agent asks for enough prefetched calls to keep its slots busy this long.
_BATCH_S = 0.01
_PREFETCH_COVER_S = 0.05
_MAX_BATCH = 64
# Secret values shorter than this are not masked in logs: they would hide ordinary text.
_MIN_MASKED = 4
_ENVIRONMENT_TRIES = 5  # downloads of a function's environment before its calls fail


class StopReason(str, Enum):
    """Why :meth:`Agent.run` returned."""

    stopped = "stopped"  # Agent.stop() (or SIGTERM to the agent process)
    shutdown = "shutdown"  # the control plane said so
    unauthorized = "unauthorized"  # token revoked or instance terminated
    unreachable = "unreachable"  # nobody answered for longer than unreachable_limit_s
    refused = "refused"  # registration refused (bootstrap token invalid or used)

    @property
    def powers_off(self) -> bool:
        """Whether this end should also shut the machine down."""
        return self is not StopReason.stopped


def _batch_key(a: Assignment) -> str | None:
    """Calls of one function may share a worker round trip; jobs and services never do."""
    return a.blob_hash if a.kind == "function" else None


@dataclass(frozen=True)
class _Setup:
    """What a function's workers run with: its variables (secrets included) and the
    folder of its environment (None: the agent's own packages only)."""

    env: dict[str, str]
    environment: str | None


@dataclass(eq=False)
class _Attempt:
    assignment: Assignment
    lock: threading.Lock = field(default_factory=threading.Lock)
    cancelled: bool = False
    finished: bool = False  # its worker may already run another attempt
    worker: Worker | None = None
    service: ServiceRunner | None = None  # set while a service replica runs

    @property
    def attempt_id(self) -> str:
        return self.assignment.attempt_id


class Agent:
    """One agent, runnable in-process (tests) or as ``python -m multinode_agent``.

    Args:
        settings: the agent's configuration.
        pool: worker processes to use (default: a pool built from ``settings``).
    """

    def __init__(self, settings: AgentSettings, *, pool: WorkerPool | None = None) -> None:
        self.settings = settings
        self.registered = threading.Event()
        self.registration: RegisterResponse | None = None
        self._reach = Reachability(settings.unreachable_limit_s)
        self._pool = pool or WorkerPool(
            idle_s=settings.worker_idle_s,
            warm=settings.warm_workers,
            kill_grace_s=settings.kill_grace_s,
        )
        self._stop = threading.Event()
        self._reason: StopReason | None = None
        self._reason_lock = threading.Lock()
        self._token: str | None = None
        self._attempts: dict[str, _Attempt] = {}
        self._attempts_lock = threading.Lock()
        self._unfinished = 0  # attempts here not yet finished (read without the lock)
        self._runners = ThreadPoolExecutor(_MAX_RUNNERS, thread_name_prefix="mn-runner")
        self._local = threading.local()
        self._clients: list[ControlPlaneClient] = []
        self._clients_lock = threading.Lock()
        self._reporter: Reporter | None = None
        self._blobs = BlobCache(cache_dir=settings.cache_dir, fetch=self._fetch_blob)
        self._sources = SourceTrees(cache_dir=settings.cache_dir / "source", blobs=self._blobs)
        self._environments = EnvironmentCache(cache_dir=settings.cache_dir / "environments")
        # (function, version) -> its variables and environment, read once per agent
        self._setups: dict[tuple[str, int], _Setup] = {}
        self._setups_lock = threading.Lock()
        # Values of the secrets given to this agent's functions, masked in every log line
        # (longest first, so a value containing another is masked whole).
        self._masks: tuple[str, ...] = ()
        self._dispatcher: Dispatcher[_Attempt] | None = None  # sized at registration
        self._pace = Pace(settings.prefetch_below_s)

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> StopReason:
        """Run until the agent stops; stop the workers; power off if the reason calls for it.

        Call it once per :class:`Agent`. The unreachable limit counts from this call.

        Returns:
            Why the agent stopped.
        """
        self._reach.reset()
        control = threading.Thread(target=self._control, name="mn-control", daemon=True)
        control.start()
        self._stop.wait()
        reason = self._reason or StopReason.stopped
        self._teardown(reason)
        # The control thread may sit in a long poll; it is a daemon and drops what it gets.
        control.join(1.0)
        if reason.powers_off:
            self._power_off(reason)
        return reason

    def stop(self, reason: StopReason = StopReason.stopped) -> None:
        """Ask :meth:`run` to return; the first reason given wins. Safe from any thread."""
        with self._reason_lock:
            if self._reason is None:
                self._reason = reason
        self._stop.set()

    @property
    def running_attempts(self) -> list[str]:
        """Attempts assigned here that have not finished (sent as ``running`` in each poll)."""
        with self._attempts_lock:
            return [k for k, v in self._attempts.items() if not v.finished]

    @property
    def unreported_attempts(self) -> list[str]:
        """Attempts assigned here whose result the server has not yet taken."""
        with self._attempts_lock:
            return list(self._attempts)

    # ------------------------------------------------------------------ control thread

    def _control(self) -> None:
        client = self._client()
        try:
            if not self._register(client):
                return
            self._pool.prestart()
            self._poll_loop(client)
        except Exception:
            if self._stop.is_set():
                return  # teardown closed the client under a pending request
            log.exception("agent control loop crashed; stopping")
            self.stop(StopReason.unreachable)

    def _register(self, client: ControlPlaneClient) -> bool:
        request = RegisterRequest(
            bootstrap_token=self.settings.bootstrap_token,
            python_version=platform.python_version(),
            cloudpickle_version=cloudpickle.__version__,
            hostname=socket.gethostname(),
            agent_version=__version__,
        )
        client.token = self.settings.bootstrap_token
        failures = 0
        while not self._stop.is_set():
            try:
                answer = client.post("/agent/register", request, RegisterResponse, timeout=15.0)
            except (Unauthorized, Refused) as exc:
                log.error("registration refused by %s: %s; shutting down", self.settings.url, exc)
                self.stop(StopReason.refused)
                return False
            except Unreachable as exc:
                if self._give_up_if_unreachable(exc):
                    return False
                self._stop.wait(min(backoff(failures), self._reach.remaining() + 0.05))
                failures += 1
                continue
            self.registration = answer
            self._dispatcher = Dispatcher(
                vcpus=answer.vcpus,
                run=self._run_batch,
                batch_limit=self._batch_limit,
                max_wait_s=self.settings.prefetch_max_wait_s,
                on_expired=self._give_back,
            )
            self._token = answer.agent_token
            client.token = answer.agent_token
            log.info("registered as instance %s of app %s", answer.instance_id, answer.app)
            self._reporter = Reporter(
                self._client(),
                interval_s=self.settings.report_interval_s,
                busy=lambda: self._unfinished > 0,
                deep=self._has_backlog,
                deep_interval_s=self.settings.report_interval_busy_s,
                on_sent=self._forget,
                on_unauthorized=lambda: self.stop(StopReason.unauthorized),
                on_assignments=self._handle_refill,
                prefetch=self._want_prefetch,
            )
            self._reporter.start()
            self.registered.set()
            return True
        return False

    def _poll_loop(self, client: ControlPlaneClient) -> None:
        assert self.registration is not None
        wait = min(max(self.registration.poll_timeout_s, 0.0), 60.0)
        failures = 0
        while not self._stop.is_set():
            self._pool.reap_idle()
            request = PollRequest(
                running=self.running_attempts, wait=wait, prefetch=self._want_prefetch()
            )
            try:
                answer = client.post("/agent/poll", request, PollResponse, timeout=wait + 15.0)
            except Unauthorized as exc:
                log.error("the control plane refused the agent token (%s); shutting down", exc)
                self.stop(StopReason.unauthorized)
                return
            except (Unreachable, Refused) as exc:
                if isinstance(exc, Unreachable) and self._give_up_if_unreachable(exc):
                    return
                if isinstance(exc, Refused):
                    log.error("poll refused: %s", exc)
                self._stop.wait(min(backoff(failures), self._reach.remaining() + 0.05))
                failures += 1
                continue
            failures = 0
            if self._stop.is_set():
                return  # stopping: the server re-dispatches what it just sent
            self._handle(answer)

    def _handle(self, answer: PollResponse) -> None:
        for attempt_id in answer.cancel:
            self._cancel(attempt_id)
        for assignment in answer.assignments:
            with self._attempts_lock:
                if assignment.attempt_id in self._attempts:
                    continue  # a repeat of an assignment already running here
                attempt = self._attempts[assignment.attempt_id] = _Attempt(assignment)
                self._unfinished += 1
            if assignment.kind == "service" or self._dispatcher is None:
                self._runners.submit(self._run_attempt, attempt)
            else:
                self._dispatcher.submit(attempt, cpu=assignment.cpu, key=_batch_key(assignment))
        if answer.shutdown:
            log.info("the control plane asked this agent to shut down")
            self.stop(StopReason.shutdown)

    def _handle_refill(self, work: list[Assignment]) -> None:
        """Run work a report's answer carried (the server refilled freed capacity)."""
        if not self._stop.is_set():  # stopping: the server re-dispatches it
            self._handle(PollResponse.model_construct(assignments=work, cancel=[], shutdown=False))

    def _cancel(self, attempt_id: str) -> None:
        with self._attempts_lock:
            attempt = self._attempts.get(attempt_id)
        if attempt is None:
            return
        with attempt.lock:
            if attempt.finished:
                return  # the server has not seen our result yet; nothing runs to stop
            attempt.cancelled = True
            if attempt.service is not None:
                attempt.service.cancel()
            elif attempt.worker is not None:
                attempt.worker.cancel(attempt_id)
                return
            queued = self._dispatcher is not None and self._dispatcher.remove(attempt)
        if queued:  # never started: no lane will see it
            self._finish(attempt, Outcome("cancelled", reason="cancelled on request"))

    def _give_up_if_unreachable(self, exc: Exception) -> bool:
        if not self._reach.exceeded():
            return False
        log.error(
            "control plane at %s unreachable for %.1fs (limit %gs, last error: %s); "
            "stopping workers and shutting down",
            self.settings.url,
            self._reach.silent_for(),
            self.settings.unreachable_limit_s,
            exc,
        )
        self.stop(StopReason.unreachable)
        return True

    # ------------------------------------------------------------------ lanes and runners

    def _run_batch(self, batch: list[_Attempt]) -> None:
        """Run calls of one function (usually one call) in one worker; called by a lane."""
        if self._stop.is_set():
            return  # stopping: the server re-dispatches what never ran
        first = batch[0].assignment
        started = time.monotonic()
        finished = 0
        setup = self._setup(first)
        if setup is None:
            return  # the agent is stopping
        if isinstance(setup, Outcome):
            self._finish_all(batch, setup)
            return
        try:
            worker = self._pool.acquire(
                prefer_function=first.blob_hash, environment=setup.environment
            )
        except Exception as exc:
            self._fail_all(batch, exc)
            return
        try:
            blob = None
            if not worker.has_function(first.blob_hash):
                blob = self._blob(first.blob_hash)
                if blob is None:
                    return  # the agent is stopping
                if isinstance(blob, Outcome):
                    self._finish_all(batch, blob)
                    return
            live: dict[str, _Attempt] = {}
            for attempt in batch:
                with attempt.lock:
                    if not attempt.cancelled:
                        attempt.worker = worker
                        live[attempt.attempt_id] = attempt
                        continue
                self._finish(attempt, Outcome("cancelled", reason="cancelled on request"))
            if not live:
                return

            def done(job: Job, outcome: Outcome) -> None:
                nonlocal finished
                finished += 1
                self._finish(live[job.attempt_id], outcome)

            left = worker.run_batch(
                [self._job(a.assignment, blob, setup) for a in live.values()],
                on_logs=self._add_logs,
                on_done=done,
                on_progress=lambda job, seq, value: self._add_progress(
                    live[job.attempt_id].assignment, seq, value
                ),
            )
        except Unauthorized:
            self.stop(StopReason.unauthorized)
            return
        except Exception as exc:
            if not self._stop.is_set():
                log.exception("attempts %s could not be run", [a.attempt_id for a in batch])
            self._fail_all([a for a in batch if not a.finished], exc)
            return
        finally:
            self._pool.release(worker)
            if finished:
                self._pace.record(first.blob_hash, (time.monotonic() - started) / finished)
        if left and self._dispatcher is not None:
            # An earlier call of the batch was killed (timeout, cancel) or its worker died:
            # the calls after it never started, so they run in another worker.
            again = []
            for job in left:
                attempt = live[job.attempt_id]
                with attempt.lock:
                    attempt.worker = None
                    cancelled = attempt.cancelled
                if cancelled:
                    self._finish(attempt, Outcome("cancelled", reason="cancelled on request"))
                else:
                    again.append(attempt)
            if again:
                self._dispatcher.requeue(again, cpu=first.cpu, key=_batch_key(first))

    def _fail_all(self, batch: list[_Attempt], exc: Exception) -> None:
        self._finish_all(
            batch, Outcome("failed", reason=f"the agent could not run the attempt: {exc}")
        )

    def _finish_all(self, batch: list[_Attempt], outcome: Outcome) -> None:
        for attempt in batch:
            self._finish(attempt, outcome)

    def _run_attempt(self, attempt: _Attempt) -> None:
        """Keep a service replica running (a runner thread of its own)."""
        a = attempt.assignment
        try:
            outcome = self._serve(attempt)
        except Unauthorized:
            self._mark_finished(attempt)
            self.stop(StopReason.unauthorized)
            return
        except Exception as exc:
            if self._stop.is_set():
                return
            log.exception("attempt %s could not be run", a.attempt_id)
            outcome = Outcome("failed", reason=f"the agent could not run the attempt: {exc}")
        self._finish(attempt, outcome)

    def _finish(self, attempt: _Attempt, outcome: Outcome | None) -> None:
        """Record how an attempt ended and queue its result for the reporter."""
        a = attempt.assignment
        self._mark_finished(attempt)
        if outcome is None or (self._stop.is_set() and outcome.status != "succeeded"):
            # Killed by our own teardown: no result; the server treats the VM as lost.
            return
        if outcome.reason and outcome.status != "cancelled":
            self._add_logs([(a.attempt_id, "system", outcome.reason, time.time())])
        # model_construct: output is raw bytes (validation would expect base64 text).
        result = AttemptResult.model_construct(
            attempt_id=a.attempt_id,
            fence=a.fence,
            status=outcome.status,
            output=outcome.output,
            error=outcome.error,
            reason=outcome.reason,
            final=outcome.final,
        )
        if self._reporter is not None:
            self._reporter.add_result(result)

    def _mark_finished(self, attempt: _Attempt) -> None:
        """From now on its worker may run another attempt, and polls no longer list it."""
        with attempt.lock:
            if attempt.finished:
                return
            attempt.finished = True
        with self._attempts_lock:
            self._unfinished -= 1

    def _give_back(self, attempt: _Attempt) -> None:
        """A prefetched call waited too long for the CPU: return it unstarted."""
        self._mark_finished(attempt)
        if self._stop.is_set() or self._reporter is None:
            return
        log.info(
            "giving back %s: no slot for it within %gs",
            attempt.attempt_id,
            self.settings.prefetch_max_wait_s,
        )
        self._pace.reset()  # calls are not short here after all: stop prefetching
        self._reporter.add_released(attempt.attempt_id)

    def _want_prefetch(self) -> int:
        """How many instance-sizes of calls to hold beyond the free slots: none unless
        recent calls were short, and the shorter they were, the more (up to
        ``MAX_PREFETCH``), so the queue covers about ``_PREFETCH_COVER_S`` of work. Judged
        by the slowest function run here lately."""
        mean = self._pace.mean()
        if self.settings.prefetch_below_s <= 0 or not self._pace.short() or mean is None:
            return 0
        return max(1, min(MAX_PREFETCH, math.ceil(_PREFETCH_COVER_S / max(mean, 1e-6))))

    def _batch_limit(self, blob_hash: str) -> int:
        """How many calls of one function a lane may run in one worker round trip."""
        mean = self._pace.mean(blob_hash)
        if not self._pace.short(blob_hash) or mean is None:
            return 1
        return max(1, min(_MAX_BATCH, int(_BATCH_S / max(mean, 1e-6))))

    def _has_backlog(self) -> bool:
        """Whether calls wait here for CPU (then refilling them is not urgent)."""
        return self._dispatcher is not None and self._dispatcher.backlog() > 0

    def _serve(self, attempt: _Attempt) -> Outcome | None:
        """Keep a service replica running until it is cancelled (see service_runner)."""
        a = attempt.assignment
        blob = self._blob(a.blob_hash)
        if blob is None or isinstance(blob, Outcome):
            return blob
        setup = self._setup(a)
        if setup is None or isinstance(setup, Outcome):
            return setup
        # A service takes no arguments; the control plane never pickles, so the agent does.
        no_args = cloudpickle.dumps(((), {}))
        runner = ServiceRunner(
            a,
            job=lambda port: self._job(a, blob, setup, input=no_args, env={"PORT": str(port)}),
            pool=self._pool,
            place=placement(self.settings.vm_address, self.settings.vm_isolated),
            on_event=self._add_service_event,
            on_logs=self._add_logs,
            stopping=self._stop,
        )
        with attempt.lock:
            if attempt.cancelled:
                return Outcome("cancelled", reason="cancelled on request")
            attempt.service = runner
        return runner.run()

    def _add_service_event(self, event: ServiceEvent) -> None:
        if self._reporter is not None:
            self._reporter.add_service_event(event)

    def _blob(self, blob_hash: str) -> bytes | Outcome | None:
        """The function blob for a worker: a pickle as stored, or an import reference
        whose source is now on disk (the reference then names the folder)."""
        failures = 0
        while not self._stop.is_set():
            try:
                blob = self._blobs.get(blob_hash)
                return self._sources.prepare(blob) if is_import_reference(blob) else blob
            except Refused as exc:
                return Outcome("failed", reason=f"function blob {blob_hash} unavailable: {exc}")
            except SourceError as exc:
                return Outcome("failed", reason=f"the function's source is unusable: {exc}")
            except Unreachable as exc:
                log.warning("fetching blob %s failed: %s", blob_hash, exc)
                self._stop.wait(backoff(failures))
                failures += 1
        return None

    def _setup(self, a: Assignment) -> _Setup | Outcome | None:
        """What ``a``'s function runs with (its variables and secrets, its environment on
        disk), read once per function version; None when the agent stops first."""
        key = (a.function, a.version)
        with self._setups_lock:
            known = self._setups.get(key)
        if known is not None:
            return known
        request = FunctionEnvRequest(function=a.function, version=a.version)
        failures = 0
        while not self._stop.is_set():
            try:
                answer = self._client().post("/agent/function-env", request, FunctionEnv)
                path = (
                    str(self._environments.path(answer.environment))
                    if answer.environment is not None
                    else None
                )
            except Refused as exc:
                return Outcome("failed", reason=f"the function's setup is unavailable: {exc}")
            except EnvironmentUnavailable as exc:
                # A download that keeps failing (or keeps arriving corrupt) ends the calls
                # rather than holding them running until their timeout.
                if failures >= _ENVIRONMENT_TRIES - 1:
                    return Outcome("failed", reason=f"the function's packages: {exc}")
                log.warning("preparing %s failed: %s", a.function, exc)
                self._stop.wait(backoff(failures))
                failures += 1
                continue
            except Unreachable as exc:
                log.warning("preparing %s failed: %s", a.function, exc)
                self._stop.wait(backoff(failures))
                failures += 1
                continue
            env = answer.env
            setup = _Setup(env=env, environment=path)
            with self._setups_lock:
                self._setups[key] = setup
                values = {env[k] for k in answer.secret_keys if len(env.get(k, "")) >= _MIN_MASKED}
                if values - set(self._masks):
                    self._masks = tuple(sorted({*self._masks, *values}, key=len, reverse=True))
            return setup
        return None

    def _mask(self, text: str) -> str:
        for value in self._masks:
            if value in text:
                text = text.replace(value, "***")
        return text

    def _job(
        self,
        a: Assignment,
        blob: bytes | None,
        setup: _Setup,
        *,
        input: bytes | None = None,
        env: dict[str, str] | None = None,
    ) -> Job:
        # The function's own variables first: the platform's MN_* ones always win.
        env = {
            **setup.env,
            **(env or {}),
            "MN_URL": self.settings.url,
            "MN_API_KEY": self._token,
            "MN_APP": a.app,
            "MN_VERSION": str(a.version),
            "MN_CALL_ID": a.call_id,
            "MN_INSTANCE_ID": self.registration.instance_id if self.registration else "",
        }
        return Job(
            attempt_id=a.attempt_id,
            function=a.function,
            blob_hash=a.blob_hash,
            blob=blob,
            input=a.input if input is None else input,
            timeout_s=a.timeout_s,
            python_version=a.python_version,
            cloudpickle_version=a.cloudpickle_version,
            env=env,
            kind=a.kind,
            progress_interval_s=self.settings.progress_interval_s,
            environment=setup.environment,
        )

    def _add_logs(self, lines: list[LogLine]) -> None:
        if self._masks:
            lines = [(a, stream, self._mask(text), ts) for a, stream, text, ts in lines]
        ours = [
            AgentLog(attempt_id=attempt_id, stream=stream, text=text, ts=ts)
            for attempt_id, stream, text, ts in lines
            if attempt_id is not None
        ]
        for attempt_id, stream, text, _ in lines:
            if attempt_id is None:  # written by a worker between attempts
                log.info("worker %s: %s", stream, text)
        if ours and self._reporter is not None:
            self._reporter.add_logs(ours)

    def _add_progress(self, a: Assignment, seq: int, value: bytes) -> None:
        if self._reporter is not None:
            # model_construct: value is raw bytes (validation would expect base64 text).
            self._reporter.set_progress(
                AttemptProgress.model_construct(
                    attempt_id=a.attempt_id, fence=a.fence, seq=seq, value=value
                )
            )

    def _forget(self, attempt_ids: list[str]) -> None:
        with self._attempts_lock:
            for attempt_id in attempt_ids:
                self._attempts.pop(attempt_id, None)

    # ------------------------------------------------------------------ plumbing

    def _client(self) -> ControlPlaneClient:
        client = getattr(self._local, "client", None)
        if client is None:
            client = ControlPlaneClient(self.settings.url, token=self._token, reach=self._reach)
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    def _fetch_blob(self, blob_hash: str) -> bytes:
        return self._client().get_bytes(f"/blobs/{blob_hash}")

    def _teardown(self, reason: StopReason) -> None:
        log.info("stopping (%s): stopping worker processes", reason.value)
        if self._dispatcher is not None:
            self._dispatcher.close()
        self._pool.close()
        self._runners.shutdown(wait=True, cancel_futures=True)
        if self._reporter is not None:
            reachable = reason in (StopReason.stopped, StopReason.shutdown)
            self._reporter.stop(flush_s=_FLUSH_S if reachable else 0.0)
        with self._clients_lock:
            for client in self._clients:
                client.close()

    def _power_off(self, reason: StopReason) -> None:
        command = self.settings.shutdown_command
        if not command:
            log.info("no shutdown command set; exiting the agent (%s)", reason.value)
            return
        log.info("running shutdown command: %s", command)
        try:
            subprocess.run(command, shell=True, check=False, timeout=120)
        except (OSError, subprocess.SubprocessError) as exc:
            log.error("shutdown command failed: %s", exc)
