"""The local cloud's VM runner: turns emulated EC2 instances into local processes.

It watches the EC2 API (whatever boto3's endpoint resolves to, normally the emulator on
``AWS_ENDPOINT_URL``) for instances tagged with its cluster and, for each one that is
pending or running, does what a real VM would do on first boot: fetch its user-data and
run it. When the API says the instance is shutting down, stopped, terminated or gone, the
runner stops the process group. When the process ends on its own, the runner terminates
the instance, as EC2 does for an instance whose shutdown behaviour is ``terminate``.

A VM is a plain process in its own process group (session), with its files under
``<state dir>/<instance id>/``: ``user-data.sh`` and ``console.log``. Processes are only
ever signalled by the ids the runner started; nothing is found by name.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from multinode_provisioner.aws import make_ec2_client
from multinode_provisioner.compute import TAG_CLUSTER
from multinode_provisioner.settings import DEFAULT_CLUSTER

log = logging.getLogger(__name__)

BOOTABLE_STATES = frozenset({"pending", "running"})
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

    Not thread-safe: call :meth:`run_once`, :meth:`run_forever` and :meth:`stop_all` from
    one thread.
    """

    def __init__(
        self,
        client: Any,
        *,
        cluster: str,
        state_dir: Path,
        interval: float = 0.1,
        grace: float = 5.0,
        python: str = sys.executable,
    ) -> None:
        """Create a runner.

        Args:
            client: a boto3 EC2 client.
            cluster: value of the ``mn:cluster`` tag whose instances this runner boots.
            state_dir: where each VM's ``user-data.sh`` and ``console.log`` go.
            interval: seconds between passes of :meth:`run_forever`.
            grace: seconds between SIGTERM and SIGKILL when stopping a VM.
            python: interpreter whose directory is put first on the VMs' ``PATH`` and
                which is exported as ``MN_PYTHON``.
        """
        self.client = client
        self.cluster = cluster
        self.state_dir = Path(state_dir)
        self.interval = interval
        self.grace = grace
        self.python = python
        self._vms: dict[str, _VM] = {}
        # Instances booted once already: user-data runs only on first boot, as on EC2.
        self._booted_once: set[str] = set()

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
        """Reconcile every ``interval`` seconds until ``stop_event`` is set, then stop all VMs.

        A failing pass (e.g. the emulator restarting) is logged and the loop goes on.
        """
        try:
            while not stop_event.is_set():
                try:
                    self.run_once()
                except Exception:  # keep serving the other VMs; the next pass retries
                    log.exception("VM runner pass failed")
                stop_event.wait(self.interval)
        finally:
            self.stop_all()

    def stop_all(self) -> list[str]:
        """Stop every VM process this runner started; returns their instance ids."""
        vms = list(self._vms.values())
        self._stop(vms)
        self._vms.clear()
        return [vm.instance_id for vm in vms]

    # -- helpers -----------------------------------------------------------------------

    def _stop_ended(self, states: dict[str, tuple[str, str]], result: ReconcileResult) -> None:
        ended = [
            vm
            for i, vm in self._vms.items()
            if states.get(i, ("gone", ""))[0] not in BOOTABLE_STATES
        ]
        self._stop(ended)
        for vm in ended:
            del self._vms[vm.instance_id]
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
                del self._vms[vm.instance_id]
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
        self._booted_once.add(instance_id)
        if not encoded:
            log.info("VM %s has no user-data; it idles like a bare VM", instance_id)
            self._vms[instance_id] = _VM(instance_id, instance_type, directory, None)
            return True
        script = directory / "user-data.sh"
        script.write_bytes(base64.b64decode(encoded))
        env = dict(os.environ)
        env["PATH"] = os.path.dirname(self.python) + os.pathsep + env.get("PATH", os.defpath)
        env["MN_PYTHON"] = self.python
        env["MN_VM_INSTANCE_ID"] = instance_id
        env["MN_VM_INSTANCE_TYPE"] = instance_type
        # A plain process shares the host's ports and address.
        env["MN_VM_ADDRESS"] = "127.0.0.1"
        env["MN_VM_ISOLATED"] = "0"
        with open(directory / "console.log", "ab") as console:
            proc = subprocess.Popen(
                ["bash", str(script)],
                cwd=directory,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so stopping it reaches its children
            )
        self._vms[instance_id] = _VM(instance_id, instance_type, directory, proc)
        log.info("booted VM %s (%s) as pid %d", instance_id, instance_type, proc.pid)
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

    @staticmethod
    def _kill_group(vm: _VM, sig: signal.Signals) -> None:
        if vm.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(vm.proc.pid, sig)

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
    client = make_ec2_client(region=args.region, endpoint_url=args.endpoint_url)
    runner = VMRunner(
        client, cluster=args.cluster, state_dir=state_dir, interval=args.interval, grace=args.grace
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(
        f"multinode VM runner: running VMs as plain processes (no network namespaces or CPU quotas yet); "
        f"cluster {args.cluster!r}, state in {state_dir}",
        flush=True,
    )
    runner.run_forever(stop)
    return 0


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
    p.add_argument("--interval", type=float, default=0.1, help="seconds between passes")
    p.add_argument("--grace", type=float, default=5.0, help="seconds between SIGTERM and SIGKILL")
    p.add_argument(
        "--endpoint-url", default=None, help="EC2 endpoint; default: boto3's (AWS_ENDPOINT_URL)"
    )
    p.add_argument("--region", default=None, help="region; default: boto3's, else us-east-1")
    return p


if __name__ == "__main__":
    sys.exit(main())
