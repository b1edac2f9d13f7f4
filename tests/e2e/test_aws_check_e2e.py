"""The local cloud passes its own start-up check of the AWS target (the emulator with the
table, bucket and role it prepares, and the local AMI), without delaying its start."""

from __future__ import annotations

import httpx
import pytest

from tests.support.procs import wait_until

pytestmark = pytest.mark.e2e


def test_the_local_cloud_passes_its_aws_check(local_cloud: dict) -> None:
    def aws() -> dict:
        return httpx.get(f"{local_cloud['url']}/v1/health", timeout=5).json()["aws"]

    wait_until(lambda: aws()["status"] != "pending", timeout=30, what="the start-up check")
    result = aws()
    assert result["problems"] == [] and result["status"] == "ok"
    assert {"dict table", "dict bucket", "dict role", "AMI", "launch (dry run)"} <= set(
        result["checked"]
    )
