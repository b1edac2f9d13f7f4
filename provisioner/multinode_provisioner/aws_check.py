"""Checking an AWS target before relying on it: does what the settings name exist, and may
these credentials use it?

Each item is checked on its own and a failure never stops the others, so one report names
everything that is missing. Nothing is created or launched: launches are asked with
``DryRun``, which AWS answers with ``DryRunOperation`` when the request would have been
allowed (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/CommonParameters.html).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from multinode import wire
from multinode._aws_check import DENIED_CODES, Checklist, error_code
from multinode_provisioner.compute import TAG_APP, LaunchRequest

# Any type the region offers will do: a dry run launches nothing.
CHECK_INSTANCE_TYPE = "t3.micro"
CHECK_NAME = "mn-startup-check"


def check_ec2(compute: Any, *, iam: Any = None) -> wire.AwsCheck:
    """Check an :class:`~multinode_provisioner.aws.EC2Compute`'s settings against EC2.

    Items: the AMI, subnet, security groups, instance profile and launch template named
    by ``MN_AWS_*`` (those that are set), then a ``DryRun`` launch exactly as the
    provisioner would launch (tags, profile, template), and a ``DryRun`` listing. The
    right to terminate is not checked: EC2 evaluates it only against a real instance.

    Args:
        compute: the EC2 compute whose client and settings are checked.
        iam: an IAM client for the instance profile; default: one from boto3's defaults.
    """
    s = compute.settings
    ec2 = compute.client
    checks = Checklist()
    checks.run("AMI", "MN_AWS_AMI_ID", lambda: _image(ec2, s.ami_id))
    subnet_vpc: list[str] = []
    if s.subnet_id:
        checks.run("subnet", "MN_AWS_SUBNET_ID", lambda: _subnet(ec2, s.subnet_id, subnet_vpc))
    for group in s.security_group_ids:
        checks.run(
            f"security group {group}",
            "MN_AWS_SECURITY_GROUP_IDS",
            lambda group=group: _security_group(ec2, group, subnet_vpc),
        )
    if s.instance_profile_arn:
        checks.run(
            "instance profile",
            "MN_AWS_INSTANCE_PROFILE_ARN",
            lambda: _instance_profile(iam or _iam_client(ec2), s.instance_profile_arn),
        )
    if s.launch_template_id:
        checks.run(
            "launch template",
            "MN_AWS_LAUNCH_TEMPLATE_ID",
            lambda: _launch_template(ec2, s.launch_template_id),
        )
    checks.run("launch (dry run)", None, lambda: _dry_run_launch(compute))
    checks.run("list instances (dry run)", None, lambda: _dry_run_list(ec2))
    return checks.result()


# ---------------------------------------------------------------------------- items


def _image(ec2: Any, ami_id: str) -> str | None:
    try:
        images = ec2.describe_images(ImageIds=[ami_id]).get("Images", [])
    except Exception as exc:
        if not error_code(exc).startswith("InvalidAMIID"):
            raise
        images = []
    if not images:
        return f"image {ami_id} does not exist in {ec2.meta.region_name}; set MN_AWS_AMI_ID to one that does"
    return None


def _subnet(ec2: Any, subnet_id: str, vpc_out: list[str]) -> str | None:
    try:
        subnets = ec2.describe_subnets(SubnetIds=[subnet_id]).get("Subnets", [])
    except Exception as exc:
        if not error_code(exc).startswith("InvalidSubnetID"):
            raise
        subnets = []
    if not subnets:
        return f"subnet {subnet_id} does not exist in {ec2.meta.region_name}; set MN_AWS_SUBNET_ID"
    vpc_out.append(subnets[0].get("VpcId", ""))
    return None


def _security_group(ec2: Any, group_id: str, subnet_vpc: list[str]) -> str | None:
    try:
        groups = ec2.describe_security_groups(GroupIds=[group_id]).get("SecurityGroups", [])
    except Exception as exc:
        if not error_code(exc).startswith(("InvalidGroup", "InvalidGroupId")):
            raise
        groups = []
    if not groups:
        return f"security group {group_id} does not exist; fix MN_AWS_SECURITY_GROUP_IDS"
    vpc = groups[0].get("VpcId")
    if subnet_vpc and vpc and vpc != subnet_vpc[0]:
        return (
            f"security group {group_id} is in {vpc} but the subnet is in {subnet_vpc[0]}; "
            "use groups of the subnet's VPC"
        )
    return None


def _instance_profile(iam: Any, arn: str) -> str | None:
    name = arn.rsplit("/", 1)[-1]
    try:
        profile = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    except Exception as exc:
        if error_code(exc) != "NoSuchEntity":
            raise
        return f"instance profile {name} does not exist; fix MN_AWS_INSTANCE_PROFILE_ARN"
    if profile.get("Arn") and profile["Arn"] != arn:
        return f"instance profile {name} has the ARN {profile['Arn']}, not {arn}"
    if not profile.get("Roles"):
        return f"instance profile {name} holds no role; add the agents' role to it"
    return None


def _launch_template(ec2: Any, template_id: str) -> str | None:
    try:
        found = ec2.describe_launch_templates(LaunchTemplateIds=[template_id])
    except Exception as exc:
        if not error_code(exc).startswith("InvalidLaunchTemplate"):
            raise
        found = {}
    if not found.get("LaunchTemplates"):
        return f"launch template {template_id} does not exist; fix MN_AWS_LAUNCH_TEMPLATE_ID"
    return None


def _dry_run_launch(compute: Any) -> str | None:
    request = LaunchRequest(
        instance_type=CHECK_INSTANCE_TYPE,
        launch_token=CHECK_NAME,
        user_data="#!/bin/bash\n",
        tags={TAG_APP: CHECK_NAME},
    )
    params = compute.run_params(request)

    def launch() -> None:
        reply = compute.client.run_instances(**params, DryRun=True)
        # An endpoint that ignores DryRun has launched for real: end it at once.
        compute.terminate([i["InstanceId"] for i in reply.get("Instances", [])])

    return _expect_dry_run(
        launch,
        denied=(
            "the control plane may not launch agents as configured ({detail}). It needs "
            "ec2:RunInstances on instances and volumes tagged mn:cluster="
            f"{compute.settings.cluster}, on the AMI, subnet, security groups and launch "
            "template, ec2:CreateTags while launching, and iam:PassRole on the agents' role"
        ),
    )


def _dry_run_list(ec2: Any) -> str | None:
    return _expect_dry_run(
        lambda: ec2.describe_instances(DryRun=True),
        denied="the control plane may not list instances ({detail}); grant ec2:DescribeInstances",
    )


def _expect_dry_run(call: Callable[[], Any], *, denied: str) -> str | None:
    try:
        call()
    except Exception as exc:
        code = error_code(exc)
        if code == "DryRunOperation":
            return None
        if code in DENIED_CODES:
            return denied.format(detail=code)
        raise
    return None  # an endpoint that ignores DryRun answered as if it had run


def _iam_client(ec2: Any) -> Any:
    """An IAM client from boto3's defaults (AWS_ENDPOINT_URL honoured), in EC2's region."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "iam",
        region_name=ec2.meta.region_name,
        config=Config(retries={"mode": "standard", "max_attempts": 2}, connect_timeout=5),
    )
