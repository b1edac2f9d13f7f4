"""Background processes of the local cloud and the LocalStack launcher.

Each process runs in a process group of its own, with its output in a log file, and is
recorded by pid together with a *marker* (a string of its command line) so a later
command signals it only while the pid still runs what was started (pids are reused).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from multinode.errors import MultinodeError

STOP_GRACE_S = 10.0
# A user's AWS profile or session must not redirect a local process to a real account.
_UNSAFE_AWS_ENV = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


class LocalCloudError(MultinodeError):
    """A local process could not be started or stopped; the message says what to do."""

    code = "local_cloud"


def spawn(
    args: Sequence[str], *, env: Mapping[str, str], log: Path, cwd: Path | None = None
) -> int:
    """Start ``args`` in a new session (its own process group), output appended to ``log``.

    ``env`` is added to this process's environment, minus AWS profile and session
    variables. Returns the pid, which is also the process group id.
    """
    full_env = {**os.environ, **env}
    for key in _UNSAFE_AWS_ENV:
        full_env.pop(key, None)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    return proc.pid


def wait_healthy(
    name: str, pid: int, url: str, log: Path, *, timeout: float, error=LocalCloudError
) -> None:
    """Return once ``url`` answers (any status below 500).

    Raises:
        error: the process exited first, or ``url`` did not answer within ``timeout``
            seconds; the message carries the last lines of ``log``.
    """
    deadline = time.monotonic() + timeout
    while not answers(url):
        fail_if_exited(name, pid, log, error=error)
        if time.monotonic() > deadline:
            raise error(
                f"{name} did not answer on {url} within {timeout:.0f}s."
                f" Last log lines ({log}):\n{tail(log)}"
            )
        time.sleep(0.05)


def fail_if_exited(name: str, pid: int, log: Path, *, error=LocalCloudError) -> None:
    """Raise ``error`` with the log's last lines when our child ``pid`` has exited."""
    with contextlib.suppress(ChildProcessError):
        done, code = os.waitpid(pid, os.WNOHANG)
        if done:
            raise error(
                f"{name} exited with code {code >> 8} while starting."
                f" Last log lines ({log}):\n{tail(log)}"
            )


def refuse_taken_port(port: int, what: str, hint: str, *, error=LocalCloudError) -> None:
    """Raise ``error`` when something already listens on 127.0.0.1:``port``.

    ``hint`` says how to choose another port (for example ``MN_LOCAL_PORT=...``).
    """
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            raise error(
                f"port {port} on 127.0.0.1 is already taken, so {what} cannot listen there;"
                f" stop what uses it or choose another port with {hint}"
            )


def answers(url: str) -> bool:
    """Whether ``url`` answers HTTP with a status below 500 within a second."""
    try:
        return httpx.get(url, timeout=1.0).status_code < 500
    except httpx.HTTPError:
        return False


def tail(log: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of ``log``, or ``(no log)``."""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_group(pid: int, *, grace: float = STOP_GRACE_S) -> None:
    """SIGTERM the process group ``pid``, then SIGKILL it if it outlives ``grace`` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    # Children of the group may outlive its leader: the group gets SIGKILL either way.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    while alive(pid) and time.monotonic() < deadline + grace:
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (reaping it first when it is our finished child)."""
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has finished


def is_ours(proc: Mapping) -> bool:
    """Guard against pid reuse: only a live process still running what we started.

    ``proc`` is a recorded ``{"pid": ..., "marker": ...}``.
    """
    try:
        cmdline = Path(f"/proc/{proc['pid']}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return alive(proc["pid"]) and proc["marker"].encode() in cmdline
