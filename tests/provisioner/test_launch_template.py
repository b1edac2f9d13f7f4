"""Launches from the launch template named by MN_AWS_LAUNCH_TEMPLATE_ID, against the real
emulator: the instance records the template and version it came from, and the explicit
settings still apply on top of it."""

from __future__ import annotations

from typing import Any

import pytest

from multinode_provisioner.aws import EC2Compute
from multinode_provisioner.compute import TAG_CLUSTER, LaunchRequest
from multinode_provisioner.settings import LOCAL_AMI, AwsSettings


@pytest.fixture
def template(ec2: Any, cluster: str) -> str:
    created = ec2.create_launch_template(
        LaunchTemplateName=cluster,
        LaunchTemplateData={
            "ImageId": LOCAL_AMI,
            "MetadataOptions": {"HttpTokens": "required"},
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": [{"Key": "team", "Value": "ml"}]}
            ],
        },
    )
    return created["LaunchTemplate"]["LaunchTemplateId"]


def test_launches_start_from_the_template(settings: AwsSettings, ec2: Any, template: str) -> None:
    settings = settings.model_copy(update={"launch_template_id": template})
    instance = EC2Compute(settings).launch(
        LaunchRequest(instance_type="t3.micro", launch_token="tok-lt", user_data="#!/bin/bash\n")
    )
    raw = ec2.describe_instances(InstanceIds=[instance.cloud_id])["Reservations"][0]
    tags = {t["Key"]: t["Value"] for t in raw["Instances"][0]["Tags"]}
    assert tags["aws:ec2launchtemplate:id"] == template
    assert tags["aws:ec2launchtemplate:version"] == "1"  # $Default
    assert tags["team"] == "ml"  # from the template
    assert tags[TAG_CLUSTER] == settings.cluster  # ours, on top
    assert raw["Instances"][0]["InstanceType"] == "t3.micro"


def test_the_template_version_is_a_setting(settings: AwsSettings, template: str) -> None:
    settings = settings.model_copy(
        update={"launch_template_id": template, "launch_template_version": "$Latest"}
    )
    params = EC2Compute(settings).run_params(
        LaunchRequest(instance_type="t3.micro", launch_token="tok", user_data="")
    )
    assert params["LaunchTemplate"] == {"LaunchTemplateId": template, "Version": "$Latest"}


def test_no_template_is_named_by_default(settings: AwsSettings) -> None:
    params = EC2Compute(settings).run_params(
        LaunchRequest(instance_type="t3.micro", launch_token="tok", user_data="")
    )
    assert "LaunchTemplate" not in params
