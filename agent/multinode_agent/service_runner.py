"""Keeps one replica of a service running on this VM, as a supervisor would.

The service function runs in a worker process of its own, with ``PORT`` in its
environment. While it runs, the port is probed; the first answer makes the replica
``ready`` at ``http://<this VM's address>:<port>``. When the process ends, for whatever
reason, the replica is ``crashed``: the process is restarted here after a back-off that
doubles with each quick exit (so a crash loop costs no new instance), and a process that
keeps exiting soon after it starts is flagged ``crash_looping``. Only a cancel (the
replica was replaced or undeployed) or the agent stopping ends the loop.

Where the port is: a VM with its own network (a real EC2 instance, or a local-cloud VM
in its own network namespace, ``MN_VM_ISOLATED=1``) binds the port the service declared;
a local-cloud VM that is a plain process (``MN_VM_ISOLATED=0``) shares the host's ports,
so it gets a free one instead, and the service must listen on ``PORT``.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from multinode.wire import Assignment, ServiceEvent
from multinode_agent.worker import Job, LogLine, Outcome, WorkerPool

log = logging.getLogger(__name__)

PROBE_INTERVAL_S = 0.1
# An exit within this long after the start counts as a quick one (towards a crash loop).
QUICK_EXIT_S = 30.0
CRASH_LOOP_AFTER = 3  # quick exits in a row that make a crash loop
_IMDS = "http://169.254.169.254/latest"


@dataclass(frozen=True)
class Backoff:
    """Delay before restart number ``n`` (1-based) of a run of quick exits."""

    first_s: float = 1.0
    max_s: float = 30.0

    def delay(self, quick_exits: int) -> float:
        return min(self.max_s, self.first_s * 2 ** max(0, quick_exits - 1))


@dataclass(frozen=True)
class Placement:
    """Where a service listens on this VM and where others reach it."""

    address: str  # the VM's address as the host and other VMs see it
    isolated: bool  # the VM has its own ports (bind the declared one)

    def port_for(self, declared: int) -> int:
        return declared if self.isolated else free_port()

    def url(self, port: int) -> str:
        return f"http://{self.address}:{port}"


def placement(vm_address: str | None, vm_isolated: bool | None) -> Placement:
    """The placement from the VM's settings: the local cloud's VM runner sets both; on EC2
    neither is set, and the address is the instance's private IP from the metadata service."""
    isolated = True if vm_isolated is None else vm_isolated
    return Placement(vm_address or _ec2_private_ip() or _own_ip(), isolated)


class ServiceRunner:
    """Runs one service replica until :meth:`cancel` or ``stopping`` is set.

    Args:
        assignment: the replica's attempt (``kind`` service, with its ``port``).
        job: builds the worker job for one process start, given the port to listen on.
        pool: where worker processes come from; each start takes its own.
        on_event: receives each state change (sent to the control plane).
        on_logs: receives the process's output lines and the runner's own notes.
        stopping: set when the agent stops; the process is then left to the teardown.
    """

    def __init__(
        self,
        assignment: Assignment,
        *,
        job: Callable[[int], Job],
        pool: WorkerPool,
        place: Placement,
        on_event: Callable[[ServiceEvent], None],
        on_logs: Callable[[list[LogLine]], None],
        stopping: threading.Event,
        backoff: Backoff = Backoff(),
    ) -> None:
        self.assignment = assignment
        self._job = job
        self._pool = pool
        self._place = place
        self._on_event = on_event
        self._on_logs = on_logs
        self._stopping = stopping
        self._backoff = backoff
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._worker = None
        self.restarts = 0

    def cancel(self) -> None:
        """Stop the process (from any thread); :meth:`run` then returns ``cancelled``."""
        self._cancelled.set()
        with self._lock:
            if self._worker is not None:
                self._worker.cancel(self.assignment.attempt_id)

    def run(self) -> Outcome | None:
        """Keep the service running; returns ``cancelled``, or None if the agent stops."""
        a = self.assignment
        declared = a.port or 80
        quick_exits = 0
        while not self._done():
            port = self._place.port_for(declared)
            self._event("starting")
            started = time.monotonic()
            outcome = self._run_once(port)
            if self._stopping.is_set():
                return None
            if self._cancelled.is_set():
                return Outcome("cancelled", reason="service stopped on request")
            ran_s = time.monotonic() - started
            quick_exits = quick_exits + 1 if ran_s < QUICK_EXIT_S else 1
            self.restarts += 1
            delay = self._backoff.delay(quick_exits)
            detail = describe_exit(outcome)
            looping = quick_exits >= CRASH_LOOP_AFTER
            if outcome.error is not None and outcome.error.traceback:
                # What the process raised (an import error of the app's module among them)
                # reaches the logs, and so a failed deploy's message, with its traceback.
                now = time.time()
                self._on_logs(
                    [
                        (a.attempt_id, "stderr", line, now)
                        for line in outcome.error.traceback.rstrip("\n").split("\n")
                    ]
                )
            self._note(
                f"service process {detail} after {ran_s:.1f}s; restarting in {delay:g}s"
                + (" (crash loop: it keeps exiting soon after it starts)" if looping else "")
            )
            self._event("crashed", detail=detail, crash_looping=looping)
            if self._wait(delay):
                break
        return None if self._stopping.is_set() else Outcome("cancelled", reason="stopped")

    # -- helpers -----------------------------------------------------------------------

    def _run_once(self, port: int) -> Outcome:
        job = self._job(port)
        worker = self._pool.acquire(environment=job.environment)
        try:
            with self._lock:
                self._worker = worker
                if self._cancelled.is_set():
                    return Outcome("cancelled")
            finished = threading.Event()
            threading.Thread(
                target=self._probe, args=(port, finished), name="mn-service-probe", daemon=True
            ).start()
            try:
                return worker.run(job, on_logs=self._on_logs)
            finally:
                finished.set()
        finally:
            with self._lock:
                self._worker = None
            # A service leaves threads and sockets behind: never reuse its process.
            worker.kill()
            self._pool.release(worker)

    def _probe(self, port: int, finished: threading.Event) -> None:
        """Report ``ready`` once the port accepts a connection (while the process runs)."""
        while not finished.wait(PROBE_INTERVAL_S):
            try:
                with socket.create_connection((self._place.address, port), timeout=1.0):
                    pass
            except OSError:
                continue
            if not finished.is_set():
                self._event("ready", url=self._place.url(port))
            return

    def _event(self, state: str, **fields) -> None:  # type: ignore[no-untyped-def]
        a = self.assignment
        self._on_event(
            ServiceEvent(
                attempt_id=a.attempt_id,
                fence=a.fence,
                state=state,  # type: ignore[arg-type]
                restarts=self.restarts,
                ts=time.time(),
                **fields,
            )
        )

    def _note(self, text: str) -> None:
        self._on_logs([(self.assignment.attempt_id, "system", text, time.time())])

    def _done(self) -> bool:
        return self._cancelled.is_set() or self._stopping.is_set()

    def _wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless cancelled or stopping first; True if so."""
        deadline = time.monotonic() + seconds
        while not self._done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._cancelled.wait(min(remaining, 0.2))
        return True


def describe_exit(outcome: Outcome) -> str:
    """How a service process ended, in a few words for listings."""
    if outcome.status == "succeeded":
        return "returned"
    if outcome.error is not None:
        return f"raised {outcome.error.type.rsplit('.', 1)[-1]}: {outcome.error.message}"[:300]
    return (outcome.reason or outcome.status)[:300]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ec2_private_ip() -> str | None:
    """This instance's private IPv4 from the metadata service (IMDSv2), if there is one."""
    try:
        token_request = urllib.request.Request(
            f"{_IMDS}/api/token",
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"},
        )
        with urllib.request.urlopen(token_request, timeout=0.5) as answer:
            token = answer.read().decode()
        ip_request = urllib.request.Request(
            f"{_IMDS}/meta-data/local-ipv4", headers={"X-aws-ec2-metadata-token": token}
        )
        with urllib.request.urlopen(ip_request, timeout=0.5) as answer:
            return answer.read().decode().strip() or None
    except OSError:
        return None


def _own_ip() -> str:
    with contextlib.suppress(OSError):
        return socket.gethostbyname(socket.gethostname())
    return "127.0.0.1"
