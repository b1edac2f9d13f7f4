"""Fixtures of the provisioner tests: EC2 clients and settings against the real emulator."""

from __future__ import annotations

import os
import shutil
import uuid
from typing import Any

import pytest

from multinode_provisioner.aws import make_ec2_client
from multinode_provisioner.settings import LOCAL_AMI, AwsSettings

# Namespaces need root and iproute2; CI runs as root and must exercise them.
CAN_NAMESPACE = os.geteuid() == 0 and shutil.which("ip") is not None
needs_namespaces = pytest.mark.skipif(
    not CAN_NAMESPACE and os.environ.get("CI") != "true",
    reason="network namespaces need root and iproute2",
)
# The VM runner's modes every runner test runs in.
ISOLATIONS = [pytest.param("namespaces", marks=needs_namespaces), "processes"]


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
