"""An AWS target made in the emulator the way an operator (or infra/multinode.yaml) would:
dict table, bucket and role; VPC, subnet, security group, instance profile, launch template."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import boto3

from multinode_controlplane.settings import ServerSettings
from multinode_provisioner.settings import LOCAL_AMI, AwsSettings

ABSENT = {
    "table": "mn-absent-table",
    "bucket": "mn-absent-bucket",
    "role_arn": "arn:aws:iam::123456789012:role/mn-absent-role",
    "ami": "ami-0000000000000000f",
    "subnet": "subnet-0000000000000000f",
    "group": "sg-0000000000000000f",
    "profile_arn": "arn:aws:iam::123456789012:instance-profile/mn-absent-profile",
    "template": "lt-0000000000000000f",
}


@dataclass(frozen=True)
class Target:
    endpoint: str
    cluster: str
    table: str
    bucket: str
    role_arn: str
    ami: str
    subnet: str
    group: str
    profile_arn: str
    template: str

    def server_settings(self, **overrides: Any) -> ServerSettings:
        """Control-plane settings naming this target, as the stack's outputs would."""
        values: dict[str, Any] = {
            "database_url": "sqlite:///unused",
            "cluster": self.cluster,
            "dict_table": self.table,
            "dict_bucket": self.bucket,
            "dict_role_arn": self.role_arn,
            "dict_create_resources": False,
            "dict_region": "us-east-1",
        }
        return ServerSettings(**{**values, **overrides})

    def aws_settings(self, **overrides: Any) -> AwsSettings:
        values: dict[str, Any] = {
            "ami_id": self.ami,
            "region": "us-east-1",
            "endpoint_url": self.endpoint,
            "cluster": self.cluster,
            "subnet_id": self.subnet,
            "security_group_ids": (self.group,),
            "instance_profile_arn": self.profile_arn,
            "launch_template_id": self.template,
        }
        return AwsSettings(**{**values, **overrides})


def make_target(endpoint: str) -> Target:
    """Create a complete target under names no other test uses."""
    suffix = uuid.uuid4().hex[:10]
    name = f"mn-check-{suffix}"

    def client(service: str) -> Any:
        # A new session reads the credentials in the environment now, not at first use.
        session = boto3.session.Session()
        return session.client(service, endpoint_url=endpoint, region_name="us-east-1")

    client("dynamodb").create_table(
        TableName=name,
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
    client("s3").create_bucket(Bucket=name)
    iam = client("iam")
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
                "Action": ["sts:AssumeRole", "sts:TagSession"],
            }
        ],
    }
    role_arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))["Role"][
        "Arn"
    ]
    agent_trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "ec2.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    iam.create_role(RoleName=f"{name}-agent", AssumeRolePolicyDocument=json.dumps(agent_trust))
    profile_arn = iam.create_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Arn"]
    iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=f"{name}-agent")
    ec2 = client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.90.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.90.0.0/20")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName=name, Description="agents", VpcId=vpc)["GroupId"]
    template = ec2.create_launch_template(
        LaunchTemplateName=name,
        LaunchTemplateData={"ImageId": LOCAL_AMI, "MetadataOptions": {"HttpTokens": "required"}},
    )["LaunchTemplate"]["LaunchTemplateId"]
    return Target(
        endpoint=endpoint,
        cluster=name,
        table=name,
        bucket=name,
        role_arn=role_arn,
        ami=LOCAL_AMI,
        subnet=subnet,
        group=group,
        profile_arn=profile_arn,
        template=template,
    )
