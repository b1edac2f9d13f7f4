"""The local cloud's VM runner: turns emulated EC2 instances into local processes.

It watches the EC2 API (whatever boto3's endpoint resolves to, normally the emulator on
``AWS_ENDPOINT_URL``) for instances tagged with its cluster and, for each one that is
pending or running, does what a real VM would do on first boot: fetch its user-data and
run it. When the API says the instance is shutting down, stopped, terminated or gone, the
runner stops the process group. When the process ends on its own, the runner terminates
the instance, as EC2 does for an instance whose shutdown behaviour is ``terminate``.

A VM is a process group (session) with its files under ``<state dir>/<instance id>/``:
``user-data.sh`` and ``console.log``. Where it lives is ``vmhost``'s business: as root, in
a network namespace of its own with a CPU quota; otherwise on the host's network as a
plain process. Its environment says which (``MN_VM_ISOLATED``) and where other machines
reach it (``MN_VM_ADDRESS``). Processes are only ever signalled by the ids the runner
started, or as members of cgroups and namespaces it made; nothing is found by name.

Run it with ``python -m multinode_provisioner.vmrunner``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from botocore.exceptions import ClientError

from multinode_provisioner.aws import make_ec2_client
from multinode_provisioner.compute import TAG_CLUSTER
from multinode_provisioner.settings import DEFAULT_CLUSTER
from multinode_provisioner.vmhost import MODES, IsolationError, clean_up, open_isolation

log = logging.getLogger(__name__)

BOOTABLE_STATES = frozenset({"pending", "running"})
_QUIET_S = 10.0  # seconds without a change after which the runner polls EC2 less often
_NOT_FOUND_CODES = frozenset({"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"})


@dataclass(frozen=True)
class ReconcileResult:
    """What one :meth:`VMRunner.run_once` pass did, by instance id.

    Attributes:
        booted: instances whose user-data was started.
        stopped: instances whose processes were stopped because EC2 ended the instance.
        exited: instances whose processes ended on their own and were terminated in EC2.
    """

    booted: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    exited: list[str] = field(default_factory=list)


@dataclass
class _VM:
    instance_id: str
    instance_type: str
    directory: Path
    proc: subprocess.Popen[bytes] | None  # None: the instance had no user-data to run
    exit_seen: bool = False  # its exit was handled once; the group is not signalled again


class VMRunner:
    """Reconciles EC2 instances of one cluster with local processes.

    Creating a runner sets up its isolation (bridge, cgroup parent, relay, record);
    :meth:`close` (or leaving a ``with`` block) stops its VMs and removes all of it.
    Not thread-safe: call :meth:`run_once`, :meth:`run_forever`, :meth:`stop_all` and
    :meth:`close` from one thread.
    """

    def __init__(
        self,
        client: Any,
        *,
        cluster: str,
        state_dir: Path,
        interval: float = 0.1,
        idle_interval: float = 0.25,
        grace: float = 5.0,
        python: str = sys.executable,
        isolation: str = "auto",
        relay_ports: tuple[int, ...] | list[int] = (),
    ) -> None:
        """Create a runner.

        Args:
            client: a boto3 EC2 client.
            cluster: value of the ``mn:cluster`` tag whose instances this runner boots.
            state_dir: where each VM's ``user-data.sh`` and ``console.log`` go.
            interval: seconds between passes of :meth:`run_forever` while instances come
                and go (for ``_QUIET_S`` after a pass booted, stopped or lost a VM)...
            idle_interval: ...and once nothing has changed for that long: each pass lists
                every instance of the cluster, which costs an emulator milliseconds of CPU
                per instance, so a steady cloud is asked less often.
            grace: seconds between SIGTERM and SIGKILL when stopping a VM.
            python: interpreter whose directory is put first on the VMs' ``PATH`` and
                which is exported as ``MN_PYTHON``.
            isolation: ``auto``, ``namespaces`` or ``processes`` (see ``vmhost``).
            relay_ports: host loopback ports that VMs in namespaces reach at
                ``127.0.0.1:<port>`` (the control plane, the AWS endpoint).

        Raises:
            IsolationError: ``namespaces`` cannot be had, or another live runner uses
                ``state_dir``.
        """
        self.client = client
        self.cluster = cluster
        self.state_dir = Path(state_dir)
        self.interval = interval
        self.idle_interval = max(idle_interval, interval)
        self.grace = grace
        self.python = python
        self._vms: dict[str, _VM] = {}
        # Instances booted once already: user-data runs only on first boot, as on EC2.
        self._booted_once: set[str] = set()
        self.isolation = open_isolation(isolation, self.state_dir, relay_ports=relay_ports)

    def __enter__(self) -> VMRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def isolated(self) -> bool:
        """True when VMs get their own network namespaces."""
        return self.isolation.mode == "namespaces"

    def address(self, instance_id: str) -> str | None:
        """Where the host and other VMs reach ``instance_id`` (its ``MN_VM_ADDRESS``)."""
        return self.isolation.address(instance_id) if instance_id in self._vms else None

    @property
    def pids(self) -> dict[str, int]:
        """Process id of every VM process started and not yet reaped and forgotten, by instance id."""
        return {i: vm.proc.pid for i, vm in self._vms.items() if vm.proc is not None}

    def run_once(self) -> ReconcileResult:
        """One reconcile pass: stop what EC2 ended, terminate what exited, boot what is new.

        Raises:
            botocore errors from listing instances; nothing has changed in that case.
        """
        states = self._list()
        result = ReconcileResult()
        self._stop_ended(states, result)
        self._terminate_exited(result)
        self._boot_new(states, result)
        self._booted_once &= set(states)  # forget instances EC2 no longer reports
        return result

    def run_forever(self, stop_event: threading.Event) -> None:
        """Reconcile every ``interval`` seconds (``idle_interval`` once quiet) until
        ``stop_event`` is set, then :meth:`close`.

        A failing pass (e.g. the emulator restarting) is logged and the loop goes on.
        """
        changed = time.monotonic()
        try:
            while not stop_event.is_set():
                try:
                    result = self.run_once()
                    if result.booted or result.stopped or result.exited:
                        changed = time.monotonic()
                except Exception:  # keep serving the other VMs; the next pass retries
                    log.exception("VM runner pass failed")
                quiet = time.monotonic() - changed >= _QUIET_S
                stop_event.wait(self.idle_interval if quiet else self.interval)
        finally:
            self.close()

    def stop_all(self) -> list[str]:
        """Stop every VM this runner started and release its namespace; returns their ids."""
        vms = list(self._vms.values())
        self._stop(vms)
        for vm in vms:
            self._forget(vm)
        return [vm.instance_id for vm in vms]

    def close(self) -> None:
        """Stop every VM, then remove the bridge, cgroups, relay and record. Idempotent."""
        self.stop_all()
        self.isolation.close()

    # -- helpers -----------------------------------------------------------------------

    def _stop_ended(self, states: dict[str, tuple[str, str]], result: ReconcileResult) -> None:
        ended = [
            vm
            for i, vm in self._vms.items()
            if states.get(i, ("gone", ""))[0] not in BOOTABLE_STATES
        ]
        self._stop(ended)
        for vm in ended:
            self._forget(vm)
            result.stopped.append(vm.instance_id)

    def _terminate_exited(self, result: ReconcileResult) -> None:
        for vm in list(self._vms.values()):
            if vm.proc is None or (code := vm.proc.poll()) is None:
                continue
            if not vm.exit_seen:
                vm.exit_seen = True
                # Kill leftovers a daemonizing script may have forked into its group.
                self._kill_group(vm, signal.SIGKILL)
                log.info("VM %s exited with %s; terminating the instance", vm.instance_id, code)
            if self._terminate(vm.instance_id):
                self._forget(vm)
                result.exited.append(vm.instance_id)

    def _boot_new(self, states: dict[str, tuple[str, str]], result: ReconcileResult) -> None:
        for instance_id, (state, instance_type) in states.items():
            if state not in BOOTABLE_STATES or instance_id in self._booted_once:
                continue
            if self._boot(instance_id, instance_type):
                result.booted.append(instance_id)

    def _list(self) -> dict[str, tuple[str, str]]:
        """``{instance id: (state, instance type)}`` for every instance of the cluster."""
        out: dict[str, tuple[str, str]] = {}
        paginator = self.client.get_paginator("describe_instances")
        for page in paginator.paginate(
            Filters=[{"Name": f"tag:{TAG_CLUSTER}", "Values": [self.cluster]}]
        ):
            for reservation in page.get("Reservations", []):
                for raw in reservation.get("Instances", []):
                    out[raw["InstanceId"]] = (
                        raw.get("State", {}).get("Name", ""),
                        raw.get("InstanceType", ""),
                    )
        return out

    def _boot(self, instance_id: str, instance_type: str) -> bool:
        try:
            answer = self.client.describe_instance_attribute(
                InstanceId=instance_id, Attribute="userData"
            )
        except ClientError:
            log.warning("could not read user-data of %s; will retry", instance_id, exc_info=True)
            return False
        encoded = answer.get("UserData", {}).get("Value") or ""
        directory = self.state_dir / instance_id
        directory.mkdir(parents=True, exist_ok=True)
        if not encoded:
            log.info("VM %s has no user-data; it idles like a bare VM", instance_id)
            self._booted_once.add(instance_id)
            self._vms[instance_id] = _VM(instance_id, instance_type, directory, None)
            return True
        script = directory / "user-data.sh"
        script.write_bytes(base64.b64decode(encoded))
        try:
            placement = self.isolation.place(instance_id, instance_type, script)
        except Exception:  # e.g. no address left: the instance waits, the next pass retries
            log.exception("could not prepare VM %s; will retry", instance_id)
            return False
        env = dict(os.environ)
        env["PATH"] = os.path.dirname(self.python) + os.pathsep + env.get("PATH", os.defpath)
        env["MN_PYTHON"] = self.python
        env["MN_VM_INSTANCE_ID"] = instance_id
        env["MN_VM_INSTANCE_TYPE"] = instance_type
        env.update(placement.env)
        try:
            with open(directory / "console.log", "ab") as console:
                proc = subprocess.Popen(
                    placement.argv,
                    cwd=directory,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=console,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: stopping it reaches its children
                )
        except OSError:
            self.isolation.release(instance_id)
            raise
        self._booted_once.add(instance_id)
        self._vms[instance_id] = _VM(instance_id, instance_type, directory, proc)
        self.isolation.started(instance_id, proc.pid)
        log.info(
            "booted VM %s (%s) as pid %d at %s",
            instance_id,
            instance_type,
            proc.pid,
            placement.env["MN_VM_ADDRESS"],
        )
        return True

    def _stop(self, vms: list[_VM]) -> None:
        """SIGTERM every VM's group, then SIGKILL those still alive after one shared grace."""
        # A leader reaped earlier had its group cleaned when its exit was first seen, and
        # its id may have been reused since, so only unreaped leaders get signalled.
        running: list[_VM] = []
        for vm in vms:
            if vm.proc is None:
                continue
            if vm.proc.poll() is None:
                running.append(vm)
                self._kill_group(vm, signal.SIGTERM)
            elif not vm.exit_seen:
                vm.exit_seen = True
                self._kill_group(vm, signal.SIGKILL)
        deadline = time.monotonic() + self.grace
        for vm in running:
            assert vm.proc is not None
            try:
                vm.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning(
                    "VM %s ignored SIGTERM for %.1fs; killing it", vm.instance_id, self.grace
                )
                self._kill_group(vm, signal.SIGKILL)
                vm.proc.wait()
            self._kill_group(vm, signal.SIGKILL)  # whatever else is left in its group
            log.info("stopped VM %s", vm.instance_id)

    def _kill_group(self, vm: _VM, sig: signal.Signals) -> None:
        """Signal the VM's process group and whatever else runs in its cgroup or namespace."""
        if vm.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(vm.proc.pid, sig)
        self.isolation.signal(vm.instance_id, sig)

    def _forget(self, vm: _VM) -> None:
        """Drop a stopped VM and remove its namespace, cgroup and relay."""
        self._vms.pop(vm.instance_id, None)
        self.isolation.release(vm.instance_id)

    def _terminate(self, instance_id: str) -> bool:
        try:
            self.client.terminate_instances(InstanceIds=[instance_id])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _NOT_FOUND_CODES:
                return True
            log.warning("could not terminate %s; will retry", instance_id, exc_info=True)
            return False
        return True


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m multinode_provisioner.vmrunner``; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    state_dir = Path(args.state_dir or Path(tempfile.gettempdir()) / "multinode-vms" / args.cluster)
    if args.clean_up:
        try:
            removed = clean_up(state_dir)
        except IsolationError as exc:
            print(f"multinode VM runner: {exc}", file=sys.stderr, flush=True)
            return 1
        print(f"removed {', '.join(removed) or 'nothing'} left in {state_dir}", flush=True)
        return 0
    relay_ports = sorted(set(args.relay_port) | loopback_ports(os.environ))
    client = make_ec2_client(region=args.region, endpoint_url=args.endpoint_url)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        runner = VMRunner(
            client,
            cluster=args.cluster,
            state_dir=state_dir,
            interval=args.interval,
            idle_interval=args.idle_interval,
            grace=args.grace,
            isolation=args.isolation,
            relay_ports=relay_ports,
        )
    except IsolationError as exc:
        print(f"multinode VM runner: {exc}", file=sys.stderr, flush=True)
        return 1
    print(
        f"multinode VM runner: {runner.isolation.summary};"
        f" cluster {args.cluster!r}, state in {state_dir}",
        flush=True,
    )
    runner.run_forever(stop)
    return 0


def loopback_ports(env: Mapping[str, str]) -> set[int]:
    """Ports of the loopback AWS endpoints in ``env`` (``AWS_ENDPOINT_URL[_<SERVICE>]``).

    VMs inherit the runner's environment, so these are URLs they are given.
    """
    ports = set()
    for name, value in env.items():
        if name == "AWS_ENDPOINT_URL" or name.startswith("AWS_ENDPOINT_URL_"):
            url = urlsplit(value)
            with contextlib.suppress(ValueError):
                if url.hostname in ("127.0.0.1", "localhost") and url.port:
                    ports.add(url.port)
    return ports


def _ports(text: str) -> list[int]:
    return [int(p) for p in text.replace(",", " ").split()]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m multinode_provisioner.vmrunner", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--cluster",
        default=os.environ.get("MN_VM_CLUSTER", DEFAULT_CLUSTER),
        help="mn:cluster tag to serve (env MN_VM_CLUSTER)",
    )
    p.add_argument(
        "--state-dir",
        default=os.environ.get("MN_VM_STATE_DIR"),
        help="where VM files go (env MN_VM_STATE_DIR; default <tmp>/multinode-vms/<cluster>)",
    )
    p.add_argument(
        "--isolation",
        choices=MODES,
        default=os.environ.get("MN_VM_ISOLATION", "auto"),
        help="network namespaces, plain processes, or namespaces when possible"
        " (env MN_VM_ISOLATION; default auto)",
    )
    p.add_argument(
        "--relay-port",
        type=int,
        action="append",
        default=_ports(os.environ.get("MN_VM_RELAY_PORTS", "")),
        help="host port VMs in namespaces reach at 127.0.0.1:<port>; repeatable (env"
        " MN_VM_RELAY_PORTS, comma-separated). Loopback AWS_ENDPOINT_URL* ports are added",
    )
    p.add_argument(
        "--clean-up",
        action="store_true",
        help="remove what a stopped runner of --state-dir left (namespaces, bridge, cgroups,"
        " VM processes) and exit",
    )
    p.add_argument("--interval", type=float, default=0.1, help="seconds between passes")
    p.add_argument(
        "--idle-interval",
        type=float,
        default=0.25,
        help="seconds between passes once no VM has started or stopped for 10 s",
    )
    p.add_argument("--grace", type=float, default=5.0, help="seconds between SIGTERM and SIGKILL")
    p.add_argument(
        "--endpoint-url", default=None, help="EC2 endpoint; default: boto3's (AWS_ENDPOINT_URL)"
    )
    p.add_argument("--region", default=None, help="region; default: boto3's, else us-east-1")
    return p


if __name__ == "__main__":
    sys.exit(main())
