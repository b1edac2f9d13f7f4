"""The local cloud's VMs as `mn up` makes them: in network namespaces when run as root
(as here and in CI), cleaned up by `mn down` even after the VM runner was killed."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
from pathlib import Path

import pytest

import multinode as mn
from multinode import _localcloud
from multinode_provisioner.aws import EC2Compute
from multinode_provisioner.compute import LaunchRequest
from multinode_provisioner.settings import LOCAL_AMI, AwsSettings
from tests.e2e.conftest import E2E_SERVER_ENV
from tests.provisioner.conftest import CAN_NAMESPACE
from tests.support.procs import free_port, wait_until

pytestmark = pytest.mark.e2e


def _record(home: Path) -> dict:
    return json.loads((home / "local" / "vms" / "runner.json").read_text())


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout


def test_a_function_runs_in_its_vm_and_binds_port_80(local_cloud, write_app, app_name) -> None:
    path = write_app(
        """
        import os
        import socket
        import multinode as mn

        @mn.function(cpu=0.25, cooldown=1)
        def where():
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("0.0.0.0", 80))  # its own port 80, as on a real VM
            return os.environ["MN_VM_ISOLATED"], os.environ["MN_VM_ADDRESS"]
        """
    )
    mn.deploy(path, name=app_name)
    isolated, address = mn.get_function(app_name, "where").call()
    record = _record(Path(os.environ["MN_HOME"]))
    if record["mode"] == "namespaces":
        assert isolated == "1"
        assert address in {vm["address"] for vm in record["vms"].values()}
    else:
        assert (isolated, address) == ("0", "127.0.0.1")
    assert record["mode"] == ("namespaces" if CAN_NAMESPACE else "processes")


def test_down_removes_what_a_killed_vm_runner_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in _localcloud._LOCAL_AWS_ENV.items():  # the emulator's dummy credentials
        monkeypatch.setenv(key, value)
    config = _localcloud.LocalCloudConfig(
        home=tmp_path / "home",
        aws_port=free_port(),
        control_plane_port=free_port(),
        gateway_port=free_port(),
        use_existing_aws=False,
        server_env=E2E_SERVER_ENV,
    )
    said: list[str] = []
    state = _localcloud.up(config, echo=said.append)
    try:
        mode = "network namespaces" if CAN_NAMESPACE else "plain processes"
        assert any(line.startswith("VM runner: ") and mode in line for line in said), said
        (runner,) = [s for s in _localcloud.status(config) if s.name == "vmrunner"]
        assert runner.running and mode in runner.detail

        marker = tmp_path / "vm"
        settings = AwsSettings(
            ami_id=LOCAL_AMI,
            region="us-east-1",
            endpoint_url=state["aws_endpoint"],
            cluster=_localcloud.CLUSTER,
        )
        EC2Compute(settings).launch(
            LaunchRequest(
                instance_type="t3.nano",
                launch_token="tok-killed-runner",
                user_data=f"#!/bin/bash\necho $$ > {shlex.quote(str(marker))}\nexec sleep 300\n",
            )
        )
        wait_until(
            lambda: marker.exists() and marker.read_text().strip(),
            timeout=30,
            what="the VM to boot",
        )
        vm_pid = int(marker.read_text())
        record = _record(config.home)
        runner_pid = state["processes"]["vmrunner"]["pid"]
        os.kill(runner_pid, signal.SIGKILL)
        wait_until(lambda: not _alive(runner_pid), timeout=10, what="the runner to die")
        assert _alive(vm_pid)  # orphaned: only the record knows about it now
    finally:
        said.clear()
        _localcloud.down(config, echo=said.append)
    assert any(line.startswith("removed VM ") for line in said), said
    assert not _alive(vm_pid)
    assert not (config.home / "local" / "vms" / "runner.json").exists()
    if record["mode"] == "namespaces":
        assert record["bridge"] not in _ip("-br", "link")
        assert not any(vm["netns"] in _ip("netns", "list") for vm in record["vms"].values())
        if record["cgroup"]:
            assert not Path(record["cgroup"]).exists()
