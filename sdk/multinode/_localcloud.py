"""The embedded local cloud: what `mn up` starts and `mn down` stops.

Three background processes, each in its own process group, recorded with their pids in
``$MN_HOME/local/state.json`` (which the SDK's config reads to find the control plane):

- the AWS endpoint on 127.0.0.1:4566 — LocalStack when one already answers there (not
  ours: never stopped), otherwise moto's server, started here. Beside LocalStack, moto's
  server is started on another port for DynamoDB alone (LocalStack without Docker has no
  DynamoDB) and every process is told so with boto3's standard
  ``AWS_ENDPOINT_URL_DYNAMODB``, unless the caller already set that variable;
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
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

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

__all__ = ["LocalCloudConfig", "LocalCloudError", "down", "read_state", "status", "up"]

STATE_FORMAT = 1
DEFAULT_AWS_PORT = 4566
DEFAULT_CONTROL_PLANE_PORT = 7600
DEFAULT_GATEWAY_PORT = 7700
CLUSTER = "local"
LOCAL_AMI = "ami-12c6146b"  # an image the emulator lists
_START_TIMEOUT_S = 60.0
# Dummy credentials for the emulator; a user's real AWS credentials never reach it.
_LOCAL_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "multinode-local",
    "AWS_SECRET_ACCESS_KEY": "multinode-local",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


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
    # The services' gateway: http://127.0.0.1:<port>/<app>/<service>/ for every service.
    gateway_port: int = field(
        default_factory=lambda: int(os.environ.get("MN_LOCAL_GATEWAY_PORT", DEFAULT_GATEWAY_PORT))
    )
    database_url: str | None = None  # default: SQLite under home/local
    server_env: Mapping[str, str] = field(default_factory=dict)  # extra MN_SERVER_* settings
    use_existing_aws: bool = True  # use LocalStack when one answers on aws_port
    # Beside LocalStack, the DynamoDB emulator's port (default: a free one).
    dynamodb_port: int | None = field(
        default_factory=lambda: int(os.environ.get("MN_LOCAL_DYNAMODB_PORT", 0)) or None
    )
    cluster: str = CLUSTER  # the mn:cluster tag: local clouds sharing one LocalStack differ

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
        down_now = [s.name for s in _statuses(state) if not s.running] if state else []
        if state and down_now == ["controlplane"] and "controlplane_env" in state:
            # Only the control plane died: start it again on the same port, database and
            # key. Its VMs keep running and its calls carry on where they were.
            _start_controlplane(state, Path(state["logs"]), echo=echo)
            _write_state(config, state)
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
    gateway = f"http://127.0.0.1:{config.gateway_port}"
    state: dict = {
        "format": STATE_FORMAT,
        "url": url,
        "gateway": gateway,
        "api_key": "mnk_" + secrets.token_urlsafe(32),
        "aws_endpoint": aws_url,
        "aws": "moto",
        "dynamodb_endpoint": None,
        "cluster": config.cluster,
        "logs": str(logs),
        "started_at": datetime.now(timezone.utc).isoformat(),
        "processes": {},
        "vm_state_dir": str(config.dir / "vms"),
    }
    try:
        if config.use_existing_aws and answers(f"{aws_url}/_localstack/health"):
            state["aws"] = "localstack"
            echo(f"AWS endpoint: LocalStack already answering on {aws_url}")
            state["dynamodb_endpoint"] = _dynamodb_beside_localstack(config, state, echo=echo)
        else:
            refuse_taken_port(config.aws_port, "the AWS emulator", "MN_LOCAL_AWS_PORT=...")
            _start_emulator(state, "aws", config.aws_port, logs / "aws.log")
            echo(f"AWS endpoint: embedded emulator on {aws_url}")
        # Always explicit, so an AWS_ENDPOINT_URL_DYNAMODB of the caller's never leaks in.
        aws_env = _aws_env(aws_url, state["dynamodb_endpoint"] or aws_url)

        refuse_taken_port(config.control_plane_port, "the control plane", "MN_LOCAL_PORT=...")
        refuse_taken_port(config.gateway_port, "the gateway", "MN_LOCAL_GATEWAY_PORT=...")
        db = config.database_url or f"sqlite:///{config.dir / 'controlplane.db'}"
        server_env = {
            **aws_env,
            "MN_HOME": str(config.home),
            "MN_SERVER_DATABASE_URL": db,
            "MN_SERVER_HOST": "127.0.0.1",
            "MN_SERVER_PORT": str(config.control_plane_port),
            "MN_SERVER_PUBLIC_URL": url,
            "MN_SERVER_GATEWAY_URL": gateway,
            "MN_SERVER_API_KEY": state["api_key"],
            "MN_SERVER_CLUSTER": config.cluster,
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
            **(
                {"MN_SERVER_DICT_DYNAMODB_ENDPOINT_URL": state["dynamodb_endpoint"]}
                if state["dynamodb_endpoint"]
                else {}
            ),
            **config.server_env,
        }
        state["controlplane_env"] = server_env
        _start_controlplane(state, logs, echo=echo)
        gateway_env = {"MN_GATEWAY_API_KEY": state["api_key"]}
        args = ["-m", "multinode_controlplane.gateway", "--port", str(config.gateway_port)]
        log = logs / "gateway.log"
        pid = _record(state, "gateway", [*args, "--control-plane", url], gateway_env, log)
        wait_healthy("gateway", pid, f"{gateway}/_gateway/health", log, timeout=_START_TIMEOUT_S)
        echo(f"gateway: {gateway}/<app>/<service>/")

        runner_env = {
            **aws_env,
            "MN_VM_CLUSTER": config.cluster,
            "MN_VM_STATE_DIR": state["vm_state_dir"],
            # The URLs VMs are given name these ports on 127.0.0.1; in a namespace of its
            # own, a VM reaches them through the runner's relay (which also relays the
            # loopback AWS_ENDPOINT_URL_* ports it inherits, DynamoDB's among them).
            "MN_VM_RELAY_PORTS": f"{config.control_plane_port},{config.aws_port}",
        }
        log = logs / "vmrunner.log"
        _record(state, "vmrunner", ["-m", "multinode_provisioner.vmrunner"], runner_env, log)
        state["vms"] = _wait_for_runner(state, log)
        echo(f"VM runner: {state['vms']} (logs in {logs})")
    except BaseException:
        _stop_all(state, echo=lambda _msg: None)
        raise
    _write_state(config, state)
    return state


def _dynamodb_beside_localstack(config: LocalCloudConfig, state: dict, *, echo) -> str:
    """The DynamoDB endpoint to use next to LocalStack: the caller's
    ``AWS_ENDPOINT_URL_DYNAMODB`` when set, else the embedded emulator started here.

    LocalStack's own DynamoDB needs Java and a download of DynamoDB Local, which a
    LocalStack running without Docker often lacks; the emulator is a dependency already.
    """
    given = os.environ.get("AWS_ENDPOINT_URL_DYNAMODB")
    if given:
        echo(f"DynamoDB: {given} (AWS_ENDPOINT_URL_DYNAMODB)")
        return given
    port = config.dynamodb_port or free_port()
    refuse_taken_port(port, "the DynamoDB emulator", "MN_LOCAL_DYNAMODB_PORT=...")
    _start_emulator(state, "dynamodb", port, Path(state["logs"]) / "dynamodb.log")
    endpoint = f"http://127.0.0.1:{port}"
    echo(
        f"DynamoDB: embedded emulator on {endpoint} (LocalStack without Docker has no"
        " DynamoDB; set AWS_ENDPOINT_URL_DYNAMODB to use another)"
    )
    return endpoint


def _start_controlplane(state: dict, logs: Path, *, echo) -> None:
    """The control plane, with the environment recorded in ``state``, once it is healthy."""
    env = state["controlplane_env"]
    log = logs / "controlplane.log"
    pid = _record(state, "controlplane", ["-m", "multinode_controlplane"], env, log)
    wait_healthy("controlplane", pid, f"{state['url']}/v1/health", log, timeout=_START_TIMEOUT_S)
    echo(f"control plane: {state['url']} ({env['MN_SERVER_DATABASE_URL'].split(':', 1)[0]})")


def _start_emulator(state: dict, name: str, port: int, log: Path) -> None:
    """The emulator (moto's server, see :mod:`multinode_provisioner.emulator`) on
    127.0.0.1:``port``, recorded as ``name``, once it answers."""
    args = ["-m", "multinode_provisioner.emulator", "-H", "127.0.0.1", "-p", str(port)]
    pid = _record(state, name, args, _LOCAL_AWS_ENV, log)
    url = f"http://127.0.0.1:{port}/moto-api/"
    wait_healthy(name, pid, url, log, timeout=_START_TIMEOUT_S)


def _record(
    state: dict,
    name: str,
    args: list[str],
    env: Mapping[str, str],
    log: Path,
    *,
    marker: str | None = None,
) -> int:
    """Start ``python args...`` and record it in ``state`` under ``name``; returns its pid."""
    pid = spawn([sys.executable, *args], env=env, log=log)
    state["processes"][name] = {"pid": pid, "marker": marker or args[1], "log": str(log)}
    return pid


def _wait_for_runner(state: dict, log: Path) -> str:
    """Wait until the VM runner has written its record; return how it runs VMs.

    The runner has no HTTP port: it is ready once ``runner.json`` in its state dir names
    its pid, which it writes after setting up its network (or choosing plain processes).
    """
    pid = state["processes"]["vmrunner"]["pid"]
    record = Path(state["vm_state_dir"]) / "runner.json"
    deadline = time.monotonic() + _START_TIMEOUT_S
    while True:
        fail_if_exited("vmrunner", pid, log)
        with contextlib.suppress(OSError, ValueError):
            content = json.loads(record.read_text())
            if content.get("pid") == pid:
                return str(content.get("summary", "running"))
        if time.monotonic() > deadline:
            raise LocalCloudError(
                f"the VM runner did not start within {_START_TIMEOUT_S:.0f}s."
                f" Last log lines ({log}):\n{tail(log)}"
            )
        time.sleep(0.05)


def _aws_env(aws_url: str, dynamodb_url: str) -> dict[str, str]:
    """Dummy credentials and the endpoints, as boto3 reads them from the environment."""
    return {
        **_LOCAL_AWS_ENV,
        "AWS_ENDPOINT_URL": aws_url,
        "AWS_ENDPOINT_URL_DYNAMODB": dynamodb_url,
    }


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------- stopping


# The control plane goes first (it stops launching), then the VM runner (it stops every VM
# process it booted), then the emulators they both talk to.
_STOP_ORDER = ("gateway", "controlplane", "vmrunner", "aws", "dynamodb")


def _stop_all(state: dict, *, echo) -> None:
    for name in _STOP_ORDER:
        proc = state.get("processes", {}).get(name)
        if proc and is_ours(proc):
            stop_group(proc["pid"])
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


def _statuses(state: dict) -> list[ComponentStatus]:
    out = []
    if state.get("aws") == "localstack":
        out.append(
            ComponentStatus(
                "aws",
                None,
                answers(f"{state['aws_endpoint']}/_localstack/health"),
                f"LocalStack at {state['aws_endpoint']} (not managed)",
            )
        )
    for name in ("aws", "dynamodb", "controlplane", "gateway", "vmrunner"):
        proc = state.get("processes", {}).get(name)
        if proc is None:
            continue
        detail = {
            "aws": f"emulator at {state['aws_endpoint']}",
            "dynamodb": f"emulator for DynamoDB at {state.get('dynamodb_endpoint')}",
            "controlplane": state["url"],
            "gateway": f"{state.get('gateway')}/<app>/<service>/",
            "vmrunner": state.get("vms", "boots instances as local processes"),
        }[name]
        out.append(ComponentStatus(name, proc["pid"], is_ours(proc), detail))
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
