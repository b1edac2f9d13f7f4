"""Sends results, log lines and jobs' progress to the control plane from a thread of its own.

Producers (the threads running attempts) only append to a queue, so neither they nor the
poll loop ever wait for the network. The reporter thread takes whatever is ready. A result is
sent at once when nothing else runs here (a caller is waiting on it); while other attempts
still run, and for log lines alone, it waits at most ``interval_s`` so that a burst of
results, and chatty output, travel in few requests. Of a job's progress only the latest
value per attempt is kept; it travels like a log line.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from multinode.wire import (
    AgentLog,
    Assignment,
    AttemptProgress,
    AttemptResult,
    ReportRequest,
    ReportResponse,
    ServiceEvent,
)
from multinode_agent.client import ControlPlaneClient, Refused, Unauthorized, Unreachable, backoff

log = logging.getLogger(__name__)

_MAX_RESULTS = 1000
_MAX_LOGS = 5000


class Reporter:
    """A background thread posting ``/v1/agent/report`` batches.

    Args:
        client: used only by the reporter thread.
        interval_s: the longest an item waits to be batched with later ones.
        busy: whether other attempts still run here (then results are worth batching).
        deep: whether calls wait here for CPU; then the refill a report brings is not
            urgent, and results wait up to ``deep_interval_s`` to travel in larger batches.
        on_sent: called with the attempt ids whose results the server has taken or
            rejected (either way they are no longer this agent's concern).
        on_unauthorized: called once if the server answers 401; the thread then stops.
        on_assignments: called with work the server claimed for the capacity a report
            freed, to be run as if a poll had returned it.
    """

    def __init__(
        self,
        client: ControlPlaneClient,
        *,
        interval_s: float,
        busy: Callable[[], bool] = lambda: False,
        deep: Callable[[], bool] = lambda: False,
        deep_interval_s: float = 0.0,
        on_sent: Callable[[list[str]], None],
        on_unauthorized: Callable[[], None],
        on_assignments: Callable[[list[Assignment]], None] = lambda _work: None,
        prefetch: Callable[[], int] = lambda: 0,
    ) -> None:
        self._client = client
        self._interval_s = interval_s
        self._busy = busy
        self._deep = deep
        self._deep_interval_s = max(deep_interval_s, interval_s)
        self._on_sent = on_sent
        self._on_unauthorized = on_unauthorized
        self._on_assignments = on_assignments
        self._prefetch = prefetch
        self._released: deque[str] = deque()
        self._cond = threading.Condition()
        self._results: deque[AttemptResult] = deque()
        self._logs: deque[AgentLog] = deque()
        self._services: deque[ServiceEvent] = deque()
        self._progress: dict[str, AttemptProgress] = {}  # the latest per attempt
        self._stopping = False
        self._flush_deadline = 0.0
        self._thread = threading.Thread(target=self._loop, name="mn-reporter", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def add_result(self, result: AttemptResult) -> None:
        """Queue a result; returns at once."""
        with self._cond:
            self._results.append(result)
            # Wake the thread only when this result changes what it does: the first one
            # starts a batch, a full batch or the last running attempt's result ends one.
            if len(self._results) in (1, _MAX_RESULTS) or not self._busy():
                self._cond.notify()

    def add_logs(self, lines: list[AgentLog]) -> None:
        """Queue log lines; returns at once."""
        with self._cond:
            self._logs.extend(lines)
            self._cond.notify()

    def add_service_event(self, event: ServiceEvent) -> None:
        """Queue news of a service replica; it is sent at once (a deploy may wait on it)."""
        with self._cond:
            self._services.append(event)
            self._cond.notify()

    def add_released(self, attempt_id: str) -> None:
        """Give back a prefetched attempt that never started; sent with the next report."""
        with self._cond:
            self._released.append(attempt_id)
            self._cond.notify()

    def set_progress(self, progress: AttemptProgress) -> None:
        """Queue a job's latest yielded value, replacing any not yet sent; returns at once."""
        with self._cond:
            self._progress[progress.attempt_id] = progress
            self._cond.notify()

    def pending(self) -> int:
        """Results, lines, service events, give-backs and progress values not yet sent."""
        with self._cond:
            return (
                len(self._results)
                + len(self._logs)
                + len(self._services)
                + len(self._released)
                + len(self._progress)
            )

    def stop(self, *, flush_s: float = 0.0) -> None:
        """Stop the thread, first trying for up to ``flush_s`` seconds to send what is queued."""
        with self._cond:
            self._stopping = True
            self._flush_deadline = time.monotonic() + flush_s
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(flush_s + 35.0)

    def _loop(self) -> None:
        failures = 0
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                answer = self._client.post("/agent/report", batch, ReportResponse)
            except Unauthorized:
                log.error("the control plane refused the agent token while reporting")
                self._on_unauthorized()
                return
            except Unreachable as exc:
                self._put_back(batch)
                if self._stop_due():
                    return
                delay = backoff(failures)
                failures += 1
                log.warning("report failed (%s); retrying in %.2fs", exc, delay)
                with self._cond:
                    self._cond.wait_for(self._stop_due, timeout=delay)
                continue
            except Refused as exc:
                # Retrying a request the server calls invalid cannot succeed; drop it.
                log.error("the control plane refused a report, dropping it: %s", exc)
                answer = ReportResponse(rejected=[r.attempt_id for r in batch.results])
            failures = 0
            for attempt_id in answer.rejected:
                log.warning(
                    "result of attempt %s was rejected (stale fence or unknown)", attempt_id
                )
            if batch.results or batch.released:
                self._on_sent([r.attempt_id for r in batch.results] + batch.released)
            if answer.assignments:
                self._on_assignments(answer.assignments)

    def _next_batch(self) -> ReportRequest | None:
        with self._cond:
            self._cond.wait_for(lambda: self._has_items() or self._stopping)
            if self._stopping and (self._stop_due() or not self._has_items()):
                return None
            if (
                not self._stopping
                and not self._services
                and not self._released
                and self._interval_s > 0
                and (not self._results or self._busy())
            ):
                # A lone result goes at once: a caller is waiting on it. With other attempts
                # still running (a map), results wait briefly to share one report, and so
                # does the poll that refills the freed capacity.
                # While calls queue here for CPU, the slots stay busy without a refill:
                # wait longer, so a report carries more results (and its refill more calls).
                # Looked at every interval_s, as whether calls queue here changes unannounced.
                start = time.monotonic()
                while not (
                    self._stopping
                    or len(self._results) >= _MAX_RESULTS
                    or (self._results and not self._busy())  # the last one is in
                ):
                    limit = self._deep_interval_s if self._deep() else self._interval_s
                    remaining = start + limit - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(min(remaining, self._interval_s))
            results = [
                self._results.popleft() for _ in range(min(len(self._results), _MAX_RESULTS))
            ]
            logs = [self._logs.popleft() for _ in range(min(len(self._logs), _MAX_LOGS))]
            services = list(self._services)
            self._services.clear()
            released = list(self._released)
            self._released.clear()
            progress, self._progress = list(self._progress.values()), {}
        return ReportRequest(
            results=results,
            logs=logs,
            services=services,
            released=released,
            progress=progress,
            prefetch=0 if released else self._prefetch(),
        )

    def _has_items(self) -> bool:
        return bool(
            self._results or self._logs or self._services or self._released or self._progress
        )

    def _put_back(self, batch: ReportRequest) -> None:
        with self._cond:
            self._results.extendleft(reversed(batch.results))
            self._logs.extendleft(reversed(batch.logs))
            self._services.extendleft(reversed(batch.services))
            self._released.extendleft(reversed(batch.released))
            for item in batch.progress:
                self._progress.setdefault(item.attempt_id, item)  # unless a newer one came

    def _stop_due(self) -> bool:
        return self._stopping and time.monotonic() >= self._flush_deadline
