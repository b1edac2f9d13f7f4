"""infra/multinode.yaml deployed into LocalStack's CloudFormation, and a control plane run
from the stack's outputs, as infra/README.md tells a team to.

The control plane runs with the stack's control-plane role (assumed through
TrustedPrincipalArn), its settings made from the outputs by infra/outputs-to-env.awk.
Three things differ from AWS, each because LocalStack on a machine without Docker cannot
do it, and are set here instead:

- DynamoDB: this LocalStack has none, so the dict table is an existing one
  (``DictTableName``) in the session's emulator, which every process reaches through
  ``AWS_ENDPOINT_URL_DYNAMODB``;
- VMs: LocalStack's instances boot nothing, so the local cloud's VM runner boots the
  instances the control plane launches, from their user-data, as local processes; the
  stack's install step (dnf, pip) and shutdown command are for real VMs and are replaced;
- launch template: LocalStack's CloudFormation has no AWS::EC2::LaunchTemplate (it
  answers "unknown" for its id, which the control plane's start-up check reports), so
  the template's own LaunchTemplateData is created through EC2 after the stack;
- addresses: the control plane listens on 127.0.0.1 rather than the host's private IP.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.exceptions import ClientError

from tests.infra.template import TEMPLATE, render
from tests.support.procs import free_port, running, stop_process, wait_until

pytestmark = pytest.mark.e2e

AWK = TEMPLATE.with_name("outputs-to-env.awk")
API_KEY = "mnk_" + "e2e" * 10
LOCALSTACK_ROOT = "arn:aws:iam::000000000000:root"
LOCALSTACK_MOCK = "unknown"  # what LocalStack answers for a resource type it lacks
TIMINGS = {
    "MN_SERVER_HEARTBEAT_INTERVAL_S": "1",
    "MN_SERVER_AGENT_POLL_TIMEOUT_S": "1",
    "MN_SERVER_PROVISIONER_INTERVAL_S": "0.2",
}

APP = """
import multinode as mn

results = mn.get_dict(name="results")


@mn.function(cpu=0.5, cooldown=60)
def double(x):
    results[x] = 2 * x  # from the VM, with credentials vended through the stack's role
    return 2 * x
"""


@dataclass(frozen=True)
class Stack:
    name: str
    outputs: dict[str, str]
    endpoint: str  # LocalStack
    dynamodb: str  # the emulator holding the dict table

    def client(self, service: str, **credentials: str) -> Any:
        endpoint = self.dynamodb if service == "dynamodb" else self.endpoint
        return boto3.session.Session(**credentials).client(
            service, endpoint_url=endpoint, region_name="us-east-1"
        )


@pytest.fixture(scope="module")
def stack(localstack_endpoint: str, aws_endpoint: str) -> Iterator[Stack]:
    name = "mn-e2e-" + uuid.uuid4().hex[:8]
    table = name + "-dicts"
    boto3.session.Session().client(
        "dynamodb", endpoint_url=aws_endpoint, region_name="us-east-1"
    ).create_table(
        TableName=table,
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    cloudformation = Stack(name, {}, localstack_endpoint, aws_endpoint).client("cloudformation")
    parameters = {
        "ApiKey": API_KEY,
        "DictTableName": table,
        "TrustedPrincipalArn": LOCALSTACK_ROOT,
        "ApiIngressCidr": "198.51.100.7/32",
    }
    cloudformation.create_stack(
        StackName=name,
        TemplateBody=TEMPLATE.read_text(),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        Capabilities=["CAPABILITY_IAM"],
    )
    try:
        described = _wait_for_stack(cloudformation, name)
        assert described and described["StackStatus"] == "CREATE_COMPLETE", _failures(
            cloudformation, name
        )
        outputs = {o["OutputKey"]: o["OutputValue"] for o in described["Outputs"]}
        made_up = {k for k, v in outputs.items() if v == LOCALSTACK_MOCK}
        assert made_up == {"MnAwsLaunchTemplateId"}, made_up  # the one LocalStack lacks
        deployed = Stack(name, outputs, localstack_endpoint, aws_endpoint)
        outputs["MnAwsLaunchTemplateId"] = _agent_launch_template(deployed)
        yield deployed
    finally:
        cloudformation.delete_stack(StackName=name)
        _wait_for_stack(cloudformation, name)


def _agent_launch_template(stack: Stack) -> str:
    """The stack's agent launch template, made through EC2 from the template's own data
    with the stack's image, profile and group."""
    data = render().properties("AgentLaunchTemplate")["LaunchTemplateData"]
    data = {
        **data,
        "ImageId": stack.outputs["MnAwsAmiId"],
        "IamInstanceProfile": {"Arn": stack.outputs["MnAwsInstanceProfileArn"]},
        "SecurityGroupIds": [stack.outputs["MnAwsSecurityGroupIds"]],
        # CloudFormation turns the parameter's text into the API's integer.
        "BlockDeviceMappings": [
            {**d, "Ebs": {**d["Ebs"], "VolumeSize": int(d["Ebs"]["VolumeSize"])}}
            for d in data["BlockDeviceMappings"]
        ],
    }
    created = stack.client("ec2").create_launch_template(
        LaunchTemplateName=f"{stack.name}-agents", LaunchTemplateData=data
    )
    return created["LaunchTemplate"]["LaunchTemplateId"]


def _wait_for_stack(cloudformation: Any, name: str) -> dict[str, Any] | None:
    """The stack once no operation is in progress; None once it is gone."""
    deadline = time.monotonic() + 300
    while True:
        try:
            described = cloudformation.describe_stacks(StackName=name)["Stacks"][0]
        except ClientError as exc:
            if "does not exist" in str(exc):
                return None
            raise
        if not described["StackStatus"].endswith("_IN_PROGRESS"):
            return described
        assert time.monotonic() < deadline, f"stack {name} still {described['StackStatus']}"
        time.sleep(0.5)


def _failures(cloudformation: Any, name: str) -> list[str]:
    events = cloudformation.describe_stack_events(StackName=name)["StackEvents"]
    return [
        f"{e['LogicalResourceId']}: {e.get('ResourceStatusReason')}"
        for e in events
        if e["ResourceStatus"].endswith("FAILED")
    ]


def stack_env(stack: Stack, tmp_path: Path) -> dict[str, str]:
    """The settings as infra/README.md makes them: the outputs, as the AWS CLI prints
    them, through infra/outputs-to-env.awk, sourced by a shell."""
    text = "".join(f"{key}\t{value}\n" for key, value in stack.outputs.items())
    env_file = tmp_path / "multinode.env"
    with open(env_file, "w") as out:
        subprocess.run(["awk", "-f", str(AWK)], input=text.encode(), stdout=out, check=True)
    sourced = subprocess.run(
        ["bash", "-c", f"set -a; . {env_file}; env -0"],
        capture_output=True,
        check=True,
        env={"PATH": os.environ["PATH"]},
    ).stdout.decode()
    return dict(line.split("=", 1) for line in sourced.split("\0") if line.startswith("MN_"))


@dataclass(frozen=True)
class ControlPlane:
    url: str
    env: dict[str, str]  # the stack's settings it runs with
    log: Path


@pytest.fixture(scope="module")
def control_plane(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    home = tmp_path_factory.mktemp("stack-control-plane")
    settings = stack_env(stack, home)
    role = stack.client("sts").assume_role(
        RoleArn=stack.outputs["ControlPlaneRoleArn"], RoleSessionName="mn-e2e-control-plane"
    )["Credentials"]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    aws = {
        "AWS_ENDPOINT_URL": stack.endpoint,
        "AWS_ENDPOINT_URL_DYNAMODB": stack.dynamodb,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    env = {
        **os.environ,
        **settings,
        **aws,
        "AWS_ACCESS_KEY_ID": role["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": role["SecretAccessKey"],
        "AWS_SESSION_TOKEN": role["SessionToken"],
        "MN_HOME": str(home),
        "MN_SERVER_DATABASE_URL": f"sqlite:///{home / 'controlplane.db'}",
        "MN_SERVER_HOST": "127.0.0.1",
        "MN_SERVER_PORT": str(port),
        "MN_SERVER_PUBLIC_URL": url,
        "MN_SERVER_API_KEY": API_KEY,
        # Real VMs install the package and power off when orphaned; local ones must not.
        "MN_SERVER_AGENT_INSTALL_COMMAND": "",
        "MN_SERVER_AGENT_EXTRA_ENV": json.dumps({"MN_AGENT_CACHE_DIR": str(home / "cache")}),
        # Where processes using mn.get_dict find S3 and DynamoDB.
        "MN_SERVER_DICT_ENDPOINT_URL": stack.endpoint,
        "MN_SERVER_DICT_DYNAMODB_ENDPOINT_URL": stack.dynamodb,
        **TIMINGS,
    }
    runner_env = {
        **os.environ,
        **aws,
        "MN_VM_CLUSTER": settings["MN_SERVER_CLUSTER"],
        "MN_VM_STATE_DIR": str(home / "vms"),
        # VMs in network namespaces reach this port through the runner's relay (the
        # AWS_ENDPOINT_URL* ports are relayed on their own).
        "MN_VM_RELAY_PORTS": str(port),
    }
    log = home / "controlplane.log"
    with running(
        [sys.executable, "-m", "multinode_controlplane"],
        ready_url=f"{url}/v1/health",
        log=log,
        env=env,
    ):
        runner = _start_vm_runner(runner_env, home / "vmrunner.log")
        try:
            yield ControlPlane(url=url, env=settings, log=log)
        finally:
            stop_process(runner)


def _start_vm_runner(env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "multinode_provisioner.vmrunner"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    wait_until(lambda: log.stat().st_size > 0, timeout=30, what="the VM runner to start")
    return proc


@pytest.fixture
def as_user(control_plane: ControlPlane, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process uses the stack's control plane, as a team member after `mn login`."""
    monkeypatch.setenv("MN_URL", control_plane.url)
    monkeypatch.setenv("MN_API_KEY", API_KEY)


def _deploy(tmp_path: Path, app: str) -> None:
    import multinode as mn

    path = tmp_path / "app.py"
    path.write_text(APP)
    mn.deploy(path, name=app)


def test_the_stack_outputs_configure_a_control_plane_that_passes_its_check(
    stack: Stack, control_plane: ControlPlane
) -> None:
    def aws() -> dict[str, Any]:
        return httpx.get(f"{control_plane.url}/v1/health", timeout=5).json()["aws"]

    wait_until(lambda: aws()["status"] != "pending", timeout=60, what="the start-up check")
    result = aws()
    assert result["problems"] == [], result
    assert result["checked"] == [
        "AWS credentials",
        "dict table",
        "dict bucket",
        "dict role",
        "AMI",
        "subnet",
        f"security group {stack.outputs['MnAwsSecurityGroupIds']}",
        "instance profile",
        "launch template",
        "launch (dry run)",
        "list instances (dry run)",
    ]
    assert control_plane.env["MN_SERVER_DICT_CREATE_RESOURCES"] == "false"


def test_the_check_command_agrees(stack: Stack, control_plane: ControlPlane) -> None:
    env = {**os.environ, **control_plane.env, "AWS_ENDPOINT_URL": stack.endpoint}
    env["AWS_ENDPOINT_URL_DYNAMODB"] = stack.dynamodb
    done = subprocess.run(
        [sys.executable, "-m", "multinode_controlplane", "--check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dict_credentials_are_vended_through_the_stacks_role(
    stack: Stack, control_plane: ControlPlane, as_user: None, tmp_path: Path
) -> None:
    import multinode as mn

    app = "infra-" + uuid.uuid4().hex[:6]
    _deploy(tmp_path, app)
    vended = httpx.post(
        f"{control_plane.url}/v1/apps/{app}/dict-credentials",
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=30,
    ).json()
    session = {
        "aws_access_key_id": vended["access_key_id"],
        "aws_secret_access_key": vended["secret_access_key"],
        "aws_session_token": vended["session_token"],
    }
    who = stack.client("sts", **session).get_caller_identity()["Arn"]
    role_name = stack.outputs["MnServerDictRoleArn"].rsplit("/", 1)[-1]
    assert who.endswith(f":assumed-role/{role_name}/mn-dict-{app}")
    assert vended["table"] == stack.outputs["MnServerDictTable"]
    assert vended["bucket"] == stack.outputs["MnServerDictBucket"]

    scores = mn.get_dict("scores", app=app)
    scores["small"] = 1
    scores["large"] = b"x" * 400_000  # over the item limit: an object in the stack's bucket
    assert scores["small"] == 1 and scores["large"] == b"x" * 400_000
    objects = stack.client("s3").list_objects_v2(
        Bucket=stack.outputs["MnServerDictBucket"], Prefix=f"{app}/scores/"
    )
    assert objects["KeyCount"] == 1


def test_a_call_runs_on_an_instance_launched_with_the_stacks_settings(
    stack: Stack, control_plane: ControlPlane, as_user: None, tmp_path: Path
) -> None:
    import multinode as mn

    app = "infra-" + uuid.uuid4().hex[:6]
    _deploy(tmp_path, app)
    assert mn.get_function(app, "double").call(21) == 42
    assert mn.get_dict("results", app=app)[21] == 42  # written on the VM

    reservations = stack.client("ec2").describe_instances(
        Filters=[
            {"Name": "tag:mn:cluster", "Values": [stack.outputs["MnServerCluster"]]},
            {"Name": "tag:mn:app", "Values": [app]},
        ]
    )["Reservations"]
    [instance] = [i for r in reservations for i in r["Instances"]]
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert instance["ImageId"] == stack.outputs["MnAwsAmiId"]
    assert instance["SubnetId"] == stack.outputs["MnAwsSubnetId"]
    assert [g["GroupId"] for g in instance["SecurityGroups"]] == [
        stack.outputs["MnAwsSecurityGroupIds"]
    ]
    assert instance["IamInstanceProfile"]["Arn"] == stack.outputs["MnAwsInstanceProfileArn"]
    assert instance["MetadataOptions"]["HttpTokens"] == "required"
    assert tags["aws:ec2launchtemplate:id"] == stack.outputs["MnAwsLaunchTemplateId"]

    # Undeploying ends the instance: the control plane's role may terminate its own.
    headers = {"Authorization": f"Bearer {API_KEY}"}
    httpx.delete(f"{control_plane.url}/v1/apps/{app}", headers=headers, timeout=30)
    ec2 = stack.client("ec2")

    def state() -> str:
        described = ec2.describe_instances(InstanceIds=[instance["InstanceId"]])
        return described["Reservations"][0]["Instances"][0]["State"]["Name"]

    wait_until(lambda: state() == "terminated", timeout=60, what="the instance to end")
