"""``@mn.function``: the decorator, the :class:`Function` handle, and handle lookups.

A decorated function stays an ordinary function when called (``crunch(3)`` runs here);
its handle adds ``.call``, ``.map``, ``.starmap`` and ``.start`` to run it on a VM.

Which app a handle calls, in order: the app it was bound to (by :func:`get_function`,
by deploying it, or by ``mn run``); else ``MN_APP`` from the environment, which the agent
sets inside every VM (where ``MN_CALL_ID`` is sent as the parent of nested calls).
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Iterable
from typing import Any, Generic, Literal, TypeVar, overload

from multinode import wire
from multinode._calls import (
    POLL_S,
    CallHandle,
    Target,
    pickle_inputs,
    pickle_many,
    run_many,
)
from multinode._spec import build_spec
from multinode.errors import InvalidRequestError, NotFoundError

R = TypeVar("R")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")

# module name -> function name -> handle, in decoration order; read by deploy.
_REGISTRY: dict[str, dict[str, Function[Any]]] = {}


class Function(Generic[R]):
    """A handle on a function that can run remotely.

    Calling the handle runs the original function here, as plain Python. Pickling it
    keeps ``(app, name)`` plus the original function, so code shipped to a VM that uses
    the handle calls the deployed function (resolving its app there via ``MN_APP``).

    Attributes:
        name: the function's name within its app.
        spec: the validated resources and options.
    """

    def __init__(
        self,
        func: Callable[..., R] | None,
        *,
        name: str,
        spec: wire.FunctionSpec,
        app: str | None = None,
        version: int | None = None,
    ) -> None:
        self._func = func
        self.name = name
        self.spec = spec
        self._app = app
        self._version = version
        # Only a binding to a named app (mn.get_function) travels when pickled; a binding
        # made by deploying is left behind, so code shipped to a VM calls its own app there
        # and a blob's bytes (its content hash) do not depend on earlier deploys.
        self._travels = app is not None
        if func is not None:
            functools.update_wrapper(self, func)

    def __repr__(self) -> str:
        bound = f" app={self._app!r}" if self._app else ""
        return f"<mn.Function {self.name}{bound}>"

    def __reduce__(self) -> tuple[Any, ...]:
        app, version = (self._app, self._version) if self._travels else (None, None)
        return (_rebuild, (self._func, self.name, self.spec.model_dump(), app, version))

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        if self._func is None:
            raise InvalidRequestError(
                f"{self!r} has no local code (it came from mn.get_function); "
                f"run it remotely with {self.name}.call(...)"
            )
        return self._func(*args, **kwargs)

    @property
    def app(self) -> str | None:
        """The app this handle calls now (bound, or ``MN_APP``), or None if unknown."""
        if self._app:
            return self._app
        from multinode.config import load_settings

        return load_settings().app

    def call(self, *args: Any, **kwargs: Any) -> R:
        """Run the function once on a VM and return its result.

        Raises:
            SerializationError: an argument cannot be pickled (nothing is sent).
            The function's own exception, re-raised here with the remote traceback as a
            note; or CallTimeoutError, CallCancelledError, InfrastructureError, RemoteError.
        """
        # One request creates the call and waits for its output; a longer call is then
        # awaited like any handle.
        return self._start(args, kwargs, wait=POLL_S).result()

    def start(self, *args: Any, **kwargs: Any) -> CallHandle:
        """Start one remote call and return its handle without waiting."""
        return self._start(args, kwargs, wait=0.0)

    def _start(self, args: tuple, kwargs: dict, *, wait: float) -> CallHandle:
        data = pickle_inputs(self.name, args, kwargs)
        target = self._target()
        from multinode._client import get_client

        created = get_client().create_calls(
            target.app,
            target.function,
            [data],
            version=target.version,
            parent_call_id=target.parent_call_id,
            wait=wait,
        )
        handle = CallHandle(created.call_ids[0], function=self.name)
        if created.outputs:
            handle._output = created.outputs[0]
        return handle

    def map(
        self,
        inputs: Iterable[Any],
        *,
        return_exceptions: bool = False,
        kwargs: dict[str, Any] | None = None,
    ) -> list[Any]:
        """Call the function once per item, in parallel on VMs; results in input order.

        Every input is pickled before anything is sent, so an unpicklable one raises
        ``SerializationError`` without starting any call.

        Args:
            inputs: one positional argument per call.
            return_exceptions: put each failure in its place in the list instead of
                raising the first one met.
            kwargs: keyword arguments passed to every call.
        """
        return self._many(inputs, star=False, return_exceptions=return_exceptions, kwargs=kwargs)

    def starmap(
        self,
        inputs: Iterable[tuple[Any, ...]],
        *,
        return_exceptions: bool = False,
        kwargs: dict[str, Any] | None = None,
    ) -> list[Any]:
        """Like :meth:`map`, with each item a tuple of positional arguments."""
        return self._many(inputs, star=True, return_exceptions=return_exceptions, kwargs=kwargs)

    def _many(
        self,
        inputs: Iterable[Any],
        *,
        star: bool,
        return_exceptions: bool,
        kwargs: dict[str, Any] | None,
    ) -> list[Any]:
        pickled = pickle_many(self.name, inputs, star=star, kwargs=kwargs)
        if not pickled:
            return []
        return run_many(self._target(), pickled, return_exceptions=return_exceptions)

    def _bind(self, app: str, *, version: int | None = None, travels: bool = False) -> None:
        """Point the handle at ``app``; ``travels`` keeps the binding when pickled."""
        self._app = app
        self._version = version
        self._travels = travels

    def _target(self) -> Target:
        from multinode.config import load_settings

        settings = load_settings()
        if self._app:
            # Inside a VM of the same app, stay on the version that is running.
            same_app = settings.app == self._app
            version = self._version or (settings.version if same_app else None)
            return Target(self._app, self.name, version, settings.call_id)
        if settings.app:
            return Target(settings.app, self.name, settings.version, settings.call_id)
        raise InvalidRequestError(
            f"{self.name} is not bound to a deployed app, so it cannot run remotely; "
            f"deploy it with `mn deploy FILE.py`, run the file with `mn run FILE.py`, or get "
            f'a handle with mn.get_function("APP", "{self.name}")'
        )


@overload
def function(_func: Callable[..., R], /) -> Function[R]: ...


@overload
def function(
    _func: None = None,
    /,
    *,
    cpu: float = 1,
    memory: int | str | None = None,
    gpu: str | None = None,
    timeout: Any = 300,
    retries: int = 0,
    max_workers: int = 10,
    cooldown: Any = 60,
    env: dict[str, str] | None = None,
    secrets: list[str] | None = None,
    pip: list[str] | None = None,
    python: str | None = None,
    capacity_timeout: Any = 1800,
) -> Callable[[Callable[..., R]], Function[R]]: ...


def function(
    _func: Callable[..., Any] | None = None,
    /,
    *,
    cpu: float = 1,
    memory: int | str | None = None,
    gpu: str | None = None,
    timeout: Any = 300,
    retries: int = 0,
    max_workers: int = 10,
    cooldown: Any = 60,
    env: dict[str, str] | None = None,
    secrets: list[str] | None = None,
    pip: list[str] | None = None,
    python: str | None = None,
    capacity_timeout: Any = 1800,
) -> Any:
    """Declare a function that can run on cloud VMs; use as ``@mn.function`` or with options.

    Args:
        cpu: vCPUs per call, e.g. ``16`` or ``0.5``.
        memory: MiB as an int, or a string like ``"32GiB"`` (GB is read as GiB); None
            sizes it from the instance.
        gpu: ``"T4"``, ``"A10G:4"``, ...; None for no GPU.
        timeout: seconds (or a timedelta) one call may run before it is stopped.
        retries: how often a call that raised is tried again.
        max_workers: calls of this function that may run at the same time.
        cooldown: seconds (or a timedelta) an idle VM is kept before it is terminated.
        env: variables set in this function's processes on the VM, e.g.
            ``{"LEVEL": "debug"}`` (names starting with ``MN_`` are reserved).
        secrets: names of secrets made with ``mn secret set``; each key becomes a
            variable of this function's processes, and of no other function's.
        pip: requirements of this function, e.g. ``["humanize==4.17.0"]``, added to the
            app's ``requirements.txt``; the environment is built once at deploy.
        python: the Python minor version to run on, e.g. ``"3.12"`` (default: the one
            deploying).
        capacity_timeout: seconds (or a timedelta) a call may wait while no instance
            type has capacity; then it fails, naming the types tried. Default 30 minutes.

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
    return make_decorator(_func, options, defaults=_DEFAULTS, cls=Function, kind="function")


_DEFAULTS: dict[str, Any] = {
    "cpu": 1,
    "memory": None,
    "gpu": None,
    "timeout": 300,
    "retries": 0,
    "max_workers": 10,
    "cooldown": 60,
    "env": None,
    "secrets": None,
    "pip": None,
    "python": None,
    "capacity_timeout": 1800,
}


def make_decorator(
    func: Callable[..., Any] | None,
    options: dict[str, Any],
    *,
    defaults: dict[str, Any],
    cls: type[Function[Any]],
    kind: Literal["function", "job", "service"],
) -> Any:
    """The body of ``@mn.<kind>``, used bare (``func`` given) or with options.

    Returns the handle (``cls``) when ``func`` is given, else the decorator. Options are
    validated here, so a bad one fails at the decorator line even if never applied.

    Raises:
        InvalidRequestError: a bad option, options passed with ``func``, or a ``func``
            that is not a plain ``def`` function; each message has the fix.
    """
    if func is not None:
        if not callable(func):
            raise InvalidRequestError(
                f"@mn.{kind} got {func!r} instead of a function; pass options by keyword, "
                f"e.g. @mn.{kind}(cpu=4)"
            )
        changed = [name for name, value in options.items() if value != defaults[name]]
        if changed:
            raise InvalidRequestError(
                f"use @mn.{kind}(...) as a decorator: write @mn.{kind}("
                + ", ".join(f"{name}={options[name]!r}" for name in changed)
                + f") above def {getattr(func, '__name__', 'f')}, not mn.{kind}(f, ...)"
            )
        return _decorate(func, options, cls=cls, kind=kind)
    build_spec("the decorated function", kind=kind, **options)
    return lambda f: _decorate(f, options, cls=cls, kind=kind)


def argless_function_name(fn: Any, *, where: str, called: str) -> str:
    """The name of ``fn`` after checking it is a plain ``def`` that takes no arguments
    (what scheduled tasks and services must be); ``called`` says how the platform calls it.

    Raises:
        InvalidRequestError: ``fn`` is a handle already, a lambda, not callable, or has
            parameters without defaults.
    """
    name = getattr(fn, "__name__", "")
    if isinstance(fn, Function) or not callable(fn) or not _NAME_RE.match(name):
        raise InvalidRequestError(
            f"{where} decorates a plain function defined with `def`, not {fn!r}; "
            "use one decorator per function"
        )
    try:
        inspect.signature(fn).bind()
    except TypeError:
        raise InvalidRequestError(
            f"{where} on {name}: {called} with no arguments; give its parameters defaults "
            "or remove them",
            details={"field": "function", "reason": "needs_arguments"},
        ) from None
    except ValueError:
        pass  # no signature to inspect (a builtin): let it be
    return name


def get_function(app: str, name: str) -> Function[Any]:
    """A handle on function ``name`` of the deployed ``app`` (one request to check it).

    Raises:
        NotFoundError: no such app or function; the message names what exists.
    """
    from multinode._client import get_client

    client = get_client()
    try:
        info = client.get_function(app, name)
    except NotFoundError as exc:
        raise _explain_missing(app, name, exc) from None
    return Function(None, name=info.name, spec=info.spec, app=info.app)


def get_call(call_id: str) -> CallHandle:
    """Rebuild the handle of a call from its id (no request is made)."""
    return CallHandle(call_id)


def registered_functions(module_name: str) -> dict[str, Function[Any]]:
    """The handles decorated in ``module_name``, by name, in decoration order."""
    return dict(_REGISTRY.get(module_name, {}))


def _decorate(
    func: Any,
    options: dict[str, Any],
    *,
    cls: type[Function[Any]],
    kind: Literal["function", "job", "service"],
) -> Function[Any]:
    if isinstance(func, Function):
        first = func.spec.kind
        twice = f"with @mn.{kind} twice" if first == kind else f"with @mn.{first} and @mn.{kind}"
        raise InvalidRequestError(f"{func.name} is decorated {twice}; keep one")
    if not callable(func):
        raise InvalidRequestError(
            f"@mn.{kind}(...) decorates functions, not {type(func).__name__} {func!r}"
        )
    name = getattr(func, "__name__", "")
    if not _NAME_RE.match(name):
        raise InvalidRequestError(
            f"@mn.{kind} needs a function defined with `def` and a plain name, not {name!r}; "
            "write `def my_func(...):` instead of a lambda"
        )
    handle = cls(func, name=name, spec=build_spec(name, kind=kind, **options))
    _REGISTRY.setdefault(getattr(func, "__module__", None) or "__main__", {})[name] = handle
    return handle


def _rebuild(
    func: Callable[..., Any] | None,
    name: str,
    spec: dict[str, Any],
    app: str | None,
    version: int | None,
) -> Function[Any]:
    return Function(func, name=name, spec=wire.FunctionSpec(**spec), app=app, version=version)


def _explain_missing(app: str, name: str, original: NotFoundError) -> NotFoundError:
    from multinode._client import get_client

    client = get_client()
    try:
        info = client.get_app(app)
    except NotFoundError:
        names = sorted(a.name for a in client.list_apps() if a.status == "deployed")
        listing = ", ".join(names) if names else "none"
        return NotFoundError(
            f"no app named {app!r} is deployed (deployed apps: {listing}); deploy it with "
            "`mn deploy FILE.py --name APP`",
            details={"app": app, "apps": names},
        )
    listing = ", ".join(info.functions) if info.functions else "none"
    return NotFoundError(
        f"app {app!r} has no function {name!r} (its functions: {listing})",
        details={
            "app": app,
            "function": name,
            "functions": list(info.functions),
            **original.details,
        },
    )
