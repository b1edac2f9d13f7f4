"""Fixtures of the provisioner tests: EC2 clients and settings against the real emulator."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from multinode_provisioner.aws import make_ec2_client
from multinode_provisioner.settings import LOCAL_AMI, AwsSettings


@pytest.fixture
def ec2(aws_endpoint: str) -> Any:
    """A boto3 EC2 client of the session's moto server."""
    return make_ec2_client(region="us-east-1", endpoint_url=aws_endpoint)


@pytest.fixture
def cluster() -> str:
    """A cluster name no other test uses, so tests sharing the emulator never see each other."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def settings(aws_endpoint: str, cluster: str) -> AwsSettings:
    return AwsSettings(
        ami_id=LOCAL_AMI, region="us-east-1", endpoint_url=aws_endpoint, cluster=cluster
    )
