"""The code that runs inside a worker process.

A worker is started by :class:`multinode_agent.worker.Worker` with one end of a socket
pair (a :class:`multiprocessing.connection.Connection`) and runs jobs one at a time until
the socket closes. Messages are pickled tuples (standard pickle; only plain data crosses):

agent → worker:
    ``("run", job)``: ``job`` is a dict with ``attempt_id``, ``function``, ``blob_hash``,
    ``blob`` (the pickled function, or an import reference naming the folder of its
    source, see :func:`load_function`; None when this worker already loaded it), ``input``
    (pickled ``(args, kwargs)``), ``python_version``, ``cloudpickle_version``, ``env``,
    and optionally ``kind`` (``"job"`` drives a returned generator, see :func:`drive`)
    and ``progress_interval_s``. Several may be sent back to back (a batch of short
    calls): they run one after another, in the order sent.
    ``("skip", attempt_id)``: drop that job if it has not started; its ``done`` then says
    ``cancelled`` with ``skipped`` true. Ignored for a job that started or is unknown.

worker → agent:
    ``("ready", pid)`` once, when the worker can take jobs.
    ``("logs", [(attempt_id, stream, text, ts), ...])`` while a job runs (and between jobs,
    with ``attempt_id`` None, for output nobody asked for).
    ``("progress", attempt_id, seq, value)`` while a job's generator runs: the pickled
    ``seq``-th value it yielded, at most one per ``progress_interval_s`` (the latest wins,
    :class:`multinode_agent.progress.ProgressSender`), all before the job's ``done``.
    ``("done", [(attempt_id, outcome), ...])``: one or more jobs ended, in order
    (:class:`OutcomeSender`); ``outcome`` is a dict with ``status``
    (``succeeded``/``failed``), ``output``, ``error`` (a dict with the fields of
    :class:`multinode.wire.CallError`), ``reason`` and ``cached`` (whether the function is
    now loaded here, so the agent stops sending its blob). Every log line of a job is
    sent before its ``done``.

A function defined with ``async def`` runs on an event loop of its own (``asyncio.run``);
a job's async generator is driven like a plain one.

This module imports only the standard library and cloudpickle, so a worker starts fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import importlib
import inspect
import io
import json
import os
import platform
import select
import sys
import threading
import time
import traceback
from codecs import getincrementaldecoder
from collections import deque
from collections.abc import AsyncGenerator, Callable, Generator
from multiprocessing.connection import Connection
from typing import Any

import cloudpickle

from multinode_agent.progress import ProgressSender

# A partial line longer than this is sent without waiting for its newline.
_MAX_PARTIAL = 16 * 1024
# Frames of these files lead to the user's code; tracebacks start after them.
_NOT_USER_CODE = (__file__, os.path.dirname(asyncio.__file__) + os.sep, "<frozen importlib")
# The agent's stderr, kept open for faulthandler (a closed file would silence it).
_crash_log: io.TextIOWrapper | None = None


def _die_with_parent(interval_s: float = 0.5) -> None:
    """Exit this worker soon after the agent that started it dies.

    Workers run in their own session (so a kill reaches what user code started), which
    puts them outside the VM's process group: without this, a VM whose agent was killed
    would leave a busy worker running. A watcher thread compares the parent pid, because
    Linux's parent-death signal follows the spawning *thread*, which may end long before
    the agent does.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main() -> None:
    """Serve jobs on the connection whose fd is ``argv[1]`` until it closes, then exit 0."""
    conn = Connection(int(sys.argv[1]))
    _die_with_parent()
    send_lock = threading.Lock()

    def send(message: tuple) -> None:
        with send_lock:
            conn.send(message)

    # Crash reports (segfaults) go to the agent's own stderr: fd 2 is about to become the
    # capture pipe, whose reader dies with the process.
    global _crash_log
    _crash_log = os.fdopen(os.dup(2), "w")
    faulthandler.enable(file=_crash_log)
    capture = OutputCapture(send)
    progress = ProgressSender(send)
    functions: dict[str, Callable[..., Any]] = {}
    unloadable: dict[str, dict] = {}
    queued: deque[dict] = deque()
    outcomes = OutcomeSender(send)
    send(("ready", os.getpid()))
    while True:
        try:
            # Take everything the agent has sent before starting the next job, so a skip
            # sent for a queued job is seen in time.
            while not queued or conn.poll(0):
                _take(conn.recv(), queued, send)
        except (EOFError, OSError):
            os._exit(0)  # the agent is gone; nothing to hand results to
        job = queued.popleft()
        # Unpickling and pickling run user code too (imports, __reduce__), so the capture
        # spans the whole job.
        capture.begin(job["attempt_id"])
        progress.begin(job["attempt_id"], job.get("progress_interval_s", 0.5))
        try:
            outcome = run_job(job, functions, progress, unloadable)
        finally:
            progress.end()
            capture.end()
        outcomes.add(job["attempt_id"], outcome, more=bool(queued))


class OutcomeSender:
    """Sends jobs' outcomes as ``("done", [(attempt_id, outcome), ...])``.

    The last job of a batch is answered at once. An outcome followed by another queued
    job waits up to ``hold_s`` (a thread sends it then), so a batch of short calls costs
    the agent one wake-up per ``hold_s`` rather than per call, while the agent still
    learns within ``hold_s`` when each job ended (it times the next job from then).
    """

    def __init__(self, send: Callable[[tuple], None], hold_s: float = 0.002) -> None:
        self._send = send
        self._hold_s = hold_s
        self._pending: list[tuple[str, dict]] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._run, name="mn-outcomes", daemon=True).start()

    def add(self, attempt_id: str, outcome: dict, *, more: bool) -> None:
        with self._cond:
            self._pending.append((attempt_id, outcome))
            if not more:
                self._flush()
            elif len(self._pending) == 1:
                self._cond.notify()  # start the hold

    def _run(self) -> None:
        with self._cond:
            while True:
                self._cond.wait_for(lambda: self._pending)
                self._cond.wait(self._hold_s)
                self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._send(("done", self._pending))
            self._pending = []


def _take(message: tuple, queued: deque[dict], send: Callable[[tuple], None]) -> None:
    """Queue a ``run``; apply a ``skip`` to a queued job (answering its ``done`` at once)."""
    if message[0] == "run":
        queued.append(message[1])
    elif message[0] == "skip":
        for job in queued:
            if job["attempt_id"] == message[1]:
                queued.remove(job)
                # The function travels with the first job of a batch that needs it.
                heir = next((j for j in queued if j["blob_hash"] == job["blob_hash"]), None)
                if heir is not None and heir["blob"] is None:
                    heir["blob"] = job["blob"]
                outcome = {"status": "cancelled", "reason": "cancelled on request", "skipped": True}
                send(("done", [(message[1], outcome)]))
                return


def run_job(
    job: dict,
    functions: dict[str, Callable[..., Any]],
    progress: ProgressSender | None = None,
    unloadable: dict[str, dict] | None = None,
) -> dict:
    """Run one job and describe its outcome; never raises for anything the user's code does.

    ``functions`` caches unpickled functions by blob hash across jobs; a function is cached
    only once it unpickled, and the outcome's ``cached`` says whether it is. ``unloadable``
    remembers why a blob could not be unpickled, for the later jobs of a batch that were
    sent without it. A generator returned by a function of kind ``"job"`` is driven by
    :func:`drive`, its values offered to ``progress``.
    """
    _set_env(job["env"])
    if job.get("environment"):
        use_environment(job["environment"])
    mismatch = version_mismatch(job["python_version"], job["cloudpickle_version"])
    if mismatch:
        # Another attempt on a VM like this one would fail the same way: final.
        return {**_failed(mismatch, cached=job["blob_hash"] in functions), "final": True}
    func = functions.get(job["blob_hash"])
    if func is None:
        if job["blob"] is None:
            known = (unloadable or {}).get(job["blob_hash"])
            return known or _failed(
                f"function blob {job['blob_hash']} was not sent to the worker", cached=False
            )
        try:
            func = load_function(job["blob"])
        except _SourceImportError as exc:
            # The user's module raised while being imported: report it as their error.
            failure = {"status": "failed", "error": describe_exception(exc.cause), "cached": False}
            if unloadable is not None:
                unloadable[job["blob_hash"]] = failure
            return failure
        except Exception as exc:
            failure = {
                **_failed(_unpickle_message(f"function {job['function']}", exc, job), cached=False),
                "final": True,
            }
            if unloadable is not None:
                unloadable[job["blob_hash"]] = failure
            return failure
        functions[job["blob_hash"]] = func
    try:
        args, kwargs = cloudpickle.loads(job["input"])
    except Exception as exc:
        return _failed(_unpickle_message(f"input of {job['function']}", exc, job), cached=True)
    try:
        value = func(*args, **kwargs)
        if inspect.iscoroutine(value):  # an ``async def`` function: run it to its end
            value = asyncio.run(value)
    except BaseException as exc:  # SystemExit from user code is a failure too
        return {"status": "failed", "error": describe_exception(exc), "cached": True}
    if job.get("kind") == "job" and inspect.isasyncgen(value):
        value = _iterate(value)
    if job.get("kind") == "job" and inspect.isgenerator(value):
        return drive(value, progress.offer if progress is not None else lambda _s, _d: None)
    try:
        output = cloudpickle.dumps(value, protocol=5)
    except Exception as exc:
        return {"status": "failed", "error": _unpicklable_result(value, exc), "cached": True}
    return {"status": "succeeded", "output": output, "cached": True}


class _SourceImportError(Exception):
    """Importing the user's module (or finding the function in it) raised ``cause``."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


# The folder of the app source this worker imports from, and the variables the last job
# set that the worker did not start with.
_source_path: str | None = None
_job_keys: set[str] = set()
_start_env = dict(os.environ)


def load_function(blob: bytes) -> Callable[..., Any]:
    """The function a blob stands for.

    A cloudpickle is unpickled. An import reference (JSON with ``path``, ``module`` and
    ``qualname``) imports ``module`` from the source folder ``path`` (which becomes the
    first entry of ``sys.path`` and the working directory) and walks ``qualname``; a
    decorated handle gives its plain function. A worker that switches to another source
    folder (a new version of the app) first forgets every module imported from the old one.

    Raises:
        _SourceImportError: the module raised while importing, or lacks the name.
        Exception: the pickle could not be loaded.
    """
    if blob[:1] != b"{":
        return cloudpickle.loads(blob)
    ref = json.loads(blob)
    _use_source(ref["path"])
    try:
        obj: Any = importlib.import_module(ref["module"])
        for part in ref["qualname"].split("."):
            obj = getattr(obj, part)
    except BaseException as exc:  # SystemExit at import is the user's failure too
        raise _SourceImportError(exc) from exc
    return getattr(obj, "_func", None) or obj


_environment: str | None = None


def use_environment(path: str) -> None:
    """Put the environment folder ``path`` (installed packages) first on ``sys.path``,
    its ``.pth`` files applied, and on ``PYTHONPATH`` for the processes user code starts.
    Done once per worker: the agent gives a worker jobs of one environment only."""
    global _environment
    if _environment == path:
        return
    if _environment is not None:
        raise RuntimeError(f"this worker runs environment {_environment}, not {path}")
    import site

    site.addsitedir(path)  # appends, and processes .pth files
    with contextlib.suppress(ValueError):
        sys.path.remove(path)
    sys.path.insert(0, path)
    importlib.invalidate_caches()
    current = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = path + (os.pathsep + current if current else "")
    _start_env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    _environment = path


def _use_source(path: str) -> None:
    global _source_path
    if path == _source_path:
        return
    old = _source_path
    if old is not None:
        prefix = old + os.sep
        for name, module in list(sys.modules.items()):
            file = getattr(module, "__file__", None) or ""
            if file.startswith(prefix):
                del sys.modules[name]
        with contextlib.suppress(ValueError):
            sys.path.remove(old)
    sys.path.insert(0, path)
    importlib.invalidate_caches()
    os.chdir(path)
    _source_path = path


def _set_env(env: dict[str, str]) -> None:
    """Make the job's variables the process's: set the changed ones (consecutive calls
    of one function differ in one or two), and undo what an earlier job of another
    function set, so one function's variables and secrets never reach another's calls."""
    environ = os.environ
    for key in _job_keys - env.keys():
        if key in _start_env:
            environ[key] = _start_env[key]
        else:
            environ.pop(key, None)
    for key, value in env.items():
        if environ.get(key) != value:
            environ[key] = value
    _job_keys.clear()
    _job_keys.update(env)


def drive(generator: Generator[Any, None, Any], offer: Callable[[int, bytes], None]) -> dict:
    """Run a job's generator to its end, offering each yielded value, pickled, as progress.

    The job's result is the generator's return value when it returns something other than
    None, else the last value it yielded (None if it yielded nothing). A value that cannot
    be pickled fails the job, naming the step; so does an exception, with the progress
    offered so far kept.
    """
    seq = 0
    last: bytes | None = None
    while True:
        try:
            value = next(generator)
        except StopIteration as stop:
            returned = stop.value
            break
        except BaseException as exc:
            # Described here, so the traceback starts at the generator's frame.
            return {"status": "failed", "error": describe_exception(exc), "cached": True}
        seq += 1
        try:
            last = cloudpickle.dumps(value, protocol=5)
        except Exception as exc:
            with contextlib.suppress(BaseException):
                generator.close()  # runs the generator's finally blocks
            return {
                "status": "failed",
                "error": _unpicklable(value, exc, what=f"the value yielded at step {seq}"),
                "cached": True,
            }
        offer(seq, last)
    if returned is None:
        return {"status": "succeeded", "output": last, "cached": True}
    try:
        output = cloudpickle.dumps(returned, protocol=5)
    except Exception as exc:
        return {"status": "failed", "error": _unpicklable_result(returned, exc), "cached": True}
    return {"status": "succeeded", "output": output, "cached": True}


def _iterate(agen: AsyncGenerator[Any, None]) -> Generator[Any, None, None]:
    """An async generator (an ``async def`` job that yields) as a plain generator, each
    step run on an event loop of its own thread; closing it closes the async one."""
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                value = loop.run_until_complete(agen.__anext__())
            except StopAsyncIteration:
                return
            yield value
    finally:
        with contextlib.suppress(BaseException):
            loop.run_until_complete(agen.aclose())
        loop.close()


def version_mismatch(python_version: str, cloudpickle_version: str) -> str | None:
    """A message when the pickling side's major.minor versions differ from this interpreter's."""
    here_py = platform.python_version()
    here_cp = cloudpickle.__version__
    if _major_minor(python_version) == _major_minor(here_py) and _major_minor(
        cloudpickle_version
    ) == _major_minor(here_cp):
        return None
    return (
        f"pickled with Python {_major_minor(python_version)} / cloudpickle {cloudpickle_version}, "
        f"this VM runs Python {_major_minor(here_py)} / cloudpickle {here_cp}; "
        "deploy from a matching Python"
    )


def describe_exception(exc: BaseException) -> dict:
    """The fields of :class:`multinode.wire.CallError` for an exception raised by user code.

    The traceback starts at the user's function (the worker's own frame is left out);
    ``pickled`` is None when the exception does not survive a pickle round trip.
    """
    tb = exc.__traceback__
    # Leave out the worker's own frames, and the event loop's for ``async def`` code.
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_NOT_USER_CODE):
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    return {
        "type": _qualified_name(type(exc)),
        "message": str(exc),
        "traceback": text,
        "pickled": pickle_exception(exc),
    }


def pickle_exception(exc: BaseException) -> bytes | None:
    """``exc`` pickled so that unpickling gives an exception of its class with its
    attributes, or None when even that fails.

    Pickle rebuilds an exception by calling its class with ``exc.args``, which breaks for
    the common ``__init__(self, url, status)`` that passes a message to ``super()``; such
    an exception is pickled as its class, ``args`` and ``__dict__`` instead, and rebuilt
    without calling ``__init__`` (:func:`multinode._serialization.restore_exception`).
    """
    try:
        pickled = cloudpickle.dumps(exc, protocol=5)
        cloudpickle.loads(pickled)
        return pickled
    except Exception:
        pass
    try:
        from multinode._serialization import restore_exception

        kind = type(exc)

        class ByState(cloudpickle.CloudPickler):
            def reducer_override(self, obj: Any) -> Any:
                if type(obj) is kind:
                    return restore_exception, (kind, obj.args, dict(vars(obj)))
                return super().reducer_override(obj)

        buffer = io.BytesIO()
        ByState(buffer, protocol=5).dump(exc)
        cloudpickle.loads(buffer.getvalue())
        return buffer.getvalue()
    except Exception:
        return None


class OutputCapture:
    """Sends what the process writes to fds 1 and 2 to the agent, line by line.

    Both fds are replaced with pipes, so output from C code and child processes is caught
    too, and ``sys.stdout``/``sys.stderr`` are rebuilt line-buffered on top of them so a
    ``print`` reaches the agent as soon as its line ends. A reader thread forwards lines as
    they arrive, tagged with the attempt running at the time.
    """

    def __init__(self, send: Callable[[tuple], None]) -> None:
        self._send = send
        # Held while reading a pipe and sending what was read, so end() can drain the
        # pipes knowing nothing read earlier is still on its way.
        self._lock = threading.Lock()
        self._attempt: str | None = None
        self._streams: dict[int, _Stream] = {}
        for name, fd in (("stdout", 1), ("stderr", 2)):
            read_fd, write_fd = os.pipe()
            os.dup2(write_fd, fd)
            os.close(write_fd)
            os.set_blocking(read_fd, False)
            self._streams[read_fd] = _Stream(name)
        self.stdout = _line_buffered(1)
        self.stderr = _line_buffered(2)
        sys.stdout = sys.__stdout__ = self.stdout
        sys.stderr = sys.__stderr__ = self.stderr
        threading.Thread(target=self._pump, name="mn-output", daemon=True).start()

    def begin(self, attempt_id: str) -> None:
        """Attribute output from now on to ``attempt_id``."""
        sys.stdout, sys.stderr = self.stdout, self.stderr  # undo a replacement by the last job
        with self._lock:
            self._attempt = attempt_id

    def end(self) -> None:
        """Send every byte written so far (partial last lines included), then detach."""
        for stream in (sys.stdout, sys.stderr, self.stdout, self.stderr):
            # A broken replacement left by user code must not lose the result.
            with contextlib.suppress(Exception):
                stream.flush()
        with self._lock:
            lines: list[tuple] = []
            for fd, stream in self._streams.items():
                lines += stream.feed(_read_available(fd), self._attempt, final=True)
            self._forward(lines)
            self._attempt = None

    def _pump(self) -> None:
        fds = list(self._streams)
        while True:
            readable, _, _ = select.select(fds, [], [])
            with self._lock:
                lines: list[tuple] = []
                for fd in readable:
                    lines += self._streams[fd].feed(_read_available(fd), self._attempt)
                self._forward(lines)

    def _forward(self, lines: list[tuple]) -> None:
        if lines:
            self._send(("logs", lines))


class _Stream:
    """Turns the bytes of one fd into complete lines (UTF-8, invalid bytes replaced)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._decoder = getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""

    def feed(self, data: bytes, attempt_id: str | None, *, final: bool = False) -> list[tuple]:
        text = self._partial + self._decoder.decode(data, final=final)
        *complete, self._partial = text.split("\n")
        if self._partial and (final or len(self._partial) > _MAX_PARTIAL):
            complete.append(self._partial)
            self._partial = ""
        now = time.time()
        return [(attempt_id, self.name, line, now) for line in complete]


def _read_available(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _line_buffered(fd: int) -> io.TextIOWrapper:
    raw = io.FileIO(fd, "w", closefd=False)
    return io.TextIOWrapper(raw, encoding="utf-8", errors="backslashreplace", line_buffering=True)


def _failed(reason: str, *, cached: bool) -> dict:
    return {"status": "failed", "reason": reason, "cached": cached}


def _unpickle_message(what: str, exc: Exception, job: dict) -> str:
    cause = (
        f"module {exc.name!r} is not installed on this VM"
        if isinstance(exc, ModuleNotFoundError)
        else "a Python or cloudpickle version different from the one that pickled it"
    )
    return (
        f"cannot unpickle the {what}: {type(exc).__name__}: {exc}; the likely cause is {cause} "
        f"(pickled with Python {job['python_version']} / cloudpickle {job['cloudpickle_version']}, "
        f"this VM runs Python {platform.python_version()} / cloudpickle {cloudpickle.__version__})"
    )


def _unpicklable_result(value: Any, exc: Exception) -> dict:
    return _unpicklable(value, exc, what="the return value", fix="return plain data instead")


def _unpicklable(
    value: Any, exc: Exception, *, what: str, fix: str = "yield plain data instead"
) -> dict:
    type_name = _qualified_name(type(value))
    message = f"{what}, of type {type_name}, could not be pickled: {exc}; {fix}"
    try:
        from multinode.errors import SerializationError

        error: BaseException = SerializationError(message, details={"type": type_name})
    except ImportError:  # the SDK is always installed with the agent, but stay usable
        error = TypeError(message)
    described = describe_exception(exc)
    return {
        "type": _qualified_name(type(error)),
        "message": message,
        "traceback": described["traceback"],
        "pickled": _dumps_or_none(error),
    }


def _dumps_or_none(obj: Any) -> bytes | None:
    try:
        return cloudpickle.dumps(obj, protocol=5)
    except Exception:
        return None


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])
