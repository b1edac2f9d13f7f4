"""What each role of infra/multinode.yaml can and cannot do, read from the template and
judged by IAM's evaluation logic (tests/infra/iam_eval.py)."""

from __future__ import annotations

from typing import Any

import pytest

from multinode_controlplane.services.dict_credentials import session_policy
from multinode_controlplane.services.dict_storage import (
    DYNAMODB_ITEM_ACTIONS,
    SESSION_TAG,
    DictResources,
)
from tests.infra.iam_eval import Request, allowed
from tests.infra.template import ACCOUNT, REGION, STACK, Rendered, policies_of, render, trust_of

EC2 = f"arn:aws:ec2:{REGION}:{ACCOUNT}"


@pytest.fixture(scope="module")
def stack() -> Rendered:
    return render({"DatabaseEngine": "postgresql"})


def can(stack: Rendered, role: str, action: str, resource: str = "*", **context: Any) -> bool:
    return allowed([policies_of(stack, role)], Request(action, resource, context))


# ---------------------------------------------------------------------------- agents


AGENT = "AROAAGENTROLEID:i-0aaaaaaaaaaaaaaaa"  # aws:userid of a role session on EC2
OTHER_AGENT = "AROAAGENTROLEID:i-0bbbbbbbbbbbbbbbb"


def test_an_agent_reads_its_payloads_and_writes_its_results_and_logs(stack: Rendered) -> None:
    own = f"{stack.arn('DictBucket')}/_instances/{AGENT}"
    assert can(
        stack, "AgentRole", "s3:GetObject", f"{own}/payloads/call-1", **{"aws:userid": AGENT}
    )
    assert can(stack, "AgentRole", "s3:PutObject", f"{own}/results/call-1", **{"aws:userid": AGENT})
    assert can(stack, "AgentRole", "s3:PutObject", f"{own}/logs/call-1", **{"aws:userid": AGENT})


@pytest.mark.parametrize(
    ("action", "where"),
    [
        ("s3:GetObject", "{bucket}/_instances/{other}/payloads/call-1"),  # another instance's
        ("s3:PutObject", "{bucket}/_instances/{other}/results/call-1"),
        ("s3:PutObject", "{bucket}/_instances/{me}/payloads/call-1"),  # may not forge input
        ("s3:GetObject", "{bucket}/_instances/{me}/results/call-1"),
        ("s3:DeleteObject", "{bucket}/_instances/{me}/logs/call-1"),
        ("s3:GetObject", "{bucket}/my-app/big-value"),  # an app's dict objects
        ("s3:ListBucket", "{bucket}"),
        ("s3:GetObject", "arn:aws:s3:::someone-elses-bucket/_instances/{me}/payloads/x"),
        ("dynamodb:GetItem", "{table}"),
        ("dynamodb:Scan", "{table}"),
        ("sts:AssumeRole", "{dict_role}"),
        ("secretsmanager:GetSecretValue", "{secret}"),
    ],
)
def test_an_agent_reaches_nothing_else(stack: Rendered, action: str, where: str) -> None:
    resource = where.format(
        bucket=stack.arn("DictBucket"),
        table=stack.arn("DictTable"),
        dict_role=stack.arn("DictRole"),
        secret=stack.ref("ApiKeySecret"),
        me=AGENT,
        other=OTHER_AGENT,
    )
    assert not can(stack, "AgentRole", action, resource, **{"aws:userid": AGENT})


@pytest.mark.parametrize(
    "action",
    [
        "ec2:RunInstances",
        "ec2:TerminateInstances",
        "ec2:DescribeInstances",
        "ec2:CreateTags",
        "ec2:ModifyInstanceAttribute",
        "iam:PassRole",
        "iam:CreateRole",
        "iam:PutRolePolicy",
        "iam:AttachRolePolicy",
        "iam:GetRole",
        "sts:AssumeRole",
        "s3:CreateBucket",
        "dynamodb:DeleteTable",
    ],
)
def test_an_agent_has_no_ec2_nor_iam_rights(stack: Rendered, action: str) -> None:
    assert not can(stack, "AgentRole", action, "*", **{"aws:userid": AGENT})
    for doc in policies_of(stack, "AgentRole"):
        for statement in doc["Statement"]:
            assert statement["Effect"] == "Allow" and statement["Action"].startswith("s3:")


def test_agents_are_ec2_instances(stack: Rendered) -> None:
    trust = [trust_of(stack, "AgentRole")]
    assert allowed(trust, Request("sts:AssumeRole", service="ec2.amazonaws.com"))
    assert not allowed(trust, Request("sts:AssumeRole", principal=stack.arn("ControlPlaneRole")))


# ---------------------------------------------------------------------------- dict role


def dict_can(stack: Rendered, app: str | None, action: str, resource: str, **context: Any) -> bool:
    if app is not None:
        context[f"aws:PrincipalTag/{SESSION_TAG}"] = app
    return can(stack, "DictRole", action, resource, **context)


@pytest.mark.parametrize("action", DYNAMODB_ITEM_ACTIONS)
def test_a_dict_session_reaches_its_apps_items(stack: Rendered, action: str) -> None:
    table = stack.arn("DictTable")
    assert dict_can(stack, "alpha", action, table, **{"dynamodb:LeadingKeys": ["alpha#scores"]})
    assert dict_can(stack, "alpha", action, table, **{"dynamodb:LeadingKeys": ["alpha#"]})


@pytest.mark.parametrize(
    "keys",
    [
        ["beta#scores"],  # another app
        ["alphabet#scores"],  # an app whose name starts with this one's
        ["alpha#scores", "beta#scores"],  # a batch reaching into another app
        ["alpha"],  # the separator is part of the prefix
    ],
)
def test_a_dict_session_never_reaches_other_apps_items(stack: Rendered, keys: list[str]) -> None:
    table = stack.arn("DictTable")
    for action in ("dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:Query"):
        assert not dict_can(stack, "alpha", action, table, **{"dynamodb:LeadingKeys": keys})


def test_a_dict_session_may_not_scan_nor_manage_the_table(stack: Rendered) -> None:
    table = stack.arn("DictTable")
    # Scan has no leading keys, for which ForAllValues would be vacuously true: it must
    # not be granted at all.
    assert not dict_can(stack, "alpha", "dynamodb:Scan", table)
    for action in ("dynamodb:DeleteTable", "dynamodb:UpdateTable", "dynamodb:CreateTable"):
        assert not dict_can(stack, "alpha", action, table)


def test_a_dict_session_reaches_its_apps_objects_only(stack: Rendered) -> None:
    bucket = stack.arn("DictBucket")
    for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"):
        assert dict_can(stack, "alpha", action, f"{bucket}/alpha/scores/0af3")
        assert not dict_can(stack, "alpha", action, f"{bucket}/beta/scores/0af3")
        assert not dict_can(stack, "alpha", action, f"{bucket}/alphabet/scores/0af3")
        assert not dict_can(stack, "alpha", action, f"{bucket}/_instances/{AGENT}/payloads/x")
        assert not dict_can(stack, "alpha", action, "arn:aws:s3:::another-bucket/alpha/x")
    assert not dict_can(stack, "alpha", "s3:ListBucket", bucket)


def test_an_untagged_session_reaches_nothing(stack: Rendered) -> None:
    table = stack.arn("DictTable")
    bucket = stack.arn("DictBucket")
    assert not dict_can(stack, None, "dynamodb:GetItem", table, **{"dynamodb:LeadingKeys": ["a#b"]})
    assert not dict_can(stack, None, "s3:GetObject", f"{bucket}/alpha/x")


def test_the_session_policy_the_control_plane_sends_keeps_the_same_bounds(
    stack: Rendered,
) -> None:
    """Credentials get what the role *and* the session policy allow."""
    resources = DictResources(
        table=stack.ref("DictTable"),
        table_arn=stack.arn("DictTable"),
        bucket=stack.ref("DictBucket"),
        role_arn=stack.arn("DictRole"),
        region=REGION,
        account=ACCOUNT,
    )
    policies = [policies_of(stack, "DictRole"), [session_policy("alpha", resources)]]
    tag = {f"aws:PrincipalTag/{SESSION_TAG}": "alpha"}
    own = Request(
        "dynamodb:PutItem", stack.arn("DictTable"), {**tag, "dynamodb:LeadingKeys": ["alpha#d"]}
    )
    other = Request(
        "dynamodb:PutItem", stack.arn("DictTable"), {**tag, "dynamodb:LeadingKeys": ["beta#d"]}
    )
    assert allowed(policies, own)
    assert not allowed(policies, other)
    big = Request("s3:PutObject", f"{stack.arn('DictBucket')}/alpha/d/0af3", tag)
    assert allowed(policies, big)


def test_only_the_control_plane_assumes_the_dict_role_and_must_tag_the_session(
    stack: Rendered,
) -> None:
    trust = [trust_of(stack, "DictRole")]
    control_plane = stack.arn("ControlPlaneRole")
    tagged = {f"aws:RequestTag/{SESSION_TAG}": "alpha"}
    for action in ("sts:AssumeRole", "sts:TagSession"):
        assert allowed(trust, Request(action, principal=control_plane, context=tagged))
        assert not allowed(trust, Request(action, principal=control_plane))  # untagged
        assert not allowed(trust, Request(action, principal=stack.arn("AgentRole"), context=tagged))
        assert not allowed(
            trust,
            Request(action, principal=f"arn:aws:iam::{ACCOUNT}:root", context=tagged),
        )
    assert not allowed(trust, Request("sts:AssumeRole", service="ec2.amazonaws.com"))


# ---------------------------------------------------------------------------- control plane

OURS = {"aws:RequestTag/mn:cluster": STACK}


def cp_can(stack: Rendered, action: str, resource: str = "*", **context: Any) -> bool:
    return can(stack, "ControlPlaneRole", action, resource, **context)


def test_the_control_plane_launches_only_instances_tagged_as_ours(stack: Rendered) -> None:
    for kind in ("instance", "volume"):
        assert cp_can(stack, "ec2:RunInstances", f"{EC2}:{kind}/*", **OURS)
        assert not cp_can(
            stack, "ec2:RunInstances", f"{EC2}:{kind}/*", **{"aws:RequestTag/mn:cluster": "other"}
        )
        assert not cp_can(stack, "ec2:RunInstances", f"{EC2}:{kind}/*")  # untagged


def test_the_control_plane_launches_only_from_the_agents_image_template_and_network(
    stack: Rendered,
) -> None:
    ami = stack.parameters["AmiId"]
    agents = {
        f"arn:aws:ec2:{REGION}::image/{ami}",
        f"{EC2}:subnet/{stack.ref('SubnetA')}",
        f"{EC2}:security-group/{stack.ref('AgentSecurityGroup')}",
        f"{EC2}:launch-template/{stack.ref('AgentLaunchTemplate')}",
    }
    others = {
        f"arn:aws:ec2:{REGION}::image/ami-0someoneelse00000",
        f"{EC2}:subnet/{stack.ref('SubnetB')}",
        f"{EC2}:security-group/{stack.ref('ControlPlaneSecurityGroup')}",
        f"{EC2}:launch-template/{stack.ref('HostLaunchTemplate')}",
    }
    for resource in agents:
        assert cp_can(stack, "ec2:RunInstances", resource), resource
    for resource in others:
        assert not cp_can(stack, "ec2:RunInstances", resource), resource
    subnet = f"{EC2}:subnet/{stack.ref('SubnetA')}"
    eni = f"{EC2}:network-interface/*"
    assert cp_can(stack, "ec2:RunInstances", eni, **{"ec2:Subnet": subnet})
    assert not cp_can(
        stack, "ec2:RunInstances", eni, **{"ec2:Subnet": f"{EC2}:subnet/subnet-0elsewhere"}
    )


def test_the_control_plane_tags_only_while_launching(stack: Rendered) -> None:
    instance = f"{EC2}:instance/i-0123456789abcdef0"
    assert cp_can(stack, "ec2:CreateTags", instance, **{"ec2:CreateAction": "RunInstances"})
    assert not cp_can(stack, "ec2:CreateTags", instance)  # retagging someone's instance
    assert not cp_can(stack, "ec2:DeleteTags", instance)


def test_the_control_plane_terminates_only_its_own_instances(stack: Rendered) -> None:
    instance = f"{EC2}:instance/i-0123456789abcdef0"
    assert cp_can(
        stack, "ec2:TerminateInstances", instance, **{"ec2:ResourceTag/mn:cluster": STACK}
    )
    assert not cp_can(
        stack, "ec2:TerminateInstances", instance, **{"ec2:ResourceTag/mn:cluster": "other"}
    )
    assert not cp_can(stack, "ec2:TerminateInstances", instance)  # untagged
    for action in ("ec2:StopInstances", "ec2:ModifyInstanceAttribute", "ec2:DeleteVolume"):
        assert not cp_can(stack, action, instance, **{"ec2:ResourceTag/mn:cluster": STACK})


def test_the_control_plane_passes_only_the_agents_role_and_only_to_ec2(stack: Rendered) -> None:
    to_ec2 = {"iam:PassedToService": "ec2.amazonaws.com"}
    assert cp_can(stack, "iam:PassRole", stack.arn("AgentRole"), **to_ec2)
    assert not cp_can(
        stack,
        "iam:PassRole",
        stack.arn("AgentRole"),
        **{"iam:PassedToService": "lambda.amazonaws.com"},
    )
    for role in ("ControlPlaneRole", "DictRole"):
        assert not cp_can(stack, "iam:PassRole", stack.arn(role), **to_ec2)
    assert not cp_can(stack, "iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/admin", **to_ec2)


def test_the_control_plane_vends_dict_credentials_but_never_reads_values(stack: Rendered) -> None:
    assert cp_can(stack, "sts:AssumeRole", stack.arn("DictRole"))
    assert cp_can(stack, "sts:TagSession", stack.arn("DictRole"))
    assert not cp_can(stack, "sts:AssumeRole", stack.arn("AgentRole"))
    table, bucket = stack.arn("DictTable"), stack.arn("DictBucket")
    assert cp_can(stack, "dynamodb:DescribeTable", table)
    assert not cp_can(stack, "dynamodb:GetItem", table)
    assert not cp_can(stack, "dynamodb:Scan", table)
    assert not cp_can(stack, "s3:GetObject", f"{bucket}/alpha/x")
    assert cp_can(stack, "s3:DeleteObject", f"{bucket}/alpha/x")  # undeploy --delete-data


def test_the_control_plane_may_do_nothing_to_iam(stack: Rendered) -> None:
    for action in ("iam:CreateRole", "iam:PutRolePolicy", "iam:AttachRolePolicy", "iam:CreateUser"):
        assert not cp_can(stack, action, f"arn:aws:iam::{ACCOUNT}:role/anything")
    assert cp_can(stack, "iam:GetInstanceProfile", stack.arn("AgentInstanceProfile"))


def test_the_control_plane_reads_only_its_own_secrets(stack: Rendered) -> None:
    assert cp_can(stack, "secretsmanager:GetSecretValue", stack.ref("ApiKeySecret"))
    assert cp_can(stack, "secretsmanager:GetSecretValue", stack.ref("DatabaseSecret"))
    other = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:prod-db-AbCdEf"
    assert not cp_can(stack, "secretsmanager:GetSecretValue", other)


def test_only_instances_and_the_named_principal_assume_the_control_planes_role() -> None:
    trust = [trust_of(render(), "ControlPlaneRole")]
    assert allowed(trust, Request("sts:AssumeRole", service="ec2.amazonaws.com"))
    assert not allowed(trust, Request("sts:AssumeRole", principal=f"arn:aws:iam::{ACCOUNT}:root"))
    operator = f"arn:aws:iam::{ACCOUNT}:role/ops"
    trust = [trust_of(render({"TrustedPrincipalArn": operator}), "ControlPlaneRole")]
    assert allowed(trust, Request("sts:AssumeRole", principal=operator))
