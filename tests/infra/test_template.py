"""infra/multinode.yaml: it lints clean, its outputs are the control plane's settings (and
the host runs with the same values), launches require IMDSv2, and the security groups
let nothing reach agents but the control plane and service users."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from multinode_controlplane.settings import ServerSettings
from multinode_provisioner.settings import AwsSettings
from tests.infra.template import TEMPLATE, Rendered, render

AWK = Path(__file__).resolve().parents[2] / "infra" / "outputs-to-env.awk"


def test_cfn_lint_finds_nothing() -> None:
    # I1022 ("prefer Sub over Join") is ignored on purpose: the policy variables in IAM
    # resources are written with Join because LocalStack's CloudFormation cannot read the
    # ${!...} escape that Sub would need.
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("cfn-lint")),
            "--include-checks",
            "I",
            "--ignore-checks",
            "I1022",
            "--",
            str(TEMPLATE),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def env_name(output: str) -> str:
    """MnAwsAmiId -> MN_AWS_AMI_ID (what infra/outputs-to-env.awk does)."""
    return re.sub(r"(?<!^)([A-Z])", r"_\1", output).upper()


def settings_names() -> set[str]:
    return {f"MN_SERVER_{f.upper()}" for f in ServerSettings.model_fields} | {
        f"MN_AWS_{f.upper()}" for f in AwsSettings.model_fields
    }


@pytest.mark.parametrize("host", ["ec2", "none"])
def test_every_mn_output_is_a_setting_of_the_control_plane(host: str) -> None:
    outputs = render({"ControlPlaneHost": host}).outputs
    names = {env_name(name) for name in outputs if name.startswith("Mn")}
    assert names <= settings_names(), names - settings_names()
    # What a control plane needs from the stack is all there.
    assert {
        "MN_SERVER_CLUSTER",
        "MN_SERVER_DICT_TABLE",
        "MN_SERVER_DICT_BUCKET",
        "MN_SERVER_DICT_ROLE_ARN",
        "MN_SERVER_DICT_CREATE_RESOURCES",
        "MN_SERVER_AGENT_INSTALL_COMMAND",
        "MN_AWS_REGION",
        "MN_AWS_AMI_ID",
        "MN_AWS_SUBNET_ID",
        "MN_AWS_SECURITY_GROUP_IDS",
        "MN_AWS_INSTANCE_PROFILE_ARN",
        "MN_AWS_LAUNCH_TEMPLATE_ID",
    } <= names
    assert ("MN_SERVER_PUBLIC_URL" in names) == (host == "ec2")


def test_the_outputs_become_an_env_file_the_settings_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = render()
    # As `aws cloudformation describe-stacks --query ... --output text` prints them.
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
    env = dict(line.split("=", 1) for line in sourced.split("\0") if line.startswith("MN_"))
    assert env == {env_name(k): v for k, v in stack.outputs.items() if k.startswith("Mn")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    aws = AwsSettings()  # type: ignore[call-arg]
    server = ServerSettings()
    assert aws.security_group_ids == (stack.ref("AgentSecurityGroup"),)
    assert aws.launch_template_id == stack.ref("AgentLaunchTemplate")
    assert server.dict_role_arn == stack.arn("DictRole")
    assert server.dict_create_resources is False
    assert server.agent_extra_env == {"MN_AGENT_SHUTDOWN_COMMAND": "shutdown -h now"}


def host_env(stack: Rendered) -> dict[str, str]:
    """The settings the host's user-data writes to /etc/multinode/server.env."""
    script = stack.properties("ControlPlaneInstance")["UserData"]
    body = script.split("cat > /etc/multinode/server.env <<EOF\n", 1)[1].split("\nEOF\n", 1)[0]
    return {k: v.strip("'") for k, v in (line.split("=", 1) for line in body.splitlines())}


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
@pytest.mark.parametrize("table", ["", "existing-table"])
def test_the_host_runs_with_the_outputs_settings(engine: str, table: str) -> None:
    stack = render({"DatabaseEngine": engine, "DictTableName": table})
    env = host_env(stack)
    for name, value in stack.outputs.items():
        if name.startswith("Mn") and name != "MnServerPublicUrl":
            assert env[env_name(name)] == value, name
    # What only the host knows, found at boot.
    assert env["MN_SERVER_PUBLIC_URL"] == "http://$address:7600"
    assert env["MN_SERVER_API_KEY"] == "$api_key"
    assert env["MN_SERVER_DATABASE_URL"] == "$database_url"
    script = stack.properties("ControlPlaneInstance")["UserData"]
    if engine == "postgresql":
        assert "database_url=$(secret " + stack.ref("DatabaseSecret") in script
    else:
        assert "database_url=sqlite:////var/lib/multinode/controlplane.db" in script


def test_no_host_no_database_no_host_resources() -> None:
    stack = render({"ControlPlaneHost": "none"})
    for absent in ("ControlPlaneInstance", "HostLaunchTemplate", "Database"):
        assert absent not in stack.resources
    assert "ControlPlaneRole" in stack.resources and "ApiKeySecret" in stack.resources
    with_rds = render({"DatabaseEngine": "postgresql"})
    assert with_rds.properties("Database")["PubliclyAccessible"] is False
    assert with_rds.properties("Database")["StorageEncrypted"] is True


@pytest.mark.parametrize("template", ["AgentLaunchTemplate", "HostLaunchTemplate"])
def test_launch_templates_require_imdsv2(template: str) -> None:
    data = render().properties(template)["LaunchTemplateData"]
    assert data["MetadataOptions"] == {
        "HttpTokens": "required",
        "HttpEndpoint": "enabled",
        "HttpPutResponseHopLimit": 1,
    }
    assert all(d["Ebs"]["Encrypted"] is True for d in data["BlockDeviceMappings"])


def test_agent_launch_template_is_the_agents() -> None:
    stack = render()
    data = stack.properties("AgentLaunchTemplate")["LaunchTemplateData"]
    assert data["IamInstanceProfile"] == {"Arn": stack.arn("AgentInstanceProfile")}
    assert data["SecurityGroupIds"] == [stack.ref("AgentSecurityGroup")]
    assert data["InstanceInitiatedShutdownBehavior"] == "terminate"


def rules(stack: Rendered, group: str, direction: str) -> list[dict]:
    """Every ingress or egress rule of ``group``: inline and separate resources."""
    kind = {"ingress": "AWS::EC2::SecurityGroupIngress", "egress": "AWS::EC2::SecurityGroupEgress"}
    inline = "SecurityGroupIngress" if direction == "ingress" else "SecurityGroupEgress"
    found = list(stack.properties(group).get(inline, []))
    found += [
        r["Properties"]
        for r in stack.resources.values()
        if r["Type"] == kind[direction] and r["Properties"]["GroupId"] == stack.ref(group)
    ]
    return [
        {k: v for k, v in rule.items() if k not in ("GroupId", "Description")} for rule in found
    ]


@pytest.mark.parametrize("open_to_users", [False, True])
def test_nothing_reaches_agents_but_the_control_plane_and_service_users(
    open_to_users: bool,
) -> None:
    params = {"ServicePortFrom": "8000", "ServicePortTo": "8080"}
    if open_to_users:
        params["ServiceIngressCidr"] = "203.0.113.0/24"
    stack = render(params)
    services = {"IpProtocol": "tcp", "FromPort": "8000", "ToPort": "8080"}
    expected = [{**services, "SourceSecurityGroupId": stack.ref("ControlPlaneSecurityGroup")}]
    if open_to_users:
        expected.append({**services, "CidrIp": "203.0.113.0/24"})
    assert rules(stack, "AgentSecurityGroup", "ingress") == expected


def test_agents_reach_the_control_plane_and_https_only() -> None:
    stack = render()
    assert rules(stack, "AgentSecurityGroup", "egress") == [
        {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "CidrIp": "0.0.0.0/0"},
        {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "CidrIp": "0.0.0.0/0"},
        {
            "IpProtocol": "tcp",
            "FromPort": "7600",
            "ToPort": "7600",
            "DestinationSecurityGroupId": stack.ref("ControlPlaneSecurityGroup"),
        },
    ]


@pytest.mark.parametrize("team", ["", "198.51.100.7/32"])
def test_the_control_plane_is_reached_by_agents_and_the_team_only(team: str) -> None:
    stack = render({"ApiIngressCidr": team})
    port = {"IpProtocol": "tcp", "FromPort": "7600", "ToPort": "7600"}
    expected = [{**port, "SourceSecurityGroupId": stack.ref("AgentSecurityGroup")}]
    if team:
        expected.append({**port, "CidrIp": team})
    assert rules(stack, "ControlPlaneSecurityGroup", "ingress") == expected


def test_the_database_is_reached_by_the_control_plane_only() -> None:
    stack = render({"DatabaseEngine": "postgresql"})
    assert rules(stack, "DatabaseSecurityGroup", "ingress") == [
        {
            "IpProtocol": "tcp",
            "FromPort": 5432,
            "ToPort": 5432,
            "SourceSecurityGroupId": stack.ref("ControlPlaneSecurityGroup"),
        }
    ]


def test_data_outlives_the_stack() -> None:
    template = render({"DatabaseEngine": "postgresql"}).template["Resources"]
    for name in ("DictTable", "DictBucket", "DatabaseSecret"):
        assert template[name]["DeletionPolicy"] == "Retain", name
    assert template["Database"]["DeletionPolicy"] == "Snapshot"


@pytest.mark.parametrize("users", ["", "203.0.113.0/24"])
def test_the_gateway_on_the_host_is_reached_by_service_users_only(users: str) -> None:
    stack = render({"ServiceIngressCidr": users})
    gateway = {"IpProtocol": "tcp", "FromPort": "8080", "ToPort": "8080"}
    opened = [
        r for r in rules(stack, "ControlPlaneSecurityGroup", "ingress") if r["FromPort"] == "8080"
    ]
    assert opened == ([{**gateway, "CidrIp": users}] if users else [])
    env = host_env(stack)
    assert env["MN_SERVER_GATEWAY_URL"] == "http://$public:8080"
    script = stack.properties("ControlPlaneInstance")["UserData"]
    assert "ExecStart=/opt/multinode/bin/python -m multinode_controlplane.gateway" in script
    assert "systemctl enable --now multinode multinode-gateway" in script
