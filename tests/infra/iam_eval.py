"""A small evaluator of IAM policy documents, for asserting what a role may do.

It follows IAM's evaluation logic for one account
(https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_evaluation-logic.html):
an explicit Deny wins, otherwise one Allow is needed, otherwise the request is denied.
Each ``Policy`` set passed to :func:`allowed` must allow on its own (identity policies
and a session policy: the credentials get their intersection).

Supported: Effect; Action/NotAction and Resource/NotResource with ``*`` and ``?``;
Principal (AWS, Service) for trust policies; policy variables (``${aws:userid}``,
``${aws:PrincipalTag/k}``) in resources and condition values, read from the request
context (a statement whose variable cannot be resolved does not apply); the condition
operators StringEquals, StringLike, ArnEquals, ArnLike (with ``...IfExists``) and their
``ForAllValues:``/``ForAnyValue:`` forms, and Null. Anything else raises, so a policy
this evaluator cannot read fails the test instead of passing it.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

ContextValue = str | list[str]


@dataclass(frozen=True)
class Request:
    """One API request: who, what, on which resource, with which context keys."""

    action: str
    resource: str = "*"
    context: dict[str, ContextValue] = field(default_factory=dict)
    principal: str | None = None  # for trust policies: the calling principal's ARN
    service: str | None = None  # for trust policies: the calling service


def allowed(policy_sets: Sequence[Iterable[dict[str, Any]]], request: Request) -> bool:
    """Whether every set of policy documents allows ``request`` (and none denies it)."""
    return all(_decision(docs, request) for docs in policy_sets)


def _decision(docs: Iterable[dict[str, Any]], request: Request) -> bool:
    allow = False
    for doc in docs:
        statements = doc["Statement"]
        for statement in statements if isinstance(statements, list) else [statements]:
            if not _applies(statement, request):
                continue
            if statement["Effect"] == "Deny":
                return False
            allow = True
    return allow


def _applies(statement: dict[str, Any], request: Request) -> bool:
    unknown = set(statement) - {
        "Sid",
        "Effect",
        "Action",
        "NotAction",
        "Resource",
        "NotResource",
        "Condition",
        "Principal",
    }
    assert not unknown, f"unsupported statement keys {unknown}"
    if "Principal" in statement and not _principal_matches(statement["Principal"], request):
        return False
    if "Action" in statement:
        if not any(_action_matches(p, request.action) for p in _list(statement["Action"])):
            return False
    elif any(_action_matches(p, request.action) for p in _list(statement["NotAction"])):
        return False
    if "Resource" in statement or "NotResource" in statement:
        key = "Resource" if "Resource" in statement else "NotResource"
        patterns = [_substitute(p, request.context) for p in _list(statement[key])]
        matched = any(p is not None and _like(p, request.resource) for p in patterns)
        if matched != (key == "Resource"):
            return False
    return all(
        _condition(operator, key, values, request.context)
        for operator, block in statement.get("Condition", {}).items()
        for key, values in block.items()
    )


def _principal_matches(principal: Any, request: Request) -> bool:
    if principal == "*":
        return True
    for kind, values in principal.items():
        for value in _list(values):
            if kind == "AWS" and request.principal == value:
                return True
            if kind == "Service" and request.service == value:
                return True
    return False


def _action_matches(pattern: str, action: str) -> bool:
    return fnmatch.fnmatchcase(action.lower(), pattern.lower())


def _like(pattern: str, value: str) -> bool:
    """IAM's wildcard match: ``*`` any run of characters (slashes too), ``?`` one."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, flags=re.S) is not None


def _substitute(text: str, context: dict[str, ContextValue]) -> str | None:
    """``text`` with its policy variables replaced; None when one has no value."""
    missing = False

    def value(match: re.Match[str]) -> str:
        nonlocal missing
        found = _get(context, match.group(1))
        if not isinstance(found, str):
            missing = True
            return ""
        return found

    result = re.sub(r"\$\{([^}]+)\}", value, text)
    return None if missing else result


def _get(context: dict[str, ContextValue], key: str) -> ContextValue | None:
    # Condition keys are case-insensitive; tag keys' own case is kept by convention.
    for name, found in context.items():
        if name.lower() == key.lower():
            return found
    return None


_MATCHERS = {
    "StringEquals": lambda pattern, value: pattern == value,
    "StringLike": _like,
    "ArnEquals": lambda pattern, value: pattern == value,
    "ArnLike": _like,
}


def _condition(operator: str, key: str, expected: Any, context: dict[str, ContextValue]) -> bool:
    patterns = [_substitute(p, context) for p in _list(expected)]
    actual = _get(context, key)
    if operator == "Null":
        return (actual is None) == (str(expected).lower() == "true")
    qualifier, _, name = operator.rpartition(":")
    if_exists = name.endswith("IfExists")
    name = name.removesuffix("IfExists")
    if name not in _MATCHERS:
        raise AssertionError(f"unsupported condition operator {operator}")
    match = _MATCHERS[name]

    def one(value: str) -> bool:
        return any(p is not None and match(p, value) for p in patterns)

    if qualifier == "ForAllValues":
        return all(one(v) for v in _list(actual or []))  # vacuously true when absent
    if qualifier == "ForAnyValue":
        return any(one(v) for v in _list(actual or []))
    if qualifier:
        raise AssertionError(f"unsupported condition qualifier {qualifier}")
    if actual is None:
        return if_exists
    if isinstance(actual, list):
        raise AssertionError(f"single-valued operator {operator} on multivalued key {key}")
    return one(actual)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]
