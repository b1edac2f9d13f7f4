"""Functions the tests pickle and run in real worker processes (pickled by value)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path


class CustomError(Exception):
    """A user-defined exception type, rebuilt on the caller's side."""


class UnpicklableError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def add(a: int, b: int) -> int:
    return a + b


def noop() -> None:
    return None


def getpid() -> int:
    return os.getpid()


def env(*names: str) -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in names}


def fail(message: str) -> None:
    _inner(message)


def _inner(message: str) -> None:
    raise CustomError(message)


def fail_unpicklable() -> None:
    raise UnpicklableError("cannot travel")


def return_lock() -> threading.Lock:
    return threading.Lock()


def print_then_wait(release: str, *, bound_s: float = 30.0) -> str:
    """Print to both streams (Python and fd level), then block until ``release`` exists."""
    print("started")
    print("to stderr", file=sys.stderr)
    os.write(1, b"raw fd line\n")
    deadline = time.monotonic() + bound_s
    while not Path(release).exists():
        if time.monotonic() > deadline:
            raise TimeoutError("never released")
        time.sleep(0.01)
    sys.stdout.write("no newline at the end")
    return "released"


def announce_then_sleep(seconds: float, *, ignore_sigterm: bool = False) -> None:
    if ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("sleeping", flush=True)
    time.sleep(seconds)


def exit_hard(code: int) -> None:
    os._exit(code)


# ---------------------------------------------------------------------------- jobs


def count_to(n: int):  # type: ignore[no-untyped-def]
    yield from range(1, n + 1)


def count_and_return(n: int):  # type: ignore[no-untyped-def]
    yield from range(n)
    return f"{n} done"


def yield_twice_then_wait(release: str, *, bound_s: float = 30.0):  # type: ignore[no-untyped-def]
    """Yield two values at once, then block until ``release`` exists."""
    yield "first"
    yield "second"
    deadline = time.monotonic() + bound_s
    while not Path(release).exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def yield_fast(seconds: float):  # type: ignore[no-untyped-def]
    """Yield increasing integers as fast as possible for ``seconds``."""
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        i += 1
        yield i


def yield_unpicklable(marker: str):  # type: ignore[no-untyped-def]
    try:
        yield 1
        yield threading.Lock()
        yield 3
    finally:
        Path(marker).write_text("closed")


def yield_then_fail():  # type: ignore[no-untyped-def]
    yield "half"
    raise CustomError("broke at half")


async def async_add(a: int, b: int) -> int:
    import asyncio

    await asyncio.sleep(0)
    return a + b


async def async_fail(message: str) -> None:
    import asyncio

    await asyncio.sleep(0)
    raise CustomError(message)


async def async_count_to(n: int):  # type: ignore[no-untyped-def]
    import asyncio

    for i in range(1, n + 1):
        await asyncio.sleep(0)
        yield i


class ScrapeError(Exception):
    """An exception whose __init__ takes other arguments than its message."""

    def __init__(self, url: str, status: int) -> None:
        super().__init__(f"{url} answered {status}")
        self.url = url
        self.status = status


def scrape(url: str) -> None:
    raise ScrapeError(url, 503)


def read_env(*names: str) -> dict:
    import os

    return {name: os.environ.get(name) for name in names}


def from_environment() -> str:
    import onlyhere  # only in the environment the test serves

    return onlyhere.WHERE
