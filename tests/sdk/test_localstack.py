"""The LocalStack launcher (`mn localstack up|down|status`) against real LocalStack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import boto3
import httpx
import pytest

from multinode import _localstack
from multinode._localstack import LocalStackConfig, LocalStackError
from tests.support.procs import free_port

pytestmark = pytest.mark.localstack


@pytest.fixture(scope="module")
def localstack_python() -> Path:
    try:
        return _localstack.find_python()
    except LocalStackError as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"LocalStack unavailable: {exc.message}")


def _processes_of(home: Path) -> list[int]:
    """Pids of processes whose environment mentions ``home`` (LocalStack's data dir)."""
    needle = str(home).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _group_gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _client(service: str, endpoint: str):
    return boto3.session.Session(
        aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
    ).client(service, endpoint_url=endpoint)


def test_the_session_localstack_serves_what_the_system_uses(localstack_endpoint: str) -> None:
    # The init hooks created the dict bucket and role before the fixture yielded.
    s3 = _client("s3", localstack_endpoint)
    assert "multinode-dicts" in {b["Name"] for b in s3.list_buckets()["Buckets"]}
    role = _client("iam", localstack_endpoint).get_role(RoleName="multinode-dicts")["Role"]

    # S3 presigned URLs work over plain HTTP.
    s3.put_object(Bucket="multinode-dicts", Key="probe/x", Body=b"hello")
    url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": "multinode-dicts", "Key": "probe/x"}, ExpiresIn=60
    )
    assert httpx.get(url).content == b"hello"

    # STS AssumeRole vends a session that S3 accepts.
    creds = _client("sts", localstack_endpoint).assume_role(
        RoleArn=role["Arn"], RoleSessionName="probe"
    )["Credentials"]
    assumed = boto3.session.Session(
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
        region_name="us-east-1",
    ).client("s3", endpoint_url=localstack_endpoint)
    assert assumed.get_object(Bucket="multinode-dicts", Key="probe/x")["Body"].read() == b"hello"

    # EC2: instance types, RunInstances with user-data, terminate.
    ec2 = _client("ec2", localstack_endpoint)
    types = ec2.describe_instance_types(InstanceTypes=["c5.4xlarge"])["InstanceTypes"]
    assert types[0]["VCpuInfo"]["DefaultVCpus"] == 16
    launched = ec2.run_instances(
        ImageId="ami-12c6146b",
        InstanceType="t3.nano",
        MinCount=1,
        MaxCount=1,
        UserData="#!/bin/bash",
    )["Instances"][0]
    ec2.terminate_instances(InstanceIds=[launched["InstanceId"]])
    state = ec2.describe_instances(InstanceIds=[launched["InstanceId"]])["Reservations"][0][
        "Instances"
    ][0]["State"]["Name"]
    assert state in ("shutting-down", "terminated")


def test_up_twice_is_harmless_and_down_stops_the_whole_group(
    localstack_python: Path, tmp_path: Path
) -> None:
    config = LocalStackConfig(home=tmp_path, port=free_port(), python=localstack_python)
    messages: list[str] = []
    state = _localstack.up(config, echo=messages.append)
    try:
        assert httpx.get(f"{state['endpoint']}/_localstack/health").status_code == 200
        assert any("DynamoDB" in m and "AWS_ENDPOINT_URL_DYNAMODB" in m for m in messages)
        again = _localstack.up(config, echo=messages.append)
        assert again["pid"] == state["pid"]
        status = _localstack.status(config)
        assert status and status["running"] and status["healthy"]
        # Its files stay in its own directory.
        assert (tmp_path / "localstack" / "localstack.log").stat().st_size > 0
    finally:
        assert _localstack.down(config, echo=messages.append)
    assert _group_gone(state["pid"])
    assert _processes_of(config.dir) == []
    assert _localstack.status(config) is None
    assert not _localstack.down(config, echo=messages.append)


def test_a_taken_port_is_refused_with_how_to_choose_another(
    localstack_python: Path, tmp_path: Path
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = LocalStackConfig(home=tmp_path, port=port, python=localstack_python)
        with pytest.raises(LocalStackError, match=f"port {port}.*MN_LOCALSTACK_PORT"):
            _localstack.up(config, echo=lambda _m: None)
    assert _localstack.read_state(config) is None


def test_a_localstack_already_answering_is_named_as_such(
    localstack_python: Path, localstack_endpoint: str, tmp_path: Path
) -> None:
    port = int(localstack_endpoint.rsplit(":", 1)[1])
    config = LocalStackConfig(home=tmp_path, port=port, python=localstack_python)
    with pytest.raises(LocalStackError, match="another LocalStack .* already answers"):
        _localstack.up(config, echo=lambda _m: None)
    assert httpx.get(f"{localstack_endpoint}/_localstack/health").status_code == 200


def test_a_failed_start_shows_the_logs_last_lines_and_leaves_nothing(tmp_path: Path) -> None:
    # A Python without LocalStack installed: the process exits at once.
    config = LocalStackConfig(home=tmp_path, port=free_port(), python=Path(sys.executable))
    with pytest.raises(LocalStackError, match=r"exited with code 1(.|\n)*No module named"):
        _localstack.up(config, echo=lambda _m: None)
    assert _localstack.read_state(config) is None


def test_a_health_check_that_never_answers_in_time_stops_localstack(
    localstack_python: Path, tmp_path: Path
) -> None:
    config = LocalStackConfig(
        home=tmp_path, port=free_port(), python=localstack_python, start_timeout_s=0.3
    )
    started = time.monotonic()
    with pytest.raises(LocalStackError, match=r"did not answer.*within 0s(.|\n)*Last log lines"):
        _localstack.up(config, echo=lambda _m: None)
    assert time.monotonic() - started < 30
    assert _localstack.read_state(config) is None
    assert _processes_of(config.dir) == []  # the process it started is gone


def test_a_failing_init_hook_is_named_and_localstack_stopped(
    localstack_python: Path, tmp_path: Path
) -> None:
    hooks = tmp_path / "init"
    (hooks / "ready.d").mkdir(parents=True)
    (hooks / "ready.d" / "broken.py").write_text("raise RuntimeError('bucket quota')\n")
    config = LocalStackConfig(
        home=tmp_path / "home", port=free_port(), python=localstack_python, init_dir=hooks
    )
    with pytest.raises(LocalStackError, match="init hook broken.py failed"):
        _localstack.up(config, echo=lambda _m: None)
    assert _processes_of(config.dir) == []


def test_a_missing_virtual_environment_says_how_to_build_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MN_LOCALSTACK_PYTHON", str(tmp_path / "nowhere" / "python"))
    with pytest.raises(LocalStackError, match="MN_LOCALSTACK_PYTHON=.*does not exist"):
        _localstack.find_python()


def test_the_mn_localstack_commands_start_report_and_stop_it(
    localstack_python: Path, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "MN_HOME": str(tmp_path),
        "MN_LOCALSTACK_PORT": str(free_port()),
        "MN_LOCALSTACK_PYTHON": str(localstack_python),
        "COLUMNS": "200",
    }

    def mn(*args: str):
        return subprocess.run(
            [sys.executable, "-m", "multinode.cli", "localstack", *args],
            capture_output=True,
            text=True,
            timeout=180,
            env=env,
        )

    started = mn("up")
    try:
        assert started.returncode == 0, started.stderr
        assert "AWS_ENDPOINT_URL_DYNAMODB" in started.stderr  # says where DynamoDB goes
        assert f"MN_LOCAL_AWS_PORT={env['MN_LOCALSTACK_PORT']} mn up" in started.stderr
        status = json.loads(mn("status", "--json").stdout)
        assert status["running"] and status["healthy"]
    finally:
        stopped = mn("down")
    assert stopped.returncode == 0 and "stopped LocalStack" in stopped.stderr
    assert _processes_of(tmp_path) == []
    assert "not running" in mn("status").stdout
