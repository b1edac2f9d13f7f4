"""The VM runner against the real emulator: boots user-data, stops what EC2 ends.

Every test runs with VMs in network namespaces (when this machine allows it) and as plain
processes; tests/provisioner/test_vmhost.py covers what only namespaces do.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from multinode_provisioner.aws import EC2Compute
from multinode_provisioner.compute import LaunchRequest
from multinode_provisioner.settings import AwsSettings
from multinode_provisioner.vmhost import IsolationError, open_isolation
from multinode_provisioner.vmrunner import VMRunner, loopback_ports
from tests.provisioner.conftest import ISOLATIONS
from tests.support.procs import stop_process, wait_until


def _sleeper_user_data(marker: Path) -> str:
    """User-data that records what it saw, then stays up as a long-lived VM would."""
    tmp = shlex.quote(f"{marker}.tmp")
    return (
        "#!/bin/bash\nset -eu\necho booting\n"
        'printf "%s\\n" "$$" "$MN_VM_INSTANCE_ID" "$MN_VM_INSTANCE_TYPE" "$MN_PYTHON" "$(command -v python3)"'
        f" > {tmp}\nmv {tmp} {shlex.quote(str(marker))}\nexec sleep 300\n"
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _state(ec2: Any, instance_id: str) -> str:
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0][
        "State"
    ]["Name"]


@pytest.fixture(params=ISOLATIONS)
def runner(ec2: Any, cluster: str, tmp_path: Path, request: Any) -> Iterator[VMRunner]:
    with VMRunner(
        ec2, cluster=cluster, state_dir=tmp_path / "vms", grace=5.0, isolation=request.param
    ) as r:
        yield r


def test_boots_user_data_and_stops_it_when_ec2_terminates(
    runner: VMRunner, settings: AwsSettings, tmp_path: Path
) -> None:
    compute = EC2Compute(settings)
    marker = tmp_path / "booted"
    inst = compute.launch(
        LaunchRequest(
            instance_type="c6a.large", launch_token="tok-vm", user_data=_sleeper_user_data(marker)
        )
    )

    result = runner.run_once()
    assert result.booted == [inst.cloud_id]
    wait_until(marker.exists, timeout=30, what="the VM's user-data to write its marker")
    pid, instance_id, instance_type, python, python3 = marker.read_text().split("\n")[:5]
    assert (instance_id, instance_type) == (inst.cloud_id, "c6a.large")
    assert python == sys.executable
    assert python3 == str(Path(sys.executable).parent / "python3")  # the venv comes first on PATH
    assert runner.pids == {inst.cloud_id: int(pid)}
    assert (tmp_path / "vms" / inst.cloud_id / "user-data.sh").read_text() == _sleeper_user_data(
        marker
    )
    wait_until(
        lambda: "booting" in (tmp_path / "vms" / inst.cloud_id / "console.log").read_text(),
        timeout=10,
        what="console output",
    )

    # Nothing changes while the instance runs: no second boot.
    assert runner.run_once().booted == []
    assert _alive(int(pid))

    compute.terminate([inst.cloud_id])
    result = runner.run_once()
    assert result.stopped == [inst.cloud_id]
    assert not _alive(int(pid))
    assert runner.pids == {}


def test_a_vm_that_exits_gets_its_instance_terminated(
    runner: VMRunner, settings: AwsSettings, ec2: Any
) -> None:
    compute = EC2Compute(settings)
    inst = compute.launch(
        LaunchRequest(
            instance_type="t3.nano", launch_token="tok-exit", user_data="#!/bin/bash\nexit 3\n"
        )
    )
    assert runner.run_once().booted == [inst.cloud_id]
    wait_until(
        lambda: inst.cloud_id in runner.run_once().exited,
        timeout=30,
        what="the VM to exit and be terminated",
    )
    assert _state(ec2, inst.cloud_id) in ("shutting-down", "terminated")
    assert compute.list_instances() == []
    result = runner.run_once()
    assert result.booted == [] and result.stopped == [] and result.exited == []


def test_only_its_own_cluster_and_live_instances_are_booted(
    runner: VMRunner, settings: AwsSettings, tmp_path: Path
) -> None:
    other = EC2Compute(settings.model_copy(update={"cluster": settings.cluster + "-x"}))
    other.launch(
        LaunchRequest(
            instance_type="t3.nano", launch_token="tok-o", user_data="#!/bin/bash\nexec sleep 300\n"
        )
    )
    mine = EC2Compute(settings)
    ended = mine.launch(
        LaunchRequest(
            instance_type="t3.nano", launch_token="tok-e", user_data="#!/bin/bash\nexit 0\n"
        )
    )
    mine.terminate([ended.cloud_id])
    bare = mine.launch(
        LaunchRequest(instance_type="t3.nano", launch_token="tok-bare", user_data="")
    )

    assert runner.run_once().booted == [bare.cloud_id]  # booted, with nothing to run
    assert runner.pids == {}
    assert not (tmp_path / "vms" / ended.cloud_id).exists()


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_entry_point_stops_its_vms_on_sigterm(
    aws_endpoint: str, settings: AwsSettings, cluster: str, tmp_path: Path, isolation: str
) -> None:
    out = tmp_path / "runner.log"
    args = [
        sys.executable,
        "-m",
        "multinode_provisioner.vmrunner",
        "--state-dir",
        str(tmp_path / "vms"),
        "--endpoint-url",
        aws_endpoint,
    ]
    env = {**os.environ, "MN_VM_CLUSTER": cluster, "MN_VM_ISOLATION": isolation}
    with open(out, "wb") as log:
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        start_line = {"namespaces": "network namespaces", "processes": "plain processes"}
        wait_until(
            lambda: start_line[isolation] in out.read_text(),
            timeout=30,
            what="the runner's start line",
        )
        marker = tmp_path / "booted"
        EC2Compute(settings).launch(
            LaunchRequest(
                instance_type="t3.nano",
                launch_token="tok-main",
                user_data=_sleeper_user_data(marker),
            )
        )
        wait_until(marker.exists, timeout=30, what="the runner to boot the VM")
        vm_pid = int(marker.read_text().split("\n")[0])
        assert _alive(vm_pid)

        os.kill(proc.pid, signal.SIGTERM)  # the runner alone: it must stop its VMs itself
        assert proc.wait(timeout=30) == 0, out.read_text()
        assert not _alive(vm_pid)
        assert not (tmp_path / "vms" / "runner.json").exists()  # nothing left to clean up
    finally:
        stop_process(proc)


def test_loopback_aws_endpoints_in_the_environment_are_relayed() -> None:
    env = {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:4566",
        "AWS_ENDPOINT_URL_DYNAMODB": "http://localhost:8000/",
        "AWS_ENDPOINT_URL_S3": "https://s3.example.com:9000",  # not on this host's loopback
        "MN_URL": "http://127.0.0.1:7600",  # not an AWS endpoint: the local cloud names it
    }
    assert loopback_ports(env) == {4566, 8000}


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux's setpriv")
def test_when_namespaces_cannot_be_made_vms_are_plain_processes_and_the_runner_says_why(
    aws_endpoint: str, cluster: str, tmp_path: Path
) -> None:
    out = tmp_path / "runner.log"
    # Without CAP_NET_ADMIN, as in a container, root cannot make a bridge.
    args = ["setpriv", "--bounding-set", "-net_admin", "--", sys.executable]
    args += ["-m", "multinode_provisioner.vmrunner", "--state-dir", str(tmp_path / "vms")]
    env = {**os.environ, "MN_VM_CLUSTER": cluster, "AWS_ENDPOINT_URL": aws_endpoint}
    with open(out, "wb") as log:
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        wait_until(lambda: "runner:" in out.read_text(), timeout=30, what="the start line")
    finally:
        stop_process(proc, grace=30)  # it exits once its current EC2 request returns
    (line,) = [line for line in out.read_text().splitlines() if "VMs run as" in line]
    assert "VMs run as plain processes (" in line
    assert "): services get their port in PORT" in line
    assert proc.returncode == 0, out.read_text()


def test_without_root_auto_means_plain_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    isolation = open_isolation("auto", tmp_path)
    try:
        assert isolation.summary == (
            "VMs run as plain processes (not root): services get their port in PORT"
        )
    finally:
        isolation.close()
    with pytest.raises(IsolationError, match="not root.*MN_VM_ISOLATION=processes"):
        open_isolation("namespaces", tmp_path)
