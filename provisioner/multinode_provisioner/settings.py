"""Settings of the EC2 compute, read from ``MN_AWS_*`` environment variables.

Build one :class:`AwsSettings` at start-up and pass it in; tests build their own instead
of patching the environment. Credentials and the endpoint are boto3's business: it
honours ``AWS_ENDPOINT_URL`` (and ``AWS_ENDPOINT_URL_EC2``), profiles and instance roles,
so the same settings serve real AWS, LocalStack and the local cloud's emulator.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# The AMI id the local cloud launches. The emulator ships a fixed set of AMIs and never
# boots them (the VM runner runs the user-data as a local process instead), so any id it
# knows will do; this one is in moto's default set.
LOCAL_AMI = "ami-12c6146b"

DEFAULT_CLUSTER = "default"


class AwsSettings(BaseSettings):
    """Where and how the EC2 compute launches instances.

    Every field is read from ``MN_AWS_<FIELD>`` (e.g. ``MN_AWS_AMI_ID``) unless given to
    the constructor. ``ami_id`` has no default: on AWS pick an image with Python 3.10+;
    on the local cloud use :data:`LOCAL_AMI`.
    """

    model_config = SettingsConfigDict(env_prefix="MN_AWS_", extra="ignore", frozen=True)

    ami_id: str = Field(description="Image every instance boots (MN_AWS_AMI_ID). Required.")
    region: str | None = Field(
        None,
        description="EC2 region (MN_AWS_REGION); unset means boto3's own choice, else us-east-1.",
    )
    endpoint_url: str | None = Field(
        None,
        description="Explicit EC2 endpoint (MN_AWS_ENDPOINT_URL). Leave unset to let boto3 "
        "honour AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_EC2.",
    )
    cluster: str = Field(
        DEFAULT_CLUSTER,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Value of the mn:cluster tag (MN_AWS_CLUSTER); scopes every listing and "
        "launch so several installs can share one account.",
    )
    subnet_id: str | None = Field(None, description="Subnet to launch into (MN_AWS_SUBNET_ID).")
    security_group_ids: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Security groups (MN_AWS_SECURITY_GROUP_IDS, comma-separated or a JSON list).",
    )
    instance_profile_arn: str | None = Field(
        None,
        description="IAM instance profile ARN given to every instance (MN_AWS_INSTANCE_PROFILE_ARN).",
    )
    launch_template_id: str | None = Field(
        None,
        description="Launch template every launch starts from (MN_AWS_LAUNCH_TEMPLATE_ID), e.g. "
        "the one infra/multinode.yaml makes; the settings above override its values.",
    )
    launch_template_version: str = Field(
        "$Default",
        description="Version of the launch template (MN_AWS_LAUNCH_TEMPLATE_VERSION): a number, "
        "$Default or $Latest.",
    )
    extra_tags: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="Tags added to every instance (MN_AWS_EXTRA_TAGS, 'k=v,k2=v2' or a JSON object). "
        "Per-launch tags and the mn:* tags win over these.",
    )
    retry_budget_s: float = Field(
        20.0,
        gt=0,
        description="Total seconds one operation may spend retrying transient EC2 errors (MN_AWS_RETRY_BUDGET_S).",
    )
    retry_base_s: float = Field(
        0.25,
        gt=0,
        description="First backoff ceiling in seconds; doubles per attempt (MN_AWS_RETRY_BASE_S).",
    )
    retry_max_backoff_s: float = Field(
        5.0,
        gt=0,
        description="Ceiling of any single backoff in seconds (MN_AWS_RETRY_MAX_BACKOFF_S).",
    )

    @field_validator("security_group_ids", mode="before")
    @classmethod
    def _split_groups(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return tuple(json.loads(text))
            return tuple(part.strip() for part in text.split(",") if part.strip())
        return value

    @field_validator("extra_tags", mode="before")
    @classmethod
    def _parse_tags(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("{"):
            return json.loads(text)
        tags: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, val = part.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"bad tag {part!r}: write key=value pairs separated by commas")
            tags[key.strip()] = val.strip()
        return tags
