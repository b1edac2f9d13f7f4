"""In-process wake-ups for long-polls and loops.

A waiter subscribes to keys *before* it checks the database and then awaits the
subscription, so an event raised between the check and the wait is never lost. Services
raise events from worker threads after their transaction commits; waiters live on the
asyncio loop. Events of another replica (PostgreSQL) never arrive here: long-polls
therefore also re-check the database every ``event_recheck_s`` seconds there.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterable, Iterator

PROVISIONER = "provisioner"
SERVICES = "services"  # a deploy, an undeploy or a service replica's news
BUILDER = "builder"  # an environment was requested


def app_key(app_id: int) -> str:
    """Raised when calls of the app become claimable (created or requeued)."""
    return f"app:{app_id}"


def call_key(call_id: str) -> str:
    """Raised when the call reaches a terminal status."""
    return f"call:{call_id}"


def instance_key(instance_id: str) -> str:
    """Raised when the instance has something new to hear (cancel, shutdown)."""
    return f"instance:{instance_id}"


class Subscription:
    """Keys one waiter listens to; collects the ones raised since the last :meth:`wait`."""

    def __init__(self, notifier: Notifier, keys: list[str], loop: asyncio.AbstractEventLoop):
        self._notifier = notifier
        self.keys = keys
        self._loop = loop
        self._fired: set[str] = set()
        self._scheduled = False
        self._future: asyncio.Future[None] = loop.create_future()

    async def wait(self, timeout: float) -> set[str]:
        """Wait up to ``timeout`` seconds for a key; return the keys raised (maybe none)."""
        if not self._has_fired() and timeout > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._future, timeout)
        with self._notifier._lock:
            fired, self._fired = self._fired, set()
        if self._future.done() or self._future.cancelled():
            self._future = self._loop.create_future()
        return fired

    def _has_fired(self) -> bool:
        with self._notifier._lock:
            return bool(self._fired)

    def _fire(self, key: str) -> None:  # under the notifier's lock, any thread
        self._fired.add(key)
        if self._scheduled:  # one wake-up per batch of keys, not one per key
            return
        self._scheduled = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:  # on the loop
        with self._notifier._lock:
            self._scheduled = False
        if not self._future.done():
            self._future.set_result(None)


class Notifier:
    """Thread-safe publish side, asyncio subscribe side."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: dict[str, set[Subscription]] = {}

    @contextlib.contextmanager
    def subscribe(self, keys: Iterable[str]) -> Iterator[Subscription]:
        """Listen to ``keys`` for the duration of the block (call on the event loop)."""
        sub = Subscription(self, list(keys), asyncio.get_running_loop())
        with self._lock:
            for key in sub.keys:
                self._subscribers.setdefault(key, set()).add(sub)
        try:
            yield sub
        finally:
            with self._lock:
                for key in sub.keys:
                    subs = self._subscribers.get(key)
                    if subs is not None:
                        subs.discard(sub)
                        if not subs:
                            del self._subscribers[key]

    def notify(self, keys: Iterable[str]) -> None:
        """Raise ``keys``: every subscription listening to one of them wakes up."""
        with self._lock:
            for key in keys:
                for sub in self._subscribers.get(key, ()):
                    sub._fire(key)

    def calls_created(self, app_id: int) -> None:
        self.notify((app_key(app_id), PROVISIONER))

    def calls_finished(self, call_ids: Iterable[str]) -> None:
        self.notify(call_key(c) for c in call_ids)

    def instance_changed(self, instance_ids: Iterable[str]) -> None:
        self.notify(instance_key(i) for i in instance_ids)

    def wake_provisioner(self) -> None:
        self.notify((PROVISIONER,))
