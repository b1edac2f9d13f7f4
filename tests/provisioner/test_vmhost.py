"""VMs in network namespaces: own address, port 80, relayed loopback ports, CPU quotas,
and nothing left behind, whether the runner stops cleanly or is killed."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from multinode_provisioner.aws import EC2Compute
from multinode_provisioner.compute import LaunchRequest
from multinode_provisioner.settings import AwsSettings
from multinode_provisioner.vmcgroup import CpuCgroups
from multinode_provisioner.vmhost import IsolationError, read_record
from multinode_provisioner.vmrunner import VMRunner
from tests.provisioner.conftest import needs_namespaces
from tests.support.procs import stop_process, wait_until

pytestmark = needs_namespaces


def _user_data(marker: Path, then: str = "exec sleep 300") -> str:
    """User-data that writes its pid and what it was told about itself to ``marker``."""
    tmp = shlex.quote(f"{marker}.tmp")
    return (
        "#!/bin/bash\nset -eu\n"
        f'printf "%s\\n" "$$" "$MN_VM_ADDRESS" "$MN_VM_ISOLATED" > {tmp}\n'
        f"mv {tmp} {shlex.quote(str(marker))}\n{then}\n"
    )


def _http_server_user_data(marker: Path) -> str:
    """User-data serving, on port 80 of every address, a file holding its instance id."""
    return _user_data(
        marker,
        'cd "$(mktemp -d)" && echo "$MN_VM_INSTANCE_ID" > id\nexec "$MN_PYTHON" -m http.server 80',
    )


def _read_marker(marker: Path) -> tuple[int, str, str]:
    wait_until(marker.exists, timeout=30, what=f"the VM to write {marker.name}")
    pid, address, isolated = marker.read_text().split("\n")[:3]
    return int(pid), address, isolated


def _get(url: str) -> str | None:
    try:
        return httpx.get(url, timeout=1.0).text
    except httpx.HTTPError:
        return None


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (dead, not yet reaped by its new parent) does not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _launch(settings: AwsSettings, user_data: str, instance_type: str = "t3.nano") -> str:
    inst = EC2Compute(settings).launch(
        LaunchRequest(
            instance_type=instance_type, launch_token=os.urandom(6).hex(), user_data=user_data
        )
    )
    return inst.cloud_id


def _assert_nothing_left(record: dict) -> None:
    """None of the namespaces, links and cgroups ``record`` names exists any more."""
    netns = _ip("netns", "list")
    links = _ip("-br", "link")
    assert record["bridge"] not in links
    for vm in record["vms"].values():
        assert vm["netns"] not in netns
        assert vm["veth"] not in links
    if record["cgroup"]:
        assert not Path(record["cgroup"]).exists()


@pytest.fixture
def runner(ec2: Any, cluster: str, tmp_path: Path, aws_endpoint: str) -> Iterator[VMRunner]:
    moto_port = int(aws_endpoint.rsplit(":", 1)[1])
    with VMRunner(
        ec2,
        cluster=cluster,
        state_dir=tmp_path / "vms",
        grace=2.0,
        isolation="namespaces",
        relay_ports=[moto_port],
    ) as r:
        yield r


def test_two_vms_serve_port_80_at_their_own_addresses(
    runner: VMRunner, settings: AwsSettings, tmp_path: Path
) -> None:
    ids = [_launch(settings, _http_server_user_data(tmp_path / f"vm{n}")) for n in (1, 2)]
    assert sorted(runner.run_once().booted) == sorted(ids)

    addresses = []
    for n, instance_id in enumerate(ids, start=1):
        _pid, address, isolated = _read_marker(tmp_path / f"vm{n}")
        assert isolated == "1"
        assert address == runner.address(instance_id) != "127.0.0.1"
        wait_until(
            lambda a=address: _get(f"http://{a}/id") is not None,
            timeout=30,
            what="the VM's port 80",
        )
        assert _get(f"http://{address}/id") == instance_id + "\n"
        addresses.append(address)
    assert len(set(addresses)) == 2

    # One VM reaches the other at its address, as on a real network.
    probe = tmp_path / "probe"
    fetch = (
        f'"$MN_PYTHON" -c "import urllib.request as u;'
        f" print(u.urlopen('http://{addresses[1]}/id').read().decode().strip())\""
        f" > {shlex.quote(str(probe))}"
    )
    _launch(settings, _user_data(tmp_path / "vm3", fetch + "\nexec sleep 300"))
    runner.run_once()
    wait_until(lambda: probe.exists() and probe.read_text().strip(), timeout=30, what="the probe")
    assert probe.read_text().strip() == ids[1]


def test_a_vm_reaches_relayed_loopback_ports_and_nothing_else(
    runner: VMRunner, settings: AwsSettings, tmp_path: Path, aws_endpoint: str
) -> None:
    with socket.socket() as unrelayed:  # a host service the runner was not told to relay
        unrelayed.bind(("127.0.0.1", 0))
        unrelayed.listen()
        other = unrelayed.getsockname()[1]
        out = tmp_path / "reach"
        script = (
            "import socket, urllib.request as u\n"
            f"print(u.urlopen('{aws_endpoint}/moto-api/').status)\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {other}), timeout=2)\n"
            "    print('reached')\n"
            "except OSError as e:\n"
            "    print(type(e).__name__)\n"
        )
        _launch(
            settings,
            _user_data(
                tmp_path / "vm",
                f'"$MN_PYTHON" -c {shlex.quote(script)} > {shlex.quote(str(out))}.tmp'
                f" && mv {shlex.quote(str(out))}.tmp {shlex.quote(str(out))}\nexec sleep 300",
            ),
        )
        runner.run_once()
        wait_until(out.exists, timeout=30, what="the VM's reachability report")
    assert out.read_text().split() == ["200", "ConnectionRefusedError"]


def test_cpu_quota_matches_the_instance_type(
    runner: VMRunner, settings: AwsSettings, tmp_path: Path
) -> None:
    cgroups = CpuCgroups.detect()
    if cgroups is None:
        pytest.skip("no writable cgroup hierarchy with the cpu controller")
    nano = _launch(settings, _user_data(tmp_path / "nano"), "t3.nano")  # 2 vCPUs
    xlarge = _launch(settings, _user_data(tmp_path / "xlarge"), "c6a.xlarge")  # 4 vCPUs
    runner.run_once()
    record = read_record(tmp_path / "vms")
    assert record is not None
    for instance_id, marker, expected in (
        (nano, tmp_path / "nano", "200000 100000"),
        (xlarge, tmp_path / "xlarge", "400000 100000"),
    ):
        group = Path(record["vms"][instance_id]["cgroup"])
        assert cgroups.quota(group) == expected
        pid, _, _ = _read_marker(marker)
        assert pid in [int(p) for p in (group / "cgroup.procs").read_text().split()]


def test_close_leaves_no_namespace_link_cgroup_or_socket(
    ec2: Any, cluster: str, settings: AwsSettings, tmp_path: Path, aws_endpoint: str
) -> None:
    runner = VMRunner(
        ec2,
        cluster=cluster,
        state_dir=tmp_path / "vms",
        grace=2.0,
        isolation="namespaces",
        relay_ports=[int(aws_endpoint.rsplit(":", 1)[1])],
    )
    try:
        _launch(settings, _http_server_user_data(tmp_path / "vm"))
        runner.run_once()
        pid, address, _ = _read_marker(tmp_path / "vm")
        wait_until(lambda: _get(f"http://{address}/id") is not None, timeout=30, what="port 80")
        record = read_record(tmp_path / "vms")
        assert record is not None and record["bridge"] in _ip("-br", "link")
        assert runner.isolation.relay.open_sockets() >= 1  # type: ignore[attr-defined]
    finally:
        runner.close()
    assert not _alive(pid)
    _assert_nothing_left(record)
    assert runner.isolation.relay.open_sockets() == 0  # type: ignore[attr-defined]
    assert read_record(tmp_path / "vms") is None


@pytest.mark.parametrize("isolation", ["namespaces", "processes"])
def test_a_killed_runner_is_cleaned_up_after(
    aws_endpoint: str, settings: AwsSettings, cluster: str, tmp_path: Path, isolation: str
) -> None:
    state_dir = tmp_path / "vms"
    args = [sys.executable, "-m", "multinode_provisioner.vmrunner", "--state-dir", str(state_dir)]
    env = {
        **os.environ,
        "MN_VM_CLUSTER": cluster,
        "MN_VM_ISOLATION": isolation,
        "AWS_ENDPOINT_URL": aws_endpoint,
    }
    log = tmp_path / "runner.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        wait_until(
            lambda: read_record(state_dir) is not None, timeout=30, what="the runner's record"
        )
        _launch(settings, _user_data(tmp_path / "vm"))
        vm_pid, _, _ = _read_marker(tmp_path / "vm")
        os.killpg(proc.pid, signal.SIGKILL)  # no chance to clean up
        proc.wait(10)
    finally:
        stop_process(proc)
    record = read_record(state_dir)
    assert record is not None and _alive(vm_pid)  # orphaned: only the record knows it
    assert record["mode"] == isolation
    if isolation == "namespaces":
        assert record["bridge"] in _ip("-br", "link")

    done = subprocess.run(
        [*args, "--clean-up"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "removed VM " in done.stdout
    assert not _alive(vm_pid)
    if isolation == "namespaces":
        assert "bridge " + record["bridge"] in done.stdout
        _assert_nothing_left(record)
    assert read_record(state_dir) is None


def test_a_live_runner_s_state_is_not_taken_over(
    runner: VMRunner, ec2: Any, cluster: str, tmp_path: Path
) -> None:
    with pytest.raises(IsolationError, match="still uses"):
        VMRunner(ec2, cluster=cluster, state_dir=tmp_path / "vms", isolation="processes")
    assert json.loads((tmp_path / "vms" / "runner.json").read_text())["mode"] == "namespaces"


def test_processes_mode_tells_the_vm_it_shares_the_host_network(
    ec2: Any, cluster: str, settings: AwsSettings, tmp_path: Path
) -> None:
    with VMRunner(ec2, cluster=cluster, state_dir=tmp_path / "vms", isolation="processes") as r:
        assert not r.isolated and "plain processes" in r.isolation.summary
        _launch(settings, _user_data(tmp_path / "vm"))
        r.run_once()
        _pid, address, isolated = _read_marker(tmp_path / "vm")
    assert (address, isolated) == ("127.0.0.1", "0")


def test_two_runners_get_their_own_bridges_and_closing_one_spares_the_other(
    ec2: Any, cluster: str, tmp_path: Path
) -> None:
    with VMRunner(ec2, cluster=cluster, state_dir=tmp_path / "a", isolation="namespaces"):
        b = VMRunner(ec2, cluster=cluster + "-b", state_dir=tmp_path / "b", isolation="namespaces")
        record_b = read_record(tmp_path / "b")
        b.close()
        record_a = read_record(tmp_path / "a")
        assert record_a is not None and record_b is not None
        assert record_a["bridge"] != record_b["bridge"]
        assert record_a["subnet"] != record_b["subnet"]
        links = _ip("-br", "link")
        assert record_a["bridge"] in links and record_b["bridge"] not in links
