"""HTTP client of the control plane API (``docs/architecture.md``, bodies in ``multinode.wire``).

One :class:`Client` per process and connection (:func:`get_client`), holding a keep-alive
``httpx.Client`` that is safe to share between threads. Failed requests come back as the
``multinode.errors`` class the server raised (``{code, message, details}`` bodies); a
control plane that does not answer becomes :class:`ControlPlaneUnreachableError`.

Only transport failures are retried, briefly: a refused connection always (nothing was
sent), other transport errors only for requests that are safe to repeat. Application
errors (4xx/5xx with a body) are never retried here.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from multinode import wire
from multinode.config import Connection, load_settings, resolve_connection
from multinode.errors import (
    AuthError,
    ConflictError,
    ControlPlaneUnreachableError,
    ForbiddenError,
    InvalidRequestError,
    MultinodeError,
    NotFoundError,
    error_from_body,
)

if TYPE_CHECKING:
    import httpx

# Longest long-poll the API accepts (OutputsRequest.timeout); the read timeout adds slack.
MAX_POLL_S = 60.0
_READ_SLACK_S = 15.0
_BY_STATUS: dict[int, type[MultinodeError]] = {
    401: AuthError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    422: InvalidRequestError,
}


log = logging.getLogger("multinode")


class Client:
    """Typed methods for every client endpoint of the control plane.

    Every method raises the server's error class (``NotFoundError``, ``AuthError``, ...)
    or ``ControlPlaneUnreachableError`` when the control plane cannot be reached.
    """

    def __init__(
        self,
        connection: Connection,
        *,
        connect_retry_s: float = 3.0,
        outage_retry_s: float = 180.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """Set up a keep-alive connection pool; no request is made yet.

        Args:
            connection: where the control plane is and the token to send.
            connect_retry_s: how long transport failures are retried before giving up,
                while the control plane has not answered this client yet (nothing there).
            outage_retry_s: the same once it has answered: a control plane that answered
                and then stopped is restarting, so callers wait it out.
            transport: an httpx transport to use instead of the network (for tests).
        """
        import httpx

        self.connection = connection
        self._connect_retry_s = connect_retry_s
        self._outage_retry_s = outage_retry_s
        self._answered = False  # whether the control plane ever answered this client
        self._waiting_said = False  # an outage is said once, not on every retry
        headers = {"User-Agent": "multinode-sdk"}
        if connection.api_key:
            headers["Authorization"] = f"Bearer {connection.api_key}"
        self._http = httpx.Client(
            base_url=connection.url + "/v1",
            headers=headers,
            timeout=httpx.Timeout(30.0, connect=5.0),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------------ health and blobs

    def health(self) -> wire.Health:
        return wire.Health.model_validate(self._request("GET", "/health").json())

    def has_blob(self, sha256: str) -> bool:
        """True when the control plane already stores the blob with this hash."""
        response = self._request("HEAD", f"/blobs/{sha256}", ok=(200, 404))
        return response.status_code == 200

    def missing_blobs(self, hashes: list[str]) -> list[str]:
        """The hashes among ``hashes`` the control plane does not store (a request per 1,000)."""
        missing: list[str] = []
        for start in range(0, len(hashes), 1000):
            body = wire.BlobsMissingRequest(hashes=hashes[start : start + 1000])
            response = self._request("POST", "/blobs/missing", json=body.model_dump(mode="json"))
            missing += wire.BlobsMissingResponse.model_validate(response.json()).missing
        return missing

    # ------------------------------------------------------------------ environments

    def request_environment(self, request: wire.EnvironmentRequest) -> wire.EnvironmentInfo:
        response = self._request("POST", "/environments", json=request.model_dump(mode="json"))
        return wire.EnvironmentInfo.model_validate(response.json())

    def get_environment(self, env_id: str, *, log_offset: int = 0) -> wire.EnvironmentInfo:
        response = self._request(
            "GET", f"/environments/{env_id}", params={"log_offset": log_offset}
        )
        return wire.EnvironmentInfo.model_validate(response.json())

    # ------------------------------------------------------------------ secrets

    def set_secret(self, name: str, values: dict[str, str]) -> wire.SecretInfo:
        body = wire.SecretSet(values=values).model_dump(mode="json")
        response = self._request("PUT", f"/secrets/{name}", json=body)
        return wire.SecretInfo.model_validate(response.json())

    def list_secrets(self) -> list[wire.SecretInfo]:
        items = self._request("GET", "/secrets").json()
        return [wire.SecretInfo.model_validate(item) for item in items]

    def delete_secret(self, name: str) -> wire.SecretInfo:
        response = self._request("DELETE", f"/secrets/{name}", retry=False)
        return wire.SecretInfo.model_validate(response.json())

    def put_blob(self, sha256: str, data: bytes) -> None:
        """Upload a content-addressed blob (repeating it is harmless)."""
        self._request(
            "PUT",
            f"/blobs/{sha256}",
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )

    # ------------------------------------------------------------------ apps and functions

    def deploy(self, app: str, request: wire.DeployRequest) -> wire.DeploymentInfo:
        response = self._request(
            "POST", f"/apps/{app}/deployments", json=request.model_dump(mode="json"), retry=False
        )
        return wire.DeploymentInfo.model_validate(response.json())

    def list_apps(self) -> list[wire.AppInfo]:
        return [wire.AppInfo.model_validate(item) for item in self._request("GET", "/apps").json()]

    def get_app(self, app: str) -> wire.AppInfo:
        return wire.AppInfo.model_validate(self._request("GET", f"/apps/{app}").json())

    def undeploy(self, app: str) -> wire.AppInfo:
        return wire.AppInfo.model_validate(self._request("DELETE", f"/apps/{app}").json())

    def get_function(self, app: str, name: str) -> wire.FunctionInfo:
        response = self._request("GET", f"/apps/{app}/functions/{name}")
        return wire.FunctionInfo.model_validate(response.json())

    # ------------------------------------------------------------------ calls

    def create_calls(
        self,
        app: str,
        function: str,
        inputs: Sequence[bytes],
        *,
        version: int | None = None,
        parent_call_id: str | None = None,
        wait: float = 0.0,
    ) -> wire.CallsCreated:
        """Submit one call per pickled ``(args, kwargs)`` in ``inputs`` (at most 10,000).

        With ``wait``, the answer also carries the outputs ready within that many seconds.
        Not retried after the request may have reached the server, so a call is never
        created twice by the client.
        """
        # The JSON is built directly: wire.CallsCreate validates Base64Bytes by decoding
        # them, so raw pickles must be encoded first, and this avoids a model per input.
        body = {
            "app": app,
            "function": function,
            "version": version,
            "inputs": [base64.b64encode(item).decode("ascii") for item in inputs],
            "parent_call_id": parent_call_id,
            "wait": wait,
        }
        response = self._request(
            "POST", "/calls", json=body, retry=False, read_timeout=wait + _READ_SLACK_S
        )
        return wire.CallsCreated.model_validate_json(response.content)

    def wait_outputs(
        self, call_ids: Sequence[str], *, timeout: float = 30.0
    ) -> list[wire.CallOutput]:
        """Long-poll: the outputs of those ``call_ids`` that are terminal.

        Answers as soon as at least one is terminal, or with an empty list after
        ``timeout`` seconds (at most 60).
        """
        timeout = max(0.0, min(float(timeout), MAX_POLL_S))
        body = wire.OutputsRequest(call_ids=list(call_ids), timeout=timeout).model_dump(mode="json")
        response = self._request(
            "POST", "/calls/outputs", json=body, read_timeout=timeout + _READ_SLACK_S
        )
        return wire.OutputsResponse.model_validate_json(response.content).outputs

    def get_call(self, call_id: str) -> wire.CallInfo:
        return wire.CallInfo.model_validate(self._request("GET", f"/calls/{call_id}").json())

    def list_calls(
        self, *, app: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[wire.CallInfo]:
        params = _params(app=app, status=status, limit=limit)
        return [
            wire.CallInfo.model_validate(item)
            for item in self._request("GET", "/calls", params=params).json()
        ]

    def cancel_call(self, call_id: str) -> wire.CallInfo:
        response = self._request("POST", f"/calls/{call_id}/cancel")
        return wire.CallInfo.model_validate(response.json())

    # ------------------------------------------------------------------ jobs

    def get_job(self, job_id: str) -> wire.JobInfo:
        """Raises NotFoundError for an unknown id, InvalidRequestError for a non-job call."""
        return wire.JobInfo.model_validate_json(self._request("GET", f"/jobs/{job_id}").content)

    def list_jobs(
        self, *, app: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[wire.JobInfo]:
        params = _params(app=app, status=status, limit=limit)
        return [
            wire.JobInfo.model_validate(item)
            for item in self._request("GET", "/jobs", params=params).json()
        ]

    def cancel_job(self, job_id: str) -> wire.JobInfo:
        response = self._request("POST", f"/jobs/{job_id}/cancel")
        return wire.JobInfo.model_validate_json(response.content)

    # ------------------------------------------------------------------ logs and instances

    def logs(
        self,
        *,
        app: str | None = None,
        function: str | None = None,
        call_id: str | None = None,
        after: int | None = None,
        limit: int | None = None,
    ) -> wire.LogsPage:
        params = _params(app=app, function=function, call_id=call_id, after=after, limit=limit)
        return wire.LogsPage.model_validate(self._request("GET", "/logs", params=params).json())

    def instances(self, *, app: str | None = None) -> list[wire.InstanceInfo]:
        response = self._request("GET", "/instances", params=_params(app=app))
        return [wire.InstanceInfo.model_validate(item) for item in response.json()]

    def list_services(
        self, *, app: str | None = None, include_stopped: bool = False
    ) -> list[wire.ServiceInfo]:
        params = _params(app=app, all="true" if include_stopped else None)
        response = self._request("GET", "/services", params=params)
        return [wire.ServiceInfo.model_validate(item) for item in response.json()]

    def get_service(self, app: str, name: str) -> list[wire.ServiceInfo]:
        response = self._request("GET", f"/apps/{app}/services/{name}")
        return [wire.ServiceInfo.model_validate(item) for item in response.json()]

    # ------------------------------------------------------------------ dicts

    def dict_credentials(self, app: str) -> wire.DictCredentials:
        """Vended AWS credentials scoped to ``app``'s dicts (ForbiddenError for another app's)."""
        response = self._request("POST", f"/apps/{app}/dict-credentials")
        return wire.DictCredentials.model_validate_json(response.content)

    def delete_dicts(self, app: str) -> wire.DictsDeleted:
        """Delete every dict of ``app`` and their large values in S3 (API keys only)."""
        response = self._request("DELETE", f"/apps/{app}/dicts", read_timeout=600.0)
        return wire.DictsDeleted.model_validate_json(response.content)

    # ------------------------------------------------------------------ transport

    def _request(
        self,
        method: str,
        path: str,
        *,
        ok: tuple[int, ...] = (),
        retry: bool = True,
        read_timeout: float | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        import httpx
        import tenacity

        if read_timeout is not None:
            kwargs["timeout"] = httpx.Timeout(read_timeout, connect=5.0)
        # Refused connections are always safe to retry; other transport errors only when
        # repeating the request cannot create something twice.
        retryable: tuple[type[BaseException], ...] = (httpx.ConnectError, httpx.ConnectTimeout)
        if retry:
            retryable = (httpx.TransportError,)
        limit = self._outage_retry_s if self._answered else self._connect_retry_s
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(retryable),
            wait=tenacity.wait_random_exponential(
                multiplier=0.05, max=2.0 if self._answered else 1.0
            ),
            stop=tenacity.stop_after_delay(limit),
            before_sleep=self._say_waiting if self._answered else None,
            reraise=True,
        )
        try:
            response = retrying(self._http.request, method, path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise self.connection.unreachable(f"{type(exc).__name__}: {exc}") from None
        except httpx.TransportError as exc:
            # It answered before, so "no control plane" would mislead: say what broke.
            raise ControlPlaneUnreachableError(
                f"lost the connection to the control plane at {self.connection.url} during "
                f"{method} /v1{path} ({type(exc).__name__}: {exc or 'no detail'}); try again",
                details={"url": self.connection.url, "source": self.connection.source},
            ) from None
        if self._waiting_said:
            log.warning("the control plane at %s answers again", self.connection.url)
            self._waiting_said = False
        self._answered = True
        if response.status_code >= 400 and response.status_code not in ok:
            raise _error_from_response(response, method=method, path=path)
        return response

    def _say_waiting(self, state: Any) -> None:
        if not self._waiting_said:
            self._waiting_said = True
            log.warning(
                "the control plane at %s does not answer (%s); waiting up to %gs for it "
                "(MN_OUTAGE_RETRY_S)",
                self.connection.url,
                state.outcome.exception() if state.outcome is not None else "no answer",
                self._outage_retry_s,
            )


_lock = threading.Lock()
_clients: dict[tuple[int, str, str | None], Client] = {}


def get_client() -> Client:
    """The process's client for the currently configured control plane (created lazily).

    The connection is re-resolved on each call, so changing ``MN_URL`` takes effect;
    a forked child gets its own client instead of sharing the parent's sockets.

    Raises:
        ControlPlaneUnreachableError: no control plane is configured.
    """
    settings = load_settings()
    connection = resolve_connection(settings)
    key = (os.getpid(), connection.url, connection.api_key)
    client = _clients.get(key)
    if client is not None:
        return client
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = Client(
                connection,
                connect_retry_s=settings.connect_retry_s,
                outage_retry_s=settings.outage_retry_s,
            )
            _clients[key] = client
        return client


def _params(**values: Any) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


def _error_from_response(response: httpx.Response, *, method: str, path: str) -> MultinodeError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("code"), str) and "message" in body:
        return error_from_body(body)
    text = response.text.strip().replace("\n", " ")[:300]
    cls = _BY_STATUS.get(response.status_code, MultinodeError)
    return cls(
        f"{method} /v1{path} failed with HTTP {response.status_code}: {text or response.reason_phrase}",
        details={"status": response.status_code},
    )
