"""LocalStack without Docker: `mn localstack up|down|status`.

Runs LocalStack in host mode (``python -m localstack.runtime.main``) from a virtual
environment of its own (``make localstack-venv`` builds ``.venv-localstack``; LocalStack's
pinned dependencies would clash with the project's), in a process group of its own, with
its data, log and pid under ``$MN_HOME/localstack``. It is ready when
``GET /_localstack/health`` answers and the ``ready.d`` init hooks (``localstack/init`` in
the repository, the same ones the docker-compose set-up mounts) have run.

LocalStack's DynamoDB needs Java and a download of DynamoDB Local, which a host without
Docker often cannot have: the local cloud (``mn up``) routes DynamoDB to its embedded
emulator with ``AWS_ENDPOINT_URL_DYNAMODB`` instead, and the init hooks skip the table.

This module never imports LocalStack; it starts it by module name, like ``_localcloud``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from multinode._processes import (
    LocalCloudError,
    answers,
    fail_if_exited,
    is_ours,
    refuse_taken_port,
    spawn,
    stop_group,
    tail,
    wait_healthy,
)

STATE_FORMAT = 1
DEFAULT_PORT = 4566
VENV_NAME = ".venv-localstack"
_MARKER = "localstack.runtime.main"
_STOP_GRACE_S = 3.0
_REPO = Path(__file__).resolve().parents[2]  # the checkout, for an editable install


class LocalStackError(LocalCloudError):
    """LocalStack could not be started or stopped; the message says what to do."""

    code = "localstack"


@dataclass(frozen=True)
class LocalStackConfig:
    """Where the launcher keeps LocalStack and where it listens.

    ``mn localstack up`` takes the defaults (``MN_HOME``, ``MN_LOCALSTACK_PORT``); tests
    pass a temporary home and a free port.
    """

    home: Path = field(
        default_factory=lambda: Path(os.environ.get("MN_HOME", "~/.multinode")).expanduser()
    )
    port: int = field(
        default_factory=lambda: int(os.environ.get("MN_LOCALSTACK_PORT", DEFAULT_PORT))
    )
    python: Path | None = None  # LocalStack's interpreter; None: find_python()
    init_dir: Path | None = field(default_factory=lambda: default_init_dir())
    start_timeout_s: float = 120.0

    @property
    def dir(self) -> Path:
        return self.home / "localstack"

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    @property
    def log(self) -> Path:
        return self.dir / "localstack.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def default_init_dir() -> Path | None:
    """``MN_LOCALSTACK_INIT_DIR``, else the repository's ``localstack/init`` if present."""
    given = os.environ.get("MN_LOCALSTACK_INIT_DIR")
    if given:
        return Path(given)
    candidate = _REPO / "localstack" / "init"
    return candidate if candidate.is_dir() else None


def find_python() -> Path:
    """The Python of LocalStack's virtual environment.

    Looked for in order: ``MN_LOCALSTACK_PYTHON``; ``.venv-localstack`` in the current
    directory; ``.venv-localstack`` in the checkout this package runs from.

    Raises:
        LocalStackError: none exists; the message says how to build it.
    """
    given = os.environ.get("MN_LOCALSTACK_PYTHON")
    if given:
        if not Path(given).is_file():
            raise LocalStackError(
                f"MN_LOCALSTACK_PYTHON={given} does not exist; point it at the python of a"
                " virtual environment with localstack-core[runtime] installed"
            )
        return Path(given)
    candidates = [Path.cwd() / VENV_NAME / "bin" / "python", _REPO / VENV_NAME / "bin" / "python"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise LocalStackError(
        f"LocalStack's virtual environment was not found (looked for {candidates[0]} and"
        f" {candidates[1]}); build it with `make localstack-venv` in the repository, or set"
        " MN_LOCALSTACK_PYTHON to a python with localstack-core[runtime] installed"
    )


def up(config: LocalStackConfig | None = None, *, echo=print) -> dict:
    """Start LocalStack in the background and return its state once it is ready.

    Harmless when this launcher's LocalStack already runs for ``config.home``: that one
    is returned. Whatever fails, no LocalStack process of this call is left behind.

    Raises:
        LocalStackError: the port is taken (by another LocalStack, or anything else);
            LocalStack exited while starting, an init hook failed, or its health check
            or init hooks did not complete in time (the message carries the last lines
            of its log).
    """
    config = config or LocalStackConfig()
    state = read_state(config)
    if state and is_ours(state) and answers(f"{state['endpoint']}/_localstack/health"):
        echo(f"LocalStack already up on {state['endpoint']} (pid {state['pid']})")
        return state
    if state:
        _stop(state)  # a half-dead previous run: clear it first
        config.state_file.unlink(missing_ok=True)
    python = config.python or find_python()
    if answers(f"{config.endpoint}/_localstack/health"):
        raise LocalStackError(
            f"another LocalStack (not started by this launcher, perhaps Docker's) already"
            f" answers on {config.endpoint}; `mn up` uses it as it is, or choose another"
            " port for this one with MN_LOCALSTACK_PORT=..."
        )
    refuse_taken_port(config.port, "LocalStack", "MN_LOCALSTACK_PORT=...", error=LocalStackError)
    config.dir.mkdir(parents=True, exist_ok=True)
    root = config.dir / "filesystem"
    _install_hooks(config.init_dir, root)
    (config.dir / "tmp").mkdir(exist_ok=True)
    log = config.log
    log.unlink(missing_ok=True)  # the tail shown on failure is this run's
    pid = spawn(
        [str(python), "-m", _MARKER], env=_environment(config, root), log=log, cwd=config.dir
    )
    state = {
        "format": STATE_FORMAT,
        "pid": pid,
        "marker": _MARKER,
        "endpoint": config.endpoint,
        "port": config.port,
        "log": str(log),
    }
    # Recorded at once, so `down` finds it even if this process dies while waiting.
    _write_state(config, state)
    try:
        deadline = time.monotonic() + config.start_timeout_s
        wait_healthy(
            "LocalStack",
            pid,
            f"{config.endpoint}/_localstack/health",
            log,
            timeout=config.start_timeout_s,
            error=LocalStackError,
        )
        _wait_init_hooks(config, pid, deadline)
    except BaseException:
        stop_group(pid, grace=_STOP_GRACE_S)  # ours for certain: we just started it
        config.state_file.unlink(missing_ok=True)
        raise
    echo(f"LocalStack {_version(config.endpoint)} on {config.endpoint} (pid {pid}, log {log})")
    echo(
        "DynamoDB: not served by this LocalStack (it needs Java and DynamoDB Local);"
        " `mn up` routes it to the embedded emulator with AWS_ENDPOINT_URL_DYNAMODB"
    )
    return state


def down(config: LocalStackConfig | None = None, *, echo=print) -> bool:
    """Stop the LocalStack this launcher started (its whole process group).

    Returns False when none was running. Only the recorded pid, while it still runs
    LocalStack, is signalled.
    """
    config = config or LocalStackConfig()
    state = read_state(config)
    if not state:
        echo("LocalStack (launcher) is not running")
        return False
    stopped = _stop(state)
    config.state_file.unlink(missing_ok=True)
    echo(f"stopped LocalStack (pid {state['pid']})" if stopped else "LocalStack was not running")
    return stopped


def status(config: LocalStackConfig | None = None) -> dict | None:
    """The recorded state with ``running`` and ``healthy`` added; None when never started."""
    config = config or LocalStackConfig()
    state = read_state(config)
    if not state:
        return None
    running = is_ours(state)
    healthy = running and answers(f"{state['endpoint']}/_localstack/health")
    return {**state, "running": running, "healthy": healthy}


def read_state(config: LocalStackConfig | None = None) -> dict | None:
    """The state file's content, or None."""
    config = config or LocalStackConfig()
    try:
        state = json.loads(config.state_file.read_text())
    except (OSError, ValueError):
        return None
    return state if state.get("format") == STATE_FORMAT else None


@contextlib.contextmanager
def running(config: LocalStackConfig) -> Iterator[dict]:
    """LocalStack for the duration of a block (tests, benchmarks); stopped after."""
    state = up(config, echo=lambda _m: None)
    try:
        yield state
    finally:
        down(config, echo=lambda _m: None)


# ---------------------------------------------------------------------------- internals


def _environment(config: LocalStackConfig, root: Path) -> dict[str, str]:
    """LocalStack's settings: loopback only, its files under ``root``, nothing fetched."""
    return {
        "GATEWAY_LISTEN": f"127.0.0.1:{config.port}",
        "LOCALSTACK_HOST": f"127.0.0.1:{config.port}",
        # Inside a container LocalStack assumes it is its own image and uses /var/lib and
        # /etc/localstack, shared by every run on the machine: host mode it is.
        "OVERRIDE_IN_DOCKER": "0",
        # Host mode keeps its files under FILESYSTEM_ROOT (init hooks in etc/localstack/init);
        # the others default to the user's home and /tmp, shared by every run.
        "FILESYSTEM_ROOT": str(root),
        "LOCALSTACK_VOLUME_DIR": str(config.dir / "volume"),
        "CONFIG_DIR": str(config.dir / "config"),
        "TMPDIR": str(config.dir / "tmp"),
        # No DNS server (it would bind port 53), no certificate download, no analytics.
        "DNS_ADDRESS": "0",
        "SKIP_SSL_CERT_DOWNLOAD": "1",
        "DISABLE_EVENTS": "1",
        # Read by the init hook: DynamoDB is served by the local cloud's emulator instead.
        "MN_LOCALSTACK_SKIP_DYNAMODB": "1",
    }


def _install_hooks(init_dir: Path | None, root: Path) -> None:
    """Copy the init hooks where host-mode LocalStack looks for them."""
    target = root / "etc" / "localstack" / "init"
    shutil.rmtree(target, ignore_errors=True)
    if init_dir is not None:
        shutil.copytree(init_dir, target)


def _wait_init_hooks(config: LocalStackConfig, pid: int, deadline: float) -> None:
    """Return once every ``ready.d`` hook has run; raise when one failed or time ran out."""
    url = f"{config.endpoint}/_localstack/init/ready"
    while True:
        fail_if_exited("LocalStack", pid, config.log, error=LocalStackError)
        try:
            body = httpx.get(url, timeout=2.0).json()
        except (httpx.HTTPError, ValueError):
            body = {}
        failed = [s["name"] for s in body.get("scripts", []) if s.get("state") == "ERROR"]
        if failed:
            raise LocalStackError(
                f"LocalStack's init hook {', '.join(failed)} failed."
                f" Last log lines ({config.log}):\n{tail(config.log)}"
            )
        if body.get("completed"):
            return
        if time.monotonic() > deadline:
            raise LocalStackError(
                f"LocalStack's init hooks did not complete within {config.start_timeout_s:.0f}s."
                f" Last log lines ({config.log}):\n{tail(config.log)}"
            )
        time.sleep(0.1)


def _version(endpoint: str) -> str:
    try:
        return str(httpx.get(f"{endpoint}/_localstack/health", timeout=2.0).json()["version"])
    except (httpx.HTTPError, ValueError, KeyError):
        return "(version unknown)"


def _stop(state: dict) -> bool:
    if not is_ours(state):
        return False
    # LocalStack waits up to 10 s on its server's thread pool after SIGTERM; it keeps
    # nothing that needs a clean exit (no persistence), so it gets less.
    stop_group(state["pid"], grace=_STOP_GRACE_S)
    return True


def _write_state(config: LocalStackConfig, state: dict) -> None:
    tmp = config.state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(config.state_file)
