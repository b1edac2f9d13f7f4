"""The control plane's start-up check of its AWS target, against the real emulator server:
a complete target passes; each missing item is named with its setting; everything missing
is reported at once; the server shows the result in GET /v1/health, and `--check` exits
non-zero."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from multinode import wire
from multinode_controlplane.services import aws_check
from multinode_controlplane.services.dict_storage import DictStorage
from multinode_provisioner.aws import EC2Compute
from tests.controlplane.aws_target import ABSENT, Target, make_target
from tests.controlplane.test_api import KEY, Server
from tests.support.procs import free_port, moto_server, wait_until

ALL_ITEMS = [
    "AWS credentials",
    "dict table",
    "dict bucket",
    "dict role",
    "AMI",
    "subnet",
    "security group",
    "instance profile",
    "launch template",
    "launch (dry run)",
    "list instances (dry run)",
]


@pytest.fixture
def target(aws_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Target:
    # The control plane's own clients find the emulator as they find any AWS endpoint.
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws_endpoint)
    return make_target(aws_endpoint)


def run_check(
    target: Target, server: dict[str, Any] | None = None, aws: dict[str, Any] | None = None
) -> wire.AwsCheck:
    settings = target.server_settings(**(server or {}))
    compute = EC2Compute(target.aws_settings(**(aws or {})))
    return aws_check.run(DictStorage(settings), compute)


def items(result: wire.AwsCheck) -> list[str]:
    return [item.split(" sg-")[0] for item in result.checked]


def test_a_complete_target_passes_every_item(target: Target) -> None:
    result = run_check(target)
    assert result.problems == []
    assert result.status == "ok"
    assert items(result) == ALL_ITEMS
    assert aws_check.describe(result).startswith("AWS target: ok")


MISSING = {
    "dict table": ("MN_SERVER_DICT_TABLE", {"dict_table": ABSENT["table"]}, {}),
    "dict bucket": ("MN_SERVER_DICT_BUCKET", {"dict_bucket": ABSENT["bucket"]}, {}),
    "dict role": ("MN_SERVER_DICT_ROLE_ARN", {"dict_role_arn": ABSENT["role_arn"]}, {}),
    "AMI": ("MN_AWS_AMI_ID", {}, {"ami_id": ABSENT["ami"]}),
    "subnet": ("MN_AWS_SUBNET_ID", {}, {"subnet_id": ABSENT["subnet"]}),
    "security group": (
        "MN_AWS_SECURITY_GROUP_IDS",
        {},
        {"security_group_ids": (ABSENT["group"],)},
    ),
    "instance profile": (
        "MN_AWS_INSTANCE_PROFILE_ARN",
        {},
        {"instance_profile_arn": ABSENT["profile_arn"]},
    ),
    "launch template": (
        "MN_AWS_LAUNCH_TEMPLATE_ID",
        {},
        {"launch_template_id": ABSENT["template"]},
    ),
}


@pytest.mark.parametrize("item", list(MISSING))
def test_each_missing_item_is_named_with_its_setting(target: Target, item: str) -> None:
    setting, server, aws = MISSING[item]
    result = run_check(target, server, aws)

    assert result.status == "problems"
    [problem] = [p for p in result.problems if p.item.startswith(item)]
    assert problem.setting == setting
    missing_name = next(iter({**server, **aws}.values()))
    missing_name = missing_name[0] if isinstance(missing_name, tuple) else missing_name
    assert missing_name.rsplit("/", 1)[-1] in problem.message
    assert "does not exist" in problem.message
    # Nothing else is blamed (a dry-run launch may fail too for what it names).
    others = {p.item for p in result.problems} - {problem.item, "launch (dry run)"}
    assert others == set()
    assert items(result) == ALL_ITEMS  # a missing item never stops the others


def test_everything_missing_is_reported_in_one_message(target: Target) -> None:
    server: dict[str, Any] = {}
    aws: dict[str, Any] = {}
    for _, s, a in MISSING.values():
        server.update(s)
        aws.update(a)
    result = run_check(target, server, aws)

    blamed = {p.item.split(" sg-")[0] for p in result.problems}
    assert blamed >= set(MISSING)
    message = aws_check.describe(result)
    for setting, _, _ in MISSING.values():
        assert f"[{setting}]" in message
    assert message.startswith(f"AWS target: {len(result.problems)} problem(s)")


def test_resources_the_control_plane_may_create_are_not_problems(target: Target) -> None:
    result = run_check(
        target,
        {
            "dict_table": ABSENT["table"],
            "dict_bucket": ABSENT["bucket"],
            "dict_role_arn": None,
            "dict_role_name": "mn-absent-role",
            "dict_create_resources": True,
        },
    )
    assert result.status == "ok", result.problems


def test_a_table_with_other_keys_is_a_problem(target: Target) -> None:
    dynamodb = boto3.client("dynamodb", endpoint_url=target.endpoint, region_name="us-east-1")
    other = target.table + "-id"
    dynamodb.create_table(
        TableName=other,
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    [problem] = run_check(target, {"dict_table": other}).problems
    assert problem.item == "dict table" and "pk (HASH) and sk (RANGE)" in problem.message


def test_a_security_group_of_another_vpc_is_a_problem(target: Target) -> None:
    ec2 = boto3.client("ec2", endpoint_url=target.endpoint, region_name="us-east-1")
    vpc = ec2.create_vpc(CidrBlock="10.91.0.0/16")["Vpc"]["VpcId"]
    group = ec2.create_security_group(GroupName=target.cluster, Description="x", VpcId=vpc)
    [problem] = run_check(target, aws={"security_group_ids": (group["GroupId"],)}).problems
    assert problem.setting == "MN_AWS_SECURITY_GROUP_IDS"
    assert f"is in {vpc} but the subnet is in" in problem.message


def test_refused_permissions_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Against an emulator that enforces IAM: credentials that may not launch nor assume
    the dict role get those two items reported, and only those."""
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "INITIAL_NO_AUTH_ACTION_COUNT": "3",  # time to make the admin user
    }.items():
        monkeypatch.setenv(key, value)
    with moto_server(tmp_path) as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        monkeypatch.delenv("INITIAL_NO_AUTH_ACTION_COUNT")
        admin = _user(endpoint, "admin", [{"Effect": "Allow", "Action": "*", "Resource": "*"}])
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", admin[0])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", admin[1])
        target = make_target(endpoint)
        denied = [
            {"Effect": "Allow", "Action": "*", "Resource": "*"},
            {"Effect": "Deny", "Action": ["ec2:RunInstances", "sts:AssumeRole"], "Resource": "*"},
        ]
        narrow = _user(endpoint, "narrow", denied)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", narrow[0])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", narrow[1])

        result = run_check(target)

    blamed = {p.item: p.message for p in result.problems}
    assert set(blamed) == {"dict role", "launch (dry run)"}
    assert "may not assume" in blamed["dict role"] and "sts:TagSession" in blamed["dict role"]
    assert "may not launch agents" in blamed["launch (dry run)"]
    assert f"mn:cluster={target.cluster}" in blamed["launch (dry run)"]


def _user(endpoint: str, name: str, statements: list[dict[str, Any]]) -> tuple[str, str]:
    iam = boto3.session.Session().client("iam", endpoint_url=endpoint, region_name="us-east-1")
    iam.create_user(UserName=name)
    policy = {"Version": "2012-10-17", "Statement": statements}
    iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


# -- in the running server -----------------------------------------------------------------


def _health(server: Server) -> dict[str, Any]:
    return httpx.get(f"{server.url}/v1/health", timeout=5).json()


def _checked(server: Server) -> dict[str, Any]:
    wait_until(
        lambda: _health(server)["aws"]["status"] != "pending",
        timeout=30,
        what="the start-up check",
    )
    return _health(server)["aws"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_server_shows_its_check_in_health(database_url: str, target: Target) -> None:
    settings = target.server_settings(database_url=database_url, api_key=KEY)
    compute = EC2Compute(target.aws_settings())
    with Server(database_url, settings=settings, compute=compute) as server:
        aws = _checked(server)
    assert aws["status"] == "ok" and aws["problems"] == []
    assert aws["checked"][0] == "AWS credentials" and aws["duration_s"] >= 0


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_server_reports_what_is_missing_and_keeps_serving(
    database_url: str, target: Target, caplog: pytest.LogCaptureFixture
) -> None:
    settings = target.server_settings(
        database_url=database_url, api_key=KEY, dict_bucket=ABSENT["bucket"]
    )
    compute = EC2Compute(target.aws_settings(subnet_id=ABSENT["subnet"]))
    with (
        caplog.at_level(logging.ERROR),
        Server(database_url, settings=settings, compute=compute) as server,
    ):
        aws = _checked(server)
        apps = httpx.get(
            f"{server.url}/v1/apps", headers={"Authorization": f"Bearer {KEY}"}, timeout=5
        )
    assert apps.status_code == 200  # the API answers regardless
    assert {(p["item"], p["setting"]) for p in aws["problems"]} == {
        ("dict bucket", "MN_SERVER_DICT_BUCKET"),
        ("subnet", "MN_AWS_SUBNET_ID"),
    }
    [record] = [r for r in caplog.records if "AWS target" in r.getMessage()]
    assert "[MN_SERVER_DICT_BUCKET]" in record.getMessage()
    assert "[MN_AWS_SUBNET_ID]" in record.getMessage()


def test_no_check_runs_without_compute(database_url: str) -> None:
    with Server(database_url) as server:  # compute "none": no AWS target was given
        assert _health(server)["aws"] is None


# -- python -m multinode_controlplane --check ------------------------------------------------


def _env(target: Target, **overrides: str) -> dict[str, str]:
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": target.endpoint,
        "MN_SERVER_CLUSTER": target.cluster,
        "MN_SERVER_DICT_TABLE": target.table,
        "MN_SERVER_DICT_BUCKET": target.bucket,
        "MN_SERVER_DICT_ROLE_ARN": target.role_arn,
        "MN_SERVER_DICT_CREATE_RESOURCES": "false",
        "MN_AWS_AMI_ID": target.ami,
        "MN_AWS_REGION": "us-east-1",
        "MN_AWS_SUBNET_ID": target.subnet,
        "MN_AWS_SECURITY_GROUP_IDS": target.group,
        "MN_AWS_INSTANCE_PROFILE_ARN": target.profile_arn,
        "MN_AWS_LAUNCH_TEMPLATE_ID": target.template,
        # --check must not need (or touch) the database.
        "MN_SERVER_DATABASE_URL": "sqlite:////nonexistent/dir/cp.db",
        "MN_SERVER_PORT": str(free_port()),
    }
    return {**env, **overrides}


def _run_check_command(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "multinode_controlplane", "--check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_command_passes_on_a_complete_target(target: Target) -> None:
    done = _run_check_command(_env(target))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("AWS target: ok")


def test_check_command_lists_every_problem_and_exits_2(target: Target) -> None:
    env = _env(
        target,
        MN_SERVER_DICT_TABLE=ABSENT["table"],
        MN_AWS_AMI_ID=ABSENT["ami"],
        MN_AWS_LAUNCH_TEMPLATE_ID=ABSENT["template"],
    )
    done = _run_check_command(env)
    assert done.returncode == 2
    assert done.stdout.startswith("AWS target: 3 problem(s)")
    for setting in ("MN_SERVER_DICT_TABLE", "MN_AWS_AMI_ID", "MN_AWS_LAUNCH_TEMPLATE_ID"):
        assert f"[{setting}]" in done.stdout
