"""Inside a worker: forwarding a running job's latest yielded value to the agent, throttled.

Standard library only, like the rest of the worker's code (:mod:`multinode_agent.runtime`).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable


class ProgressSender:
    """Sends ``("progress", attempt_id, seq, pickled_value)`` at most once per interval.

    The job's thread :meth:`offer`\\ s each value as it is yielded, already pickled (so what
    is sent is the value as it was at its ``yield``). A sender thread forwards the newest
    offer at once if nothing was sent within the last ``interval_s``, else when the
    interval has passed; offers in between are replaced, the latest winning. A generator
    yielding thousands of values a second thus costs one message per interval, and a value
    yielded just before a long pause is still sent within one interval. :meth:`end` sends
    what is pending before the job's ``done`` goes out, so no progress follows a result.

    Args:
        send: sends one message to the agent; called with this object's lock held.
    """

    def __init__(self, send: Callable[[tuple], None]) -> None:
        self._send = send
        self._cond = threading.Condition()
        self._attempt: str | None = None
        self._interval_s = 0.5
        self._pending: tuple[int, bytes] | None = None
        self._last_sent = -math.inf
        threading.Thread(target=self._run, name="mn-progress", daemon=True).start()

    def begin(self, attempt_id: str, interval_s: float) -> None:
        """Attribute offers to ``attempt_id`` from now on."""
        with self._cond:
            self._attempt = attempt_id
            self._interval_s = max(0.0, interval_s)
            self._pending = None
            self._last_sent = -math.inf

    def offer(self, seq: int, data: bytes) -> None:
        """The job yielded its ``seq``-th value, pickled as ``data``; returns at once."""
        with self._cond:
            idle = self._pending is None
            self._pending = (seq, data)
            if idle:  # the sender waits only for a first offer; later ones just replace it
                self._cond.notify()

    def end(self) -> None:
        """Send the pending offer, if any, and stop attributing offers to the attempt."""
        with self._cond:
            self._flush()
            self._attempt = None

    def _run(self) -> None:
        with self._cond:
            while True:
                self._cond.wait_for(lambda: self._pending is not None)
                wait = self._last_sent + self._interval_s - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue  # the pending offer may have been sent by end() meanwhile
                self._flush()

    def _flush(self) -> None:
        if self._pending is None:
            return
        seq, data = self._pending
        self._pending = None
        if self._attempt is None:
            return
        self._last_sent = time.monotonic()
        self._send(("progress", self._attempt, seq, data))
