"""infra/multinode.yaml read and rendered as CloudFormation would render it, for tests.

:func:`render` resolves the intrinsic functions the template uses (Ref, GetAtt, Sub, Join,
If, Select, GetAZs, Base64 and the condition functions) over a chosen set of parameter
values and made-up physical ids, so tests can read concrete IAM policies, security group
rules and user-data without deploying anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfnlint.decode import decode

TEMPLATE = Path(__file__).resolve().parents[2] / "infra" / "multinode.yaml"
ACCOUNT = "111122223333"
REGION = "eu-west-1"
STACK = "mn-prod"
_NO_VALUE = object()


def load() -> dict[str, Any]:
    """The template as plain data (YAML short tags become ``{"Fn::...": ...}``)."""
    template, matches = decode(str(TEMPLATE))
    assert not matches, matches
    return template


@dataclass
class Rendered:
    """The template rendered with ``parameters``; ``resources`` holds every resource whose
    condition holds, with its properties resolved."""

    template: dict[str, Any]
    parameters: dict[str, str]
    conditions: dict[str, bool]
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)

    def properties(self, logical_id: str) -> dict[str, Any]:
        return self.resources[logical_id].get("Properties", {})

    def arn(self, logical_id: str) -> str:
        return _get_att(self, logical_id, "Arn")

    def ref(self, logical_id: str) -> str:
        return _ref(self, logical_id)


def render(parameters: dict[str, str] | None = None) -> Rendered:
    """Render the template with its defaults overridden by ``parameters``."""
    template = load()
    values = {name: str(spec.get("Default", "")) for name, spec in template["Parameters"].items()}
    values["AmiId"] = "ami-0agents0000000000"  # what the SSM parameter resolves to
    values["ApiKey"] = "mnk_" + "k" * 32
    values.update(parameters or {})
    out = Rendered(template=template, parameters=values, conditions={})
    for name, expression in template["Conditions"].items():
        out.conditions[name] = _condition(out, expression)
    for logical_id, resource in template["Resources"].items():
        if "Condition" in resource and not out.conditions[resource["Condition"]]:
            continue
        out.resources[logical_id] = _resolve(out, resource)
    for name, output in template["Outputs"].items():
        if "Condition" in output and not out.conditions[output["Condition"]]:
            continue
        out.outputs[name] = _resolve(out, output["Value"])
    return out


# ---------------------------------------------------------------------------- resolving


def _resolve(r: Rendered, node: Any) -> Any:
    if isinstance(node, list):
        items = [_resolve(r, item) for item in node]
        return [item for item in items if item is not _NO_VALUE]
    if not isinstance(node, dict):
        return node
    if len(node) == 1:
        ((key, arg),) = node.items()
        if key == "Ref":
            return _ref(r, arg)
        if key == "Fn::GetAtt":
            logical_id, attribute = arg if isinstance(arg, list) else arg.split(".", 1)
            return _get_att(r, logical_id, attribute)
        if key == "Fn::Sub":
            return _sub(r, arg)
        if key == "Fn::Join":
            return arg[0].join(str(_resolve(r, part)) for part in _resolve(r, arg[1]))
        if key == "Fn::If":
            name, then, otherwise = arg
            return _resolve(r, then if r.conditions[name] else otherwise)
        if key == "Fn::Select":
            return _resolve(r, arg[1])[int(arg[0])]
        if key == "Fn::GetAZs":
            return [f"{REGION}a", f"{REGION}b", f"{REGION}c"]
        if key == "Fn::Base64":
            return _resolve(r, arg)
    resolved = {k: _resolve(r, v) for k, v in node.items()}
    return {k: v for k, v in resolved.items() if v is not _NO_VALUE}


def _ref(r: Rendered, name: str) -> Any:
    pseudo = {
        "AWS::AccountId": ACCOUNT,
        "AWS::Region": REGION,
        "AWS::StackName": STACK,
        "AWS::Partition": "aws",
        "AWS::NoValue": _NO_VALUE,
    }
    if name in pseudo:
        return pseudo[name]
    if name in r.parameters:
        return r.parameters[name]
    kind = r.template["Resources"][name]["Type"]
    made_up = {
        "AWS::S3::Bucket": f"{STACK}-dictbucket-0abc",
        "AWS::DynamoDB::Table": f"{STACK}-DictTable-0ABC",
        "AWS::EC2::Subnet": f"subnet-0{name.lower()}",
        "AWS::EC2::SecurityGroup": f"sg-0{name.lower()}",
        "AWS::EC2::LaunchTemplate": f"lt-0{name.lower()}",
        "AWS::EC2::VPC": "vpc-0stack",
        "AWS::SecretsManager::Secret": (
            f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{STACK}-{name}-Ab12Cd"
        ),
    }
    return made_up.get(kind, f"{STACK}-{name}-0ABC")


def _get_att(r: Rendered, name: str, attribute: str) -> str:
    kind = r.template["Resources"][name]["Type"]
    physical = _ref(r, name)
    if attribute == "Arn":
        return {
            "AWS::IAM::Role": f"arn:aws:iam::{ACCOUNT}:role/{physical}",
            "AWS::IAM::InstanceProfile": f"arn:aws:iam::{ACCOUNT}:instance-profile/{physical}",
            "AWS::S3::Bucket": f"arn:aws:s3:::{physical}",
            "AWS::DynamoDB::Table": f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{physical}",
        }[kind]
    if attribute == "LaunchTemplateId":
        return physical
    return f"{name}.{attribute}"  # addresses and versions: any stand-in will do


def _sub(r: Rendered, arg: Any) -> str:
    text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
    variables = {k: _resolve(r, v) for k, v in variables.items()}

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.startswith("!"):
            return "${" + name[1:] + "}"
        if name in variables:
            return str(variables[name])
        if "." in name and not name.startswith("AWS::"):
            logical_id, attribute = name.split(".", 1)
            return str(_get_att(r, logical_id, attribute))
        return str(_ref(r, name))

    return re.sub(r"\$\{([^}]+)\}", replace, text)


def _condition(r: Rendered, node: Any) -> Any:
    if not isinstance(node, dict):
        return _resolve(r, node)
    ((key, arg),) = node.items()
    if key == "Fn::Equals":
        return str(_condition(r, arg[0])) == str(_condition(r, arg[1]))
    if key == "Fn::Not":
        return not _condition(r, arg[0])
    if key == "Fn::And":
        return all(_condition(r, a) for a in arg)
    if key == "Fn::Or":
        return any(_condition(r, a) for a in arg)
    if key == "Condition":
        return r.conditions[arg]
    return _resolve(r, node)


# ---------------------------------------------------------------------------- reading


def policies_of(r: Rendered, role: str) -> list[dict[str, Any]]:
    """Every identity policy document attached to ``role`` in the template (its inline
    policies and the AWS::IAM::Policy resources naming it)."""
    docs = [p["PolicyDocument"] for p in r.properties(role).get("Policies", [])]
    for resource in r.resources.values():
        if resource["Type"] == "AWS::IAM::Policy" and r.ref(role) in resource["Properties"].get(
            "Roles", []
        ):
            docs.append(resource["Properties"]["PolicyDocument"])
    assert not r.properties(role).get("ManagedPolicyArns"), "managed policies are not read"
    return docs


def trust_of(r: Rendered, role: str) -> list[dict[str, Any]]:
    """The role's trust policy, as a set of one document."""
    return [r.properties(role)["AssumeRolePolicyDocument"]]
