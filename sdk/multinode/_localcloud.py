"""The embedded local cloud: what `mn up` starts and `mn down` stops.

Three background processes, each in its own process group, recorded with their pids in
``$MN_HOME/local/state.json`` (which the SDK's config reads to find the control plane):

- the AWS endpoint on 127.0.0.1:4566 — LocalStack when one already answers there (not
  ours: never stopped), otherwise moto's server, started here;
- the control plane on SQLite under ``$MN_HOME/local``;
- the VM runner, which boots every instance the control plane launches as a local process
  from its user-data, and stops it when the EC2 API says it is terminated. As root, each VM
  gets its own network namespace and a CPU quota, and the runner relays the control plane's
  and the AWS endpoint's ports into it; otherwise VMs are plain processes and `mn up` says
  so. Whatever a runner killed with SIGKILL left is removed by `mn down` (and the next
  runner) from the record in ``$MN_HOME/local/vms/runner.json``.

This module starts the others by module name (``python -m ...``) and never imports them,
so the SDK stays free of the heavy side.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import httpx

from multinode.errors import MultinodeError

STATE_FORMAT = 1
DEFAULT_AWS_PORT = 4566
DEFAULT_CONTROL_PLANE_PORT = 7600
CLUSTER = "local"
LOCAL_AMI = "ami-12c6146b"  # an image the emulator lists
_START_TIMEOUT_S = 60.0
_STOP_GRACE_S = 10.0
# Dummy credentials for the emulator; a user's real AWS credentials never reach it.
_LOCAL_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "multinode-local",
    "AWS_SECRET_ACCESS_KEY": "multinode-local",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


class LocalCloudError(MultinodeError):
    """The local cloud could not be started or stopped; the message says what to do."""

    code = "local_cloud"


@dataclass(frozen=True)
class LocalCloudConfig:
    """Where the local cloud lives and listens. Tests pass their own; `mn up` the defaults."""

    home: Path = field(
        default_factory=lambda: Path(os.environ.get("MN_HOME", "~/.multinode")).expanduser()
    )
    aws_port: int = field(
        default_factory=lambda: int(os.environ.get("MN_LOCAL_AWS_PORT", DEFAULT_AWS_PORT))
    )
    control_plane_port: int = field(
        default_factory=lambda: int(os.environ.get("MN_LOCAL_PORT", DEFAULT_CONTROL_PLANE_PORT))
    )
    database_url: str | None = None  # default: SQLite under home/local
    server_env: Mapping[str, str] = field(default_factory=dict)  # extra MN_SERVER_* settings
    use_existing_aws: bool = True  # use LocalStack when one answers on aws_port

    @property
    def dir(self) -> Path:
        return self.home / "local"

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"


@dataclass
class ComponentStatus:
    name: str
    pid: int | None
    running: bool
    detail: str


def up(config: LocalCloudConfig | None = None, *, echo=print) -> dict:
    """Start the local cloud in the background and return its state.

    Harmless when it is already up: the running one is kept and returned. On any failure,
    whatever this call started is stopped again and :class:`LocalCloudError` says why,
    with the last lines of the failing component's log.
    """
    config = config or LocalCloudConfig()
    config.dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(config):
        state = _read_state(config)
        if state and all(s.running for s in _statuses(state)):
            echo(f"local cloud already up: control plane {state['url']}")
            return state
        if state:
            _stop_all(state, echo=echo)  # a half-dead previous run: clear it first
        return _start(config, echo=echo)


def down(config: LocalCloudConfig | None = None, *, echo=print) -> bool:
    """Stop every process `up` started and remove the state file.

    Returns False when nothing was running. Only processes recorded in the state file,
    whose command line still matches what was started, are signalled.
    """
    config = config or LocalCloudConfig()
    with _exclusive(config):
        state = _read_state(config)
        if not state:
            echo("local cloud is not running")
            return False
        _stop_all(state, echo=echo)
        config.state_file.unlink(missing_ok=True)
        echo("local cloud stopped")
        return True


def status(config: LocalCloudConfig | None = None) -> list[ComponentStatus]:
    """What is up, one entry per component; empty when the local cloud was never started."""
    config = config or LocalCloudConfig()
    state = _read_state(config)
    return _statuses(state) if state else []


def read_state(config: LocalCloudConfig | None = None) -> dict | None:
    """The state file's content, or None when the local cloud is not up."""
    return _read_state(config or LocalCloudConfig())


# ---------------------------------------------------------------------------- starting


def _start(config: LocalCloudConfig, *, echo) -> dict:
    logs = config.dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    aws_url = f"http://127.0.0.1:{config.aws_port}"
    url = f"http://127.0.0.1:{config.control_plane_port}"
    state: dict = {
        "format": STATE_FORMAT,
        "url": url,
        "api_key": "mnk_" + secrets.token_urlsafe(32),
        "aws_endpoint": aws_url,
        "aws": "moto",
        "logs": str(logs),
        "started_at": datetime.now(timezone.utc).isoformat(),
        "processes": {},
        "vm_state_dir": str(config.dir / "vms"),
    }
    try:
        if config.use_existing_aws and _answers(f"{aws_url}/_localstack/health"):
            state["aws"] = "localstack"
            echo(f"AWS endpoint: LocalStack already answering on {aws_url}")
        else:
            _refuse_taken_port(config.aws_port, "the AWS emulator", "MN_LOCAL_AWS_PORT")
            args = [
                sys.executable,
                "-m",
                "multinode_provisioner.emulator",
                "-H",
                "127.0.0.1",
                "-p",
                str(config.aws_port),
            ]
            _spawn(
                state,
                "aws",
                args,
                env=_aws_env(aws_url),
                log=logs / "aws.log",
                marker="multinode_provisioner.emulator",
            )
            _wait_healthy(state, "aws", f"{aws_url}/moto-api/", logs / "aws.log")
            echo(f"AWS endpoint: embedded emulator on {aws_url}")

        _refuse_taken_port(config.control_plane_port, "the control plane", "MN_LOCAL_PORT")
        db = config.database_url or f"sqlite:///{config.dir / 'controlplane.db'}"
        server_env = {
            **_aws_env(aws_url),
            "MN_HOME": str(config.home),
            "MN_SERVER_DATABASE_URL": db,
            "MN_SERVER_HOST": "127.0.0.1",
            "MN_SERVER_PORT": str(config.control_plane_port),
            "MN_SERVER_PUBLIC_URL": url,
            "MN_SERVER_API_KEY": state["api_key"],
            "MN_SERVER_CLUSTER": CLUSTER,
            "MN_SERVER_COMPUTE": "aws",
            # Any id does for the emulator; the VM runner boots from user-data, not an image.
            "MN_AWS_AMI_ID": LOCAL_AMI,
            # The local VMs keep their function cache with the rest of the local cloud.
            "MN_SERVER_AGENT_EXTRA_ENV": json.dumps(
                {"MN_AGENT_CACHE_DIR": str(config.dir / "agent-cache")}
            ),
            # mn.get_dict: create the table, bucket and role now; processes reach the emulator.
            "MN_SERVER_DICT_PREPARE_AT_STARTUP": "true",
            "MN_SERVER_DICT_ENDPOINT_URL": aws_url,
            **config.server_env,
        }
        args = [sys.executable, "-m", "multinode_controlplane"]
        _spawn(
            state,
            "controlplane",
            args,
            env=server_env,
            log=logs / "controlplane.log",
            marker="multinode_controlplane",
        )
        _wait_healthy(state, "controlplane", f"{url}/v1/health", logs / "controlplane.log")
        echo(f"control plane: {url} ({db.split(':', 1)[0]})")

        runner_env = {
            **_aws_env(aws_url),
            "MN_VM_CLUSTER": CLUSTER,
            "MN_VM_STATE_DIR": state["vm_state_dir"],
            # The URLs VMs are given name these ports on 127.0.0.1; in a namespace of its
            # own, a VM reaches them through the runner's relay.
            "MN_VM_RELAY_PORTS": f"{config.control_plane_port},{config.aws_port}",
        }
        args = [sys.executable, "-m", "multinode_provisioner.vmrunner"]
        _spawn(
            state,
            "vmrunner",
            args,
            env=runner_env,
            log=logs / "vmrunner.log",
            marker="multinode_provisioner.vmrunner",
        )
        state["vms"] = _wait_for_runner(state, logs / "vmrunner.log")
        echo(f"VM runner: {state['vms']} (logs in {logs})")
    except BaseException:
        _stop_all(state, echo=lambda _msg: None)
        raise
    _write_state(config, state)
    return state


def _aws_env(aws_url: str) -> dict[str, str]:
    return {**_LOCAL_AWS_ENV, "AWS_ENDPOINT_URL": aws_url}


def _spawn(
    state: dict, name: str, args: list[str], *, env: Mapping[str, str], log: Path, marker: str
) -> None:
    full_env = {**os.environ, **env}
    # A user's AWS profile must not redirect the local cloud to a real account.
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        full_env.pop(key, None)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,
            close_fds=True,
        )
    state["processes"][name] = {"pid": proc.pid, "marker": marker, "log": str(log)}


def _wait_healthy(state: dict, name: str, url: str, log: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not _answers(url):
        _fail_if_exited(state, name, log)
        if time.monotonic() > deadline:
            raise LocalCloudError(
                f"{name} did not answer on {url} within {_START_TIMEOUT_S:.0f}s."
                f" Last log lines ({log}):\n{_tail(log)}"
            )
        time.sleep(0.05)


def _wait_for_runner(state: dict, log: Path) -> str:
    """Wait until the VM runner has written its record; return how it runs VMs.

    The runner has no HTTP port: it is ready once ``runner.json`` in its state dir names
    its pid, which it writes after setting up its network (or choosing plain processes).
    """
    pid = state["processes"]["vmrunner"]["pid"]
    record = Path(state["vm_state_dir"]) / "runner.json"
    deadline = time.monotonic() + _START_TIMEOUT_S
    while True:
        _fail_if_exited(state, "vmrunner", log)
        with contextlib.suppress(OSError, ValueError):
            content = json.loads(record.read_text())
            if content.get("pid") == pid:
                return str(content.get("summary", "running"))
        if time.monotonic() > deadline:
            raise LocalCloudError(
                f"the VM runner did not start within {_START_TIMEOUT_S:.0f}s."
                f" Last log lines ({log}):\n{_tail(log)}"
            )
        time.sleep(0.05)


def _fail_if_exited(state: dict, name: str, log: Path) -> None:
    pid = state["processes"][name]["pid"]
    with contextlib.suppress(ChildProcessError):
        done, code = os.waitpid(pid, os.WNOHANG)
        if done:
            raise LocalCloudError(
                f"{name} exited with code {code >> 8} while starting."
                f" Last log lines ({log}):\n{_tail(log)}"
            )


def _refuse_taken_port(port: int, what: str, env_name: str) -> None:
    import socket

    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            raise LocalCloudError(
                f"port {port} on 127.0.0.1 is already taken, so {what} cannot listen there;"
                f" stop what uses it or choose another port with {env_name}=..."
            )


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code < 500
    except httpx.HTTPError:
        return False


def _tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------------------- stopping


# The control plane goes first (it stops launching), then the VM runner (it stops every VM
# process it booted), then the emulator they both talk to.
_STOP_ORDER = ("controlplane", "vmrunner", "aws")


def _stop_all(state: dict, *, echo) -> None:
    for name in _STOP_ORDER:
        proc = state.get("processes", {}).get(name)
        if proc and _is_ours(proc):
            _stop_group(proc["pid"])
            echo(f"stopped {name} (pid {proc['pid']})")
    _clean_up_vms(state, echo=echo)


def _clean_up_vms(state: dict, *, echo) -> None:
    """Remove what a VM runner that did not stop cleanly (SIGKILL, crash) left behind.

    A runner that stopped cleanly removed its record; one that did not left it, naming
    the VM processes, namespaces, bridge and cgroups to remove.
    """
    vm_dir = state.get("vm_state_dir")
    if not vm_dir or not (Path(vm_dir) / "runner.json").exists():
        return
    args = [sys.executable, "-m", "multinode_provisioner.vmrunner", "--clean-up"]
    try:
        done = subprocess.run(
            [*args, "--state-dir", vm_dir],
            capture_output=True,
            text=True,
            timeout=_START_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        echo(f"cleaning up the VMs in {vm_dir} took too long; run `mn down` again")
        return
    echo((done.stdout + done.stderr).strip())


def _stop_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_GRACE_S
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        while _alive(pid) and time.monotonic() < deadline + _STOP_GRACE_S:
            time.sleep(0.05)


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has finished


def _is_ours(proc: Mapping) -> bool:
    """Guard against pid reuse: only a live process still running what we started."""
    try:
        cmdline = Path(f"/proc/{proc['pid']}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return _alive(proc["pid"]) and proc["marker"].encode() in cmdline


def _statuses(state: dict) -> list[ComponentStatus]:
    out = []
    if state.get("aws") == "localstack":
        out.append(
            ComponentStatus(
                "aws",
                None,
                _answers(f"{state['aws_endpoint']}/_localstack/health"),
                f"LocalStack at {state['aws_endpoint']} (not managed)",
            )
        )
    for name in ("aws", "controlplane", "vmrunner"):
        proc = state.get("processes", {}).get(name)
        if proc is None:
            continue
        detail = {
            "aws": f"emulator at {state['aws_endpoint']}",
            "controlplane": state["url"],
            "vmrunner": state.get("vms", "boots instances as local processes"),
        }[name]
        out.append(ComponentStatus(name, proc["pid"], _is_ours(proc), detail))
    return out


# ---------------------------------------------------------------------------- state file


@contextlib.contextmanager
def _exclusive(config: LocalCloudConfig) -> Iterator[None]:
    """One `mn up`/`mn down` at a time per home directory."""
    with open(config.dir / "up.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_state(config: LocalCloudConfig) -> dict | None:
    try:
        state = json.loads(config.state_file.read_text())
    except (OSError, ValueError):
        return None
    return state if state.get("format") == STATE_FORMAT else None


def _write_state(config: LocalCloudConfig, state: dict) -> None:
    tmp = config.state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.chmod(tmp, 0o600)  # it holds the local API key
    tmp.replace(config.state_file)
