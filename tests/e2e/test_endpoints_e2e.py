"""Where DynamoDB traffic goes: every process of a local cloud uses the endpoint `mn up`
chose, whatever the caller's own ``AWS_ENDPOINT_URL_DYNAMODB`` says, except that beside
LocalStack the caller's variable is how a user picks DynamoDB (LocalStack's own in Docker)."""

from __future__ import annotations

import boto3
import pytest

import multinode as mn
from tests.e2e.conftest import AwsTarget, started_local_cloud

pytestmark = pytest.mark.e2e

APP = """
import multinode as mn

@mn.function(cpu=0.25, cooldown=30)
def remember(value):
    mn.get_dict(name="notes")["from-vm"] = value
    return value
"""


def _holds(endpoint: str, pk: str, sk: str) -> bool:
    dynamodb = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
    try:
        item = dynamodb.get_item(
            TableName="multinode-dicts", Key={"pk": {"S": pk}, "sk": {"S": sk}}
        )
    except dynamodb.exceptions.ResourceNotFoundException:
        return False
    return "Item" in item


def test_dynamodb_goes_where_mn_up_says_from_the_callers_machine_and_the_vms(
    aws_target: AwsTarget,
    aws_endpoint: str,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    write_app,
    app_name: str,
) -> None:
    # A DynamoDB endpoint of the caller's: the session's own emulator server.
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", aws_endpoint)
    with started_local_cloud(tmp_path_factory.mktemp("mn-home-endpoints"), aws_target) as state:
        monkeypatch.setenv("MN_URL", state["url"])
        monkeypatch.setenv("MN_API_KEY", state["api_key"])
        mn.deploy(write_app(APP), name=app_name)
        mn.get_dict("notes", app=app_name)["from-caller"] = 1
        assert mn.get_function(app_name, "remember").call(2) == 2

        keys = ("s:from-caller", "s:from-vm")
        if aws_target.name == "localstack":
            # The caller chose DynamoDB beside LocalStack: no emulator was started for it.
            assert "dynamodb" not in state["processes"]
            assert all(_holds(aws_endpoint, f"{app_name}#notes", sk) for sk in keys)
        else:
            # The local cloud's own emulator, not the caller's endpoint.
            assert all(_holds(state["aws_endpoint"], f"{app_name}#notes", sk) for sk in keys)
            assert not any(_holds(aws_endpoint, f"{app_name}#notes", sk) for sk in keys)
