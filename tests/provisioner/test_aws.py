"""EC2Compute against the real emulator, and its retry policy against stubbed errors."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from multinode_provisioner.aws import EC2Compute, classify_error, make_ec2_client
from multinode_provisioner.compute import (
    TAG_APP,
    TAG_CLUSTER,
    TAG_LAUNCH_TOKEN,
    CapacityError,
    CloudConfigError,
    LaunchRequest,
    TransientCloudError,
)
from multinode_provisioner.settings import LOCAL_AMI, AwsSettings
from tests.support.procs import free_port


def _request(token: str, **tags: str) -> LaunchRequest:
    return LaunchRequest(
        instance_type="t3.micro",
        launch_token=token,
        user_data="#!/bin/bash\necho hello\n",
        tags=tags,
    )


def _describe(ec2: Any, instance_id: str) -> dict[str, Any]:
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


# -- against the real emulator -------------------------------------------------------------


def test_launch_sets_tags_imdsv2_shutdown_and_user_data(settings: AwsSettings, ec2: Any) -> None:
    settings = settings.model_copy(update={"extra_tags": {"team": "ml", TAG_APP: "overridden"}})
    compute = EC2Compute(settings)
    inst = compute.launch(_request("tok-launch-1", **{TAG_APP: "demo"}))

    raw = _describe(ec2, inst.cloud_id)
    tags = {t["Key"]: t["Value"] for t in raw["Tags"]}
    assert tags == {
        TAG_APP: "demo",  # the launch's tags win over the settings' extra tags
        "team": "ml",
        TAG_CLUSTER: settings.cluster,
        TAG_LAUNCH_TOKEN: "tok-launch-1",
        "Name": f"multinode-{settings.cluster}-demo",
    }
    assert inst.tags == tags and inst.instance_type == "t3.micro" and inst.private_ip
    assert raw["ImageId"] == LOCAL_AMI
    assert raw["MetadataOptions"]["HttpTokens"] == "required"
    assert raw["MetadataOptions"]["HttpEndpoint"] == "enabled"
    user_data = ec2.describe_instance_attribute(InstanceId=inst.cloud_id, Attribute="userData")
    assert base64.b64decode(user_data["UserData"]["Value"]) == b"#!/bin/bash\necho hello\n"
    behaviour = ec2.describe_instance_attribute(
        InstanceId=inst.cloud_id, Attribute="instanceInitiatedShutdownBehavior"
    )
    assert behaviour["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"


def test_same_launch_token_returns_the_same_instance(settings: AwsSettings) -> None:
    compute = EC2Compute(settings)
    first = compute.launch(_request("tok-idem"))
    again = compute.launch(_request("tok-idem"))
    other = compute.launch(_request("tok-other"))
    assert again.cloud_id == first.cloud_id
    assert other.cloud_id != first.cloud_id
    assert sorted(i.cloud_id for i in compute.list_instances()) == sorted(
        [first.cloud_id, other.cloud_id]
    )


def test_terminate_is_a_noop_for_unknown_and_terminated_ids(
    settings: AwsSettings, ec2: Any
) -> None:
    compute = EC2Compute(settings)
    a = compute.launch(_request("tok-a"))
    b = compute.launch(_request("tok-b"))
    compute.terminate(["i-0123456789abcdef0"])  # unknown alone
    compute.terminate([])
    compute.terminate([a.cloud_id, "i-0fedcba9876543210"])  # known mixed with unknown
    assert _describe(ec2, a.cloud_id)["State"]["Name"] in ("shutting-down", "terminated")
    assert _describe(ec2, b.cloud_id)["State"]["Name"] == "running"
    compute.terminate([a.cloud_id])  # already terminated
    assert [i.cloud_id for i in compute.list_instances()] == [b.cloud_id]


def test_list_instances_is_scoped_to_the_cluster_and_live(settings: AwsSettings) -> None:
    mine = EC2Compute(settings)
    theirs = EC2Compute(settings.model_copy(update={"cluster": settings.cluster + "-other"}))
    kept = mine.launch(_request("tok-kept"))
    ended = mine.launch(_request("tok-ended"))
    foreign = theirs.launch(_request("tok-kept"))  # same token in another cluster is another launch
    assert foreign.cloud_id != kept.cloud_id
    mine.terminate([ended.cloud_id])
    listed = mine.list_instances()
    assert [i.cloud_id for i in listed] == [kept.cloud_id]
    assert (
        listed[0].state in ("pending", "running")
        and listed[0].tags[TAG_CLUSTER] == settings.cluster
    )
    assert [i.cloud_id for i in theirs.list_instances()] == [foreign.cloud_id]


def test_a_relaunch_after_termination_gets_a_new_instance(settings: AwsSettings) -> None:
    compute = EC2Compute(settings)
    first = compute.launch(_request("tok-re"))
    compute.terminate([first.cloud_id])
    assert compute.launch(_request("tok-re")).cloud_id != first.cloud_id


def test_bad_subnet_is_a_config_error(settings: AwsSettings) -> None:
    compute = EC2Compute(settings.model_copy(update={"subnet_id": "subnet-00000000deadbeef"}))
    with pytest.raises(CloudConfigError, match="MN_AWS_"):
        compute.launch(_request("tok-bad-subnet"))


def test_boto3_honours_aws_endpoint_url(
    aws_endpoint: str, cluster: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws_endpoint)
    compute = EC2Compute(AwsSettings(ami_id=LOCAL_AMI, cluster=cluster))
    inst = compute.launch(_request("tok-env"))
    assert [i.cloud_id for i in compute.list_instances()] == [inst.cloud_id]


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MN_AWS_AMI_ID", "ami-1")
    monkeypatch.setenv("MN_AWS_CLUSTER", "prod")
    monkeypatch.setenv("MN_AWS_SECURITY_GROUP_IDS", "sg-1, sg-2")
    monkeypatch.setenv("MN_AWS_EXTRA_TAGS", "team=ml,cost=42")
    monkeypatch.setenv("MN_AWS_RETRY_BUDGET_S", "3")
    s = AwsSettings()
    assert (s.ami_id, s.cluster, s.security_group_ids) == ("ami-1", "prod", ("sg-1", "sg-2"))
    assert s.extra_tags == {"team": "ml", "cost": "42"} and s.retry_budget_s == 3
    monkeypatch.setenv("MN_AWS_SECURITY_GROUP_IDS", '["sg-3"]')
    monkeypatch.setenv("MN_AWS_EXTRA_TAGS", '{"a": "b"}')
    assert AwsSettings().security_group_ids == ("sg-3",) and AwsSettings().extra_tags == {"a": "b"}


# -- retry policy, with errors the emulator cannot produce on demand -------------------------


@pytest.fixture
def stubbed() -> tuple[EC2Compute, Stubber, list[float]]:
    # The endpoint is never contacted: the Stubber answers every call.
    client = make_ec2_client(region="us-east-1", endpoint_url="http://127.0.0.1:9")
    sleeps: list[float] = []
    settings = AwsSettings(
        ami_id=LOCAL_AMI, cluster="stub", retry_base_s=0.5, retry_max_backoff_s=4
    )
    compute = EC2Compute(settings, client=client, sleep=sleeps.append)
    with Stubber(client) as stubber:
        yield compute, stubber, sleeps


_RUNNING = {
    "Instances": [
        {
            "InstanceId": "i-0000000000000001",
            "InstanceType": "t3.micro",
            "State": {"Code": 0, "Name": "pending"},
            "Tags": [{"Key": TAG_CLUSTER, "Value": "stub"}],
        }
    ]
}


def test_throttling_is_retried_with_jittered_backoff(
    stubbed: tuple[EC2Compute, Stubber, list[float]],
) -> None:
    compute, stubber, sleeps = stubbed
    for _ in range(2):
        stubber.add_response("describe_instances", {"Reservations": []})
        stubber.add_client_error(
            "run_instances", service_error_code="RequestLimitExceeded", http_status_code=503
        )
    stubber.add_response("describe_instances", {"Reservations": []})
    stubber.add_response("run_instances", _RUNNING)

    inst = compute.launch(_request("tok-throttled"))

    assert inst.cloud_id == "i-0000000000000001"
    stubber.assert_no_pending_responses()
    assert len(sleeps) == 2
    assert 0 <= sleeps[0] <= 0.5 and 0 <= sleeps[1] <= 1.0  # full jitter under a doubling ceiling


def test_capacity_error_is_raised_after_exactly_one_call(
    stubbed: tuple[EC2Compute, Stubber, list[float]],
) -> None:
    compute, stubber, sleeps = stubbed
    stubber.add_response("describe_instances", {"Reservations": []})
    stubber.add_client_error(
        "run_instances", service_error_code="InsufficientInstanceCapacity", http_status_code=500
    )

    with pytest.raises(CapacityError) as caught:
        compute.launch(_request("tok-full"))

    stubber.assert_no_pending_responses()
    assert sleeps == []
    assert caught.value.details == {
        "aws_code": "InsufficientInstanceCapacity",
        "instance_type": "t3.micro",
    }


@pytest.mark.parametrize(
    "code", ["UnauthorizedOperation", "InvalidAMIID.NotFound", "InvalidParameterValue"]
)
def test_config_errors_are_not_retried(
    stubbed: tuple[EC2Compute, Stubber, list[float]], code: str
) -> None:
    compute, stubber, sleeps = stubbed
    stubber.add_response("describe_instances", {"Reservations": []})
    stubber.add_client_error("run_instances", service_error_code=code, http_status_code=400)
    with pytest.raises(CloudConfigError, match=code):
        compute.launch(_request("tok-config"))
    stubber.assert_no_pending_responses()
    assert sleeps == []


def test_connection_errors_retry_until_the_budget_then_raise_transient(cluster: str) -> None:
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        time.sleep(seconds)  # a few ms of real backoff: the budget runs on the real clock

    settings = AwsSettings(
        ami_id=LOCAL_AMI,
        cluster=cluster,
        endpoint_url=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        retry_budget_s=0.3,
        retry_base_s=0.01,
        retry_max_backoff_s=0.05,
    )
    with pytest.raises(TransientCloudError, match="retry budget"):
        EC2Compute(settings, sleep=sleep).list_instances()
    assert len(sleeps) >= 2


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("Throttling", 400, "transient"),
        ("ServiceUnavailable", 503, "transient"),
        ("SomethingNew", 503, "transient"),
        ("Unsupported", 400, "capacity"),
        ("InstanceLimitExceeded", 400, "capacity"),
        ("InvalidInstanceType", 400, "config"),
        ("InvalidAMIID.Malformed", 400, "config"),
    ],
)
def test_error_classification(code: str, status: int, kind: str) -> None:
    exc = ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "Op",
    )
    assert classify_error(exc) == kind
    assert classify_error(ValueError("not ec2")) is None
