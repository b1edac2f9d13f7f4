"""The policy evaluator the IAM tests rely on follows IAM's rules on the cases they use."""

from __future__ import annotations

from typing import Any

import pytest

from tests.infra.iam_eval import Request, allowed


def doc(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


ALLOW_S3 = {"Effect": "Allow", "Action": "s3:*", "Resource": "arn:aws:s3:::b/*"}


@pytest.mark.parametrize(
    ("policies", "request_", "expected"),
    [
        # One Allow is needed; nothing is allowed by default.
        ([doc(ALLOW_S3)], Request("s3:GetObject", "arn:aws:s3:::b/k"), True),
        ([doc(ALLOW_S3)], Request("s3:GetObject", "arn:aws:s3:::c/k"), False),
        ([doc()], Request("s3:GetObject", "arn:aws:s3:::b/k"), False),
        # Actions match case-insensitively; an explicit Deny wins over any Allow.
        ([doc(ALLOW_S3)], Request("S3:getobject", "arn:aws:s3:::b/k"), True),
        (
            [doc(ALLOW_S3, {"Effect": "Deny", "Action": "s3:Get*", "Resource": "*"})],
            Request("s3:GetObject", "arn:aws:s3:::b/k"),
            False,
        ),
        # A resource wildcard spans slashes; a variable without a value matches nothing.
        (
            [
                doc(
                    {
                        "Effect": "Allow",
                        "Action": "s3:GetObject",
                        "Resource": "arn:aws:s3:::b/${aws:userid}/*",
                    }
                )
            ],
            Request("s3:GetObject", "arn:aws:s3:::b/AROA:i-1/x/y", {"aws:userid": "AROA:i-1"}),
            True,
        ),
        (
            [
                doc(
                    {
                        "Effect": "Allow",
                        "Action": "s3:GetObject",
                        "Resource": "arn:aws:s3:::b/${aws:userid}/*",
                    }
                )
            ],
            Request("s3:GetObject", "arn:aws:s3:::b/AROA:i-1/x"),
            False,
        ),
        # ForAllValues is vacuously true without the key: why Scan must never be granted.
        (
            [
                doc(
                    {
                        "Effect": "Allow",
                        "Action": "dynamodb:*",
                        "Resource": "*",
                        "Condition": {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["a#*"]}},
                    }
                )
            ],
            Request("dynamodb:Scan", "t"),
            True,
        ),
        # A single-valued condition fails without its key.
        (
            [doc({**ALLOW_S3, "Condition": {"StringEquals": {"aws:RequestTag/k": "v"}}})],
            Request("s3:PutObject", "arn:aws:s3:::b/k"),
            False,
        ),
        # Every policy set must allow (identity and session policies intersect).
        ([doc(ALLOW_S3), doc()], Request("s3:GetObject", "arn:aws:s3:::b/k"), False),
    ],
)
def test_evaluation(policies: list[dict[str, Any]], request_: Request, expected: bool) -> None:
    sets = [[p] for p in policies]
    assert allowed(sets, request_) is expected


def test_an_unknown_operator_fails_loudly() -> None:
    policy = doc({**ALLOW_S3, "Condition": {"DateGreaterThan": {"aws:CurrentTime": "2020"}}})
    with pytest.raises(AssertionError, match="unsupported condition operator"):
        allowed([[policy]], Request("s3:GetObject", "arn:aws:s3:::b/k"))
