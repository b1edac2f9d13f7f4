"""HTTP to the control plane: one client per thread, errors sorted by what to do about them.

Every request's outcome feeds one shared :class:`Reachability`, which is how the agent knows
the control plane has been out of reach for longer than its limit.
"""

from __future__ import annotations

import random
import threading
import time
from typing import TypeVar

import httpx
from pydantic import BaseModel

T = TypeVar("T", bound=BaseModel)

_CONNECT_TIMEOUT_S = 5.0


class Unreachable(Exception):
    """The request did not reach a working control plane (connection error, timeout, 5xx)."""


class Unauthorized(Exception):
    """The server refused our token (401): revoked, or this instance was terminated."""


class Refused(Exception):
    """The server answered with another 4xx; retrying the same request will not help."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status


class Reachability:
    """When the control plane last answered; shared by every thread of one agent.

    Args:
        limit_s: how long the control plane may stay unreachable before :meth:`exceeded`.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(self, limit_s: float, *, clock=time.monotonic) -> None:
        self.limit_s = limit_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last_ok = clock()

    def ok(self) -> None:
        """Record an answer from the control plane."""
        with self._lock:
            self._last_ok = self._clock()

    def reset(self) -> None:
        """Start counting from now, as if the control plane had just answered."""
        self.ok()

    def silent_for(self) -> float:
        """Seconds since the control plane last answered (or since this object was made)."""
        with self._lock:
            return self._clock() - self._last_ok

    def exceeded(self) -> bool:
        """True when the control plane has not answered for longer than the limit."""
        return self.silent_for() > self.limit_s

    def remaining(self) -> float:
        """Seconds until :meth:`exceeded` turns true (0 when it already is)."""
        return max(0.0, self.limit_s - self.silent_for())


def backoff(attempt: int, *, base: float = 0.1, cap: float = 5.0) -> float:
    """Full-jitter exponential delay for the ``attempt``-th consecutive failure (0-based)."""
    return random.uniform(0, min(cap, base * 2 ** min(attempt, 30)))


class ControlPlaneClient:
    """A keep-alive HTTP client for one thread.

    Args:
        base_url: the control plane, e.g. ``http://10.0.0.5:8000`` (``/v1`` is added here).
        token: sent as ``Authorization: Bearer``; may be set later via :attr:`token`.
        reach: updated with the outcome of every request.
    """

    def __init__(self, base_url: str, *, token: str | None, reach: Reachability) -> None:
        self.token = token
        self._reach = reach
        self._http = httpx.Client(
            base_url=base_url.rstrip("/") + "/v1",
            timeout=httpx.Timeout(30.0, connect=_CONNECT_TIMEOUT_S),
        )

    def post(self, path: str, body: BaseModel, answer: type[T], *, timeout: float = 30.0) -> T:
        """POST ``body`` as JSON and parse the answer as ``answer``.

        Raises:
            Unreachable: connection failure, timeout or a 5xx answer.
            Unauthorized: 401.
            Refused: any other 4xx.
        """
        response = self._send(
            "POST", path, content=body.model_dump_json(), timeout=timeout, json_body=True
        )
        return answer.model_validate_json(response.content)

    def get_bytes(self, path: str, *, timeout: float = 120.0) -> bytes:
        """GET ``path`` and return the raw body; raises like :meth:`post`."""
        return self._send("GET", path, timeout=timeout).content

    def close(self) -> None:
        self._http.close()

    def _send(
        self,
        method: str,
        path: str,
        *,
        timeout: float,
        content: str | None = None,
        json_body: bool = False,
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        if json_body:
            headers["Content-Type"] = "application/json"
        try:
            response = self._http.request(
                method,
                path,
                content=content,
                headers=headers,
                timeout=httpx.Timeout(timeout, connect=min(timeout, _CONNECT_TIMEOUT_S)),
            )
        except httpx.HTTPError as exc:
            raise Unreachable(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 500:
            raise Unreachable(
                f"{method} {path}: HTTP {response.status_code}: {response.text[:300]}"
            )
        self._reach.ok()
        if response.status_code == 401:
            raise Unauthorized(f"{method} {path}: {response.text[:300]}")
        if response.status_code >= 400:
            raise Refused(response.status_code, response.text)
        return response
