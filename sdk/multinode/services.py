"""``@mn.service``: a function kept running on its own instance, answering on a port.

::

    @mn.service(port=80, cpu=1)
    def api():
        uvicorn.run(app, host="0.0.0.0", port=int(os.environ.get("PORT", 80)))

Deploying the app starts ``replicas`` copies, each on an instance of its own, restarted
with a back-off if it exits. A replica is *ready* when its port answers; its URL is then
listed by ``mn services`` and :meth:`Service.urls`. A redeploy starts the new version
and stops the old one only once every new replica is ready. The process gets ``PORT``:
on a real VM (and a local-cloud VM with its own network namespace) it is the declared
port; on a local-cloud VM that is a plain process it is a free port, so a service meant
to run there too should listen on ``PORT``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from multinode import wire
from multinode._spec import _parse_int, build_spec
from multinode.errors import InvalidRequestError, NotFoundError, ServiceNotReadyError
from multinode.functions import _REGISTRY, Function, argless_function_name

DEFAULT_READY_TIMEOUT_S = 120.0
_LOG_LINES = 20


class Service(Function[Any]):
    """A handle on a service. Calling it runs it here (e.g. to try it locally); deployed,
    it runs by itself, so ``.call``/``.map``/``.start`` are refused."""

    def __repr__(self) -> str:
        bound = f" app={self._app!r}" if self._app else ""
        return f"<mn.Service {self.name}{bound}>"

    def call(self, *args: Any, **kwargs: Any) -> Any:
        raise self._not_callable()

    def start(self, *args: Any, **kwargs: Any) -> Any:
        raise self._not_callable()

    def map(self, *args: Any, **kwargs: Any) -> Any:
        raise self._not_callable()

    def starmap(self, *args: Any, **kwargs: Any) -> Any:
        raise self._not_callable()

    def replicas(self) -> list[wire.ServiceInfo]:
        """The service's live replicas (all versions), as the control plane knows them."""
        from multinode._client import get_client

        return get_client().get_service(self._target().app, self.name)

    def endpoint(self) -> str | None:
        """The service's stable address at the gateway, the same through every redeploy
        (None when the control plane has no gateway, or before its first replica)."""
        return next((r.endpoint for r in self.replicas() if r.endpoint), None)

    def urls(self) -> list[str]:
        """Where the newest version's ready replicas answer (an older version's while none
        of the newest is ready yet); empty when none is ready."""
        return ready_urls(self.replicas())

    def wait_ready(
        self, *, version: int | None = None, timeout: float = DEFAULT_READY_TIMEOUT_S
    ) -> list[str]:
        """Wait until every replica of ``version`` (default: the newest) is ready.

        Returns:
            Their URLs.

        Raises:
            ServiceNotReadyError: a replica crash-loops, or ``timeout`` passed first; the
                message ends with the replica's last log lines.
        """
        from multinode._client import get_client

        return wait_ready(
            get_client(), self._target().app, self.name, version=version, timeout=timeout
        )

    def _not_callable(self) -> InvalidRequestError:
        return InvalidRequestError(
            f"{self.name} is a service: once deployed it runs by itself; send requests to "
            f"its URL ({self.name}.urls() or `mn services`) instead of calling it"
        )


def service(
    _func: Callable[..., Any] | None = None,
    /,
    *,
    port: int | None = None,
    cpu: float = 1,
    memory: int | str | None = None,
    gpu: str | None = None,
    replicas: int = 1,
    env: dict[str, str] | None = None,
    secrets: list[str] | None = None,
    pip: list[str] | None = None,
    python: str | None = None,
) -> Any:
    """Declare a service listening on ``port``; use as ``@mn.service(port=80)``.

    Args:
        port: the TCP port the service listens on (it also finds it in ``PORT``).
        cpu, memory, gpu: the instance each replica gets to itself, sized as for
            ``@mn.function``.
        replicas: how many copies run, each on its own instance.
        env, secrets, pip, python: its variables, secrets, requirements and Python, as
            for ``@mn.function``.

    Raises:
        InvalidRequestError: at decoration time, for a missing or bad option, or a function
            that needs arguments.
    """
    if _func is not None:
        raise InvalidRequestError(
            f"@mn.service needs the port the service listens on: write @mn.service(port=80) "
            f"above def {getattr(_func, '__name__', 'f')}"
        )
    where = "@mn.service(...)"
    if port is None:
        raise InvalidRequestError(f"{where} needs port=..., the port it listens on, e.g. port=80")
    port = _parse_int(port, arg="port", where=where, low=1, high=65535, example="port=8000")
    replicas = _parse_int(
        replicas, arg="replicas", where=where, low=1, high=100, example="replicas=2"
    )
    resources = {"cpu": cpu, "memory": memory, "gpu": gpu, "env": env, "secrets": secrets}
    resources.update(pip=pip, python=python)
    base = build_spec("the decorated function", kind="service", **resources)

    def decorate(fn: Callable[..., Any]) -> Service:
        name = argless_function_name(fn, where=where, called="a service is started")
        # Its instance is its own: terminate it as soon as the replica stops.
        spec = base.model_copy(
            update={"kind": "service", "port": port, "replicas": replicas, "cooldown_s": 0.0}
        )
        handle = Service(fn, name=name, spec=spec)
        _REGISTRY.setdefault(getattr(fn, "__module__", None) or "__main__", {})[name] = handle
        return handle

    return decorate


def get_service(app: str, name: str) -> Service:
    """A handle on service ``name`` of the deployed ``app`` (one request to check it).

    Raises:
        NotFoundError: no such app or service.
    """
    from multinode._client import get_client

    info = get_client().get_function(app, name)
    if info.spec.kind != "service":
        raise InvalidRequestError(
            f"{app}.{name} is a {info.spec.kind}, not a service; use mn.get_function",
            details={"app": app, "name": name, "kind": info.spec.kind},
        )
    return Service(None, name=info.name, spec=info.spec, app=info.app)


def ready_urls(replicas: list[wire.ServiceInfo]) -> list[str]:
    """URLs of the ready replicas of the newest version that has any ready."""
    ready = [r for r in replicas if r.state == wire.ServiceState.ready and r.url]
    if not ready:
        return []
    newest = max(r.version for r in ready)
    return [r.url for r in sorted(ready, key=lambda r: r.replica) if r.version == newest and r.url]


def wait_ready(
    client: Any,
    app: str,
    name: str,
    *,
    version: int | None = None,
    timeout: float = DEFAULT_READY_TIMEOUT_S,
    interval: float = 0.25,
) -> list[str]:
    """Poll until every replica of ``version`` (default: the newest) of the service is
    ready; see :meth:`Service.wait_ready`."""
    deadline = time.monotonic() + timeout
    info = client.get_function(app, name)  # NotFoundError naming what exists
    if info.spec.kind != "service":
        raise InvalidRequestError(f"{app}.{name} is a {info.spec.kind}, not a service")
    while True:
        try:
            replicas = client.get_service(app, name)
        except NotFoundError:
            replicas = []  # just deployed: the services loop has not queued its replicas yet
        want = version if version is not None else max((r.version for r in replicas), default=0)
        mine = [r for r in replicas if r.version == want]
        if mine and all(r.state == wire.ServiceState.ready for r in mine):
            return [r.url for r in sorted(mine, key=lambda r: r.replica) if r.url]
        looping = [r for r in mine if r.crash_looping]
        if looping:
            raise _not_ready(client, app, name, looping[0], "keeps crashing")
        if time.monotonic() >= deadline:
            waiting = [r for r in mine if r.state != wire.ServiceState.ready] or mine
            if not waiting:
                raise ServiceNotReadyError(
                    f"service {app}.{name} version {want} has no replicas after {timeout:g}s",
                    details={"app": app, "service": name, "version": want},
                )
            raise _not_ready(
                client, app, name, waiting[0], f"did not answer on its port within {timeout:g}s"
            )
        time.sleep(interval)


def _not_ready(
    client: Any, app: str, name: str, replica: wire.ServiceInfo, what: str
) -> ServiceNotReadyError:
    lines: list[str] = []
    after = None
    for _ in range(100):  # pages of the replica's log, oldest first; keep the tail
        page = client.logs(app=app, call_id=replica.call_id, after=after, limit=10_000)
        lines = (lines + [entry.text for entry in page.lines])[-_LOG_LINES:]
        if len(page.lines) < 10_000:
            break
        after = page.next_after
    last = f"; last exit: {replica.last_exit}" if replica.last_exit else ""
    shown = "\n".join(f"  {line}" for line in lines) or "  (no output)"
    return ServiceNotReadyError(
        f"service {app}.{name} replica {replica.replica} (version {replica.version}) {what} "
        f"(state {replica.state.value}, {replica.restarts} restarts{last}). Its last log lines:\n"
        + shown,
        details={
            "app": app,
            "service": name,
            "replica": replica.replica,
            "version": replica.version,
            "state": replica.state.value,
            "restarts": replica.restarts,
            "logs": lines,
        },
    )
