"""Calls in flight: pickling inputs, the :class:`CallHandle`, outcomes and fan-out.

An outcome (:class:`multinode.wire.CallOutput`) becomes either the return value or the
function's own exception, re-raised on the caller with the remote traceback attached as
a note. Platform outcomes map to errors: ``timed_out`` to :class:`CallTimeoutError`,
``cancelled`` to :class:`CallCancelledError`, a failure without a user exception to
:class:`InfrastructureError`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from multinode import wire
from multinode._serialization import dumps, loads
from multinode.errors import (
    CallCancelledError,
    CallTimeoutError,
    InfrastructureError,
    RemoteError,
    ResultTimeoutError,
    SerializationError,
)

if TYPE_CHECKING:
    from multinode._client import Client

SUBMIT_CHUNK = 1_000  # inputs per POST /v1/calls
OUTPUTS_WINDOW = 256  # pending ids per POST /v1/calls/outputs: the oldest, which finish first
POLL_S = 25.0  # long-poll length; well under the API's 60 s cap


@dataclass(frozen=True)
class Target:
    """Where calls of one function go."""

    app: str
    function: str
    version: int | None = None
    parent_call_id: str | None = None


def pickle_inputs(function: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """Pickle one call's ``(args, kwargs)``.

    Raises:
        SerializationError: naming the argument that cannot be pickled
            (``"argument 0 of crunch: ..."`` or ``"keyword argument 'lock' of crunch: ..."``).
    """
    try:
        return dumps((args, kwargs), what=f"arguments of {function}")
    except SerializationError:
        pass
    # Pickle each argument alone to name the culprit; only reached on failure.
    for index, value in enumerate(args):
        dumps(value, what=f"argument {index} of {function}")
    for name, value in kwargs.items():
        dumps(value, what=f"keyword argument {name!r} of {function}")
    return dumps((args, kwargs), what=f"arguments of {function}")


class CallHandle:
    """A call that was started; rebuild one anywhere with ``mn.get_call(id)``.

    Attributes:
        id: the call's id.
    """

    def __init__(self, call_id: str, *, function: str | None = None) -> None:
        self.id = call_id
        self._function = function
        self._output: wire.CallOutput | None = None

    def __repr__(self) -> str:
        return f"CallHandle({self.id!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (CallHandle, (self.id,), {"_function": self._function})

    def info(self) -> wire.CallInfo:
        """The call's record on the control plane (one request)."""
        from multinode._client import get_client

        return get_client().get_call(self.id)

    def status(self) -> wire.CallStatus:
        """The call's current status (one request)."""
        return self.info().status

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the call and return its value, or raise the function's exception.

        Args:
            timeout: seconds to wait; ``None`` waits for as long as the call runs.

        Raises:
            ResultTimeoutError: the call did not finish within ``timeout`` (it goes on).
            CallTimeoutError, CallCancelledError, InfrastructureError, RemoteError: see
                the module docstring; otherwise the function's own exception.
        """
        if self._output is None:
            self._output = self._wait(timeout)
        return unwrap(self._output, function=self._function or "the function")

    def cancel(self) -> wire.CallInfo:
        """Ask the control plane to stop the call; a finished call is left as it is."""
        from multinode._client import get_client

        return get_client().cancel_call(self.id)

    def _wait(self, timeout: float | None) -> wire.CallOutput:
        from multinode._client import get_client

        client = get_client()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = POLL_S if deadline is None else max(0.0, deadline - time.monotonic())
            outputs = client.wait_outputs([self.id], timeout=min(POLL_S, remaining))
            if outputs:
                return outputs[0]
            if deadline is not None and time.monotonic() >= deadline:
                raise ResultTimeoutError(
                    f"call {self.id} did not finish within {timeout:g}s; it is still running "
                    "(call .result() again to keep waiting, or .cancel() to stop it)",
                    details={"call_id": self.id, "timeout": timeout},
                )


def unwrap(output: wire.CallOutput, *, function: str) -> Any:
    """The value of a terminal call, or the matching exception raised."""
    status = output.status
    where = f"call {output.call_id} of {function}"
    if status == wire.CallStatus.succeeded:
        if output.output is None:
            return None
        return loads(output.output, what=f"the result of {where}")
    details = {"call_id": output.call_id, "function": function, "reason": output.reason}
    if status == wire.CallStatus.timed_out:
        raise CallTimeoutError(
            f"{where} timed out ({output.reason or 'ran longer than its timeout'}); "
            "raise timeout= in @mn.function if it needs longer",
            details=details,
        )
    if status == wire.CallStatus.cancelled:
        raise CallCancelledError(
            f"{where} was cancelled ({output.reason or 'on request'})", details=details
        )
    if output.error is None:
        raise InfrastructureError(
            f"{where} could not be run: {output.reason or 'the platform gave no reason'}",
            details=details,
        )
    raise rebuild_exception(output.error, where=where) from None


def rebuild_exception(error: wire.CallError, *, where: str) -> BaseException:
    """The user's exception as raised remotely, with the remote traceback as a note."""
    exc: BaseException | None = None
    if error.pickled is not None:
        try:
            candidate = loads(error.pickled, what=f"the exception of {where}")
        except SerializationError:
            candidate = None
        if isinstance(candidate, BaseException):
            exc = candidate
    if exc is None:
        return RemoteError(
            f"{where} raised {error.type}: {error.message}\n\nRemote traceback:\n{error.traceback}",
            details={"type": error.type, "traceback": error.traceback, "where": where},
        )
    note = f"Remote traceback ({where}):\n{error.traceback.rstrip()}"
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:  # Python 3.10 has no add_note; keep the same attribute for programs to read
        exc.__notes__ = [*getattr(exc, "__notes__", []), note]  # type: ignore[attr-defined]
    return exc


def run_many(
    target: Target,
    inputs: Sequence[bytes],
    *,
    return_exceptions: bool = False,
    client: Client | None = None,
) -> list[Any]:
    """Submit every pickled input and return the outcomes in input order.

    Raises:
        the first failure met (while collecting) unless ``return_exceptions`` is true,
        in which case errors take their input's place in the list.
    """
    if not inputs:
        return []
    if client is None:
        from multinode._client import get_client

        client = get_client()
    results: list[Any] = [None] * len(inputs)
    index_of: dict[str, int] = {}
    with _progress(len(inputs), target.function) as advance:
        for start in range(0, len(inputs), SUBMIT_CHUNK):
            created = client.create_calls(
                target.app,
                target.function,
                inputs[start : start + SUBMIT_CHUNK],
                version=target.version,
                parent_call_id=target.parent_call_id,
            )
            for offset, call_id in enumerate(created.call_ids):
                index_of[call_id] = start + offset
        pending = list(index_of)
        while pending:
            outputs = client.wait_outputs(pending[:OUTPUTS_WINDOW], timeout=POLL_S)
            if not outputs:
                continue
            for output in outputs:
                index = index_of.pop(output.call_id, None)
                if index is None:
                    continue  # already collected by an earlier answer
                try:
                    results[index] = unwrap(output, function=target.function)
                except Exception as exc:
                    if not return_exceptions:
                        raise
                    results[index] = exc
            advance(len(outputs))
            pending = [call_id for call_id in pending if call_id in index_of]
    return results


def pickle_many(
    function: str, items: Iterable[Any], *, star: bool, kwargs: dict[str, Any] | None
) -> list[bytes]:
    """Pickle every input of a map before anything is sent (one bad input sends nothing)."""
    extra = dict(kwargs or {})
    pickled = []
    for position, item in enumerate(items):
        if star:
            if not isinstance(item, (tuple, list)):
                raise SerializationError(
                    f"input {position} of {function}.starmap is {type(item).__name__}, not a "
                    "tuple of arguments; use .map for one argument per call",
                    details={"position": position},
                )
            args = tuple(item)
        else:
            args = (item,)
        try:
            pickled.append(pickle_inputs(function, args, extra))
        except SerializationError as exc:
            raise SerializationError(
                f"input {position}: {exc.message}", details={**exc.details, "position": position}
            ) from exc.__cause__
    return pickled


class _progress:
    """A rich progress bar on stderr while a map runs, only when stderr is a terminal."""

    def __init__(self, total: int, function: str) -> None:
        self._total = total
        self._function = function
        self._bar: Any = None

    def __enter__(self) -> Callable[[int], None]:
        if not sys.stderr.isatty():
            return lambda n: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self._bar = Progress(
            "[bold]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._bar.start()
        task = self._bar.add_task(f"{self._function}.map", total=self._total)
        return lambda n: self._bar.advance(task, n)

    def __exit__(self, *exc_info: Any) -> None:
        if self._bar is not None:
            self._bar.stop()
