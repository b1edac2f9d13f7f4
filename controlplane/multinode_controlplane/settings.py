"""Settings of the control plane, read once from ``MN_SERVER_*`` environment variables."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _home() -> Path:
    return Path(os.environ.get("MN_HOME") or Path.home() / ".multinode")


def _default_database_url() -> str:
    return f"sqlite:///{_home() / 'controlplane.db'}"


def _own_python() -> list[str]:
    return [f"{sys.version_info.major}.{sys.version_info.minor}"]


class ServerSettings(BaseSettings):
    """Everything the control plane can be told. Tests build one directly."""

    model_config = SettingsConfigDict(env_prefix="MN_SERVER_", extra="ignore")

    database_url: str = Field(
        default_factory=_default_database_url,
        description="SQLAlchemy URL: sqlite:///path (one replica) or postgresql://... (several).",
    )
    host: str = Field("127.0.0.1", description="Interface the HTTP server binds.")
    port: int = Field(7600, description="Port the HTTP server binds.")
    public_url: str | None = Field(
        None,
        description="URL agents on VMs use to reach this control plane; default http://host:port.",
    )
    api_key: str | None = Field(
        None,
        description="Bootstrap API key (mnk_...): stored hashed at startup for owner 'default'.",
    )
    cluster: str = Field(
        "local",
        description="Value of the mn:cluster tag scoping this control plane's instances; it "
        "overrides MN_AWS_CLUSTER. The rest of EC2's settings (AMI, region, subnet, security "
        "groups, instance profile) are read from MN_AWS_* by multinode_provisioner's AwsSettings.",
    )
    compute: Literal["aws", "none"] = Field(
        "aws", description="'aws': launch through EC2 (AWS_ENDPOINT_URL honoured); 'none': never."
    )
    aws_check: bool = Field(
        True,
        description="With compute 'aws', check the AWS target in the background at start-up "
        "(dict table, bucket and role; AMI, subnet, security groups, instance profile, launch "
        "template, a dry-run launch) and report every problem in the log and GET /v1/health.",
    )
    agent_install_command: str = Field(
        "", description="Shell step in user-data that installs the agent; empty on the local cloud."
    )
    agent_extra_env: dict[str, str] = Field(
        default_factory=dict, description="Extra environment variables exported in user-data."
    )
    secrets_key: str | None = Field(
        None,
        description="Key(s) encrypting secrets at rest, comma-separated (the first encrypts, "
        "every one decrypts, so a key can be rotated): Fernet keys, or random strings a Fernet "
        "key is derived from (SHA-256). Unset with SQLite: a key is "
        "made once in secrets.key beside the database file (mode 0600). Unset with "
        "PostgreSQL: secrets are refused, since replicas must share one key.",
    )
    gateway_url: str | None = Field(
        None,
        description="Where the services' gateway answers (e.g. http://127.0.0.1:7700); a "
        "service's stable endpoint is <gateway_url>/<app>/<service>/. The local cloud sets it.",
    )
    vm_pythons: list[str] = Field(
        default_factory=_own_python,
        description="Python minor versions the VMs' agents run (JSON list, e.g. "
        '["3.11"]); a deploy for another is refused with this list. Default: this '
        "process's, which is the VMs' on the local cloud.",
    )
    build_dir: Path = Field(
        default_factory=lambda: _home() / "builds",
        description="Where environments are built, and uv's download cache kept (so a "
        "rebuild or a similar environment downloads little).",
    )
    build_timeout_s: float = Field(
        900.0, gt=0, description="Longest one environment build may take before it fails."
    )
    build_index_url: str | None = Field(
        None, description="Package index the builds use (uv's default, PyPI, when unset)."
    )
    environment_url_ttl_s: int = Field(
        3600, gt=0, description="Lifetime of the presigned URL a VM downloads an environment by."
    )
    heartbeat_interval_s: float = Field(5.0, gt=0, description="How often agents should poll.")
    agent_poll_timeout_s: float = Field(
        20.0, gt=0, description="Longest an agent poll waits for work before answering empty."
    )
    agent_lost_after_s: float = Field(
        30.0, gt=0, description="No heartbeat for this long: the instance is lost."
    )
    boot_timeout_s: float = Field(
        300.0, gt=0, description="An instance must register within this long of its launch."
    )
    default_cooldown_s: float = Field(
        60.0, ge=0, description="Idle time before termination when the function names none."
    )
    provisioner_interval_s: float = Field(
        1.0, gt=0, description="Background tick; demand wakes the loops at once regardless."
    )
    provisioner_min_gap_s: float = Field(
        0.1,
        ge=0,
        description="Least time between two demand-driven provisioner passes: the first"
        " wake-up runs at once, a burst of new calls after it folds into one more pass.",
    )
    reconcile_interval_s: float = Field(
        30.0, gt=0, description="How often the cloud's instance list is compared with ours."
    )
    launch_backoff_s: float = Field(
        30.0, ge=0, description="After a failed launch, wait this long before launching again."
    )
    max_call_attempts: int = Field(
        3, ge=1, description="Attempts a call may lose to infrastructure before it fails."
    )
    timeout_grace_s: float = Field(
        30.0,
        ge=0,
        description="A running attempt with no result this long past its timeout is reaped.",
    )
    outputs_linger_s: float = Field(
        0.02,
        ge=0,
        le=1,
        description="Once a waiting caller has some outputs but not all, how long to gather"
        " more before answering: batches large maps, never delays a single call.",
    )
    max_assignments_per_poll: int = Field(
        256, ge=1, description="Most calls one agent poll may claim."
    )
    event_recheck_s: float | None = Field(
        None,
        description="Long-polls re-check the database this often, covering events of other "
        "replicas; default 0.25 s on PostgreSQL, off on SQLite (one replica).",
    )
    min_schedule_interval_s: float = Field(
        900.0,
        ge=0,
        description="Shortest gap between two fires of a schedule (15 minutes); the local cloud "
        "may lower it for demos.",
    )
    scheduler_lease_s: float = Field(
        30.0, gt=0, description="How long a replica owns the due schedules it claimed."
    )
    scheduler_batch: int = Field(
        500, ge=1, description="Most due schedules one scheduler pass claims at once."
    )
    scheduler_idle_wake_s: float = Field(
        10.0,
        gt=0,
        description="Longest the scheduler sleeps with nothing due (other replicas' deploys "
        "do not wake it); its own deploys, resumes and the earliest due time wake it sooner.",
    )
    service_drain_s: float = Field(
        5.0,
        ge=0,
        description="After a redeploy, how long the old version of a service keeps serving "
        "once every replica of the new one is ready (clients re-resolving its address in "
        "that time lose no request).",
    )
    services_interval_s: float = Field(
        1.0,
        gt=0,
        description="How often the services loop compares running replicas with what is "
        "deployed (deploys and replicas' news also wake it at once).",
    )
    dict_table: str = Field(
        "multinode-dicts", description="DynamoDB table of every app's mn.get_dict data."
    )
    dict_bucket: str = Field(
        "multinode-dicts", description="S3 bucket for dict values too large for an item."
    )
    dict_role_arn: str | None = Field(
        None,
        description="IAM role assumed to vend dict credentials; unset: the role named "
        "dict_role_name, created if missing when dict_create_resources is on.",
    )
    dict_role_name: str = Field("multinode-dicts", description="See dict_role_arn.")
    dict_create_resources: bool = Field(
        True, description="Create the dict table, bucket (and role) on first use if missing."
    )
    dict_prepare_at_startup: bool = Field(
        False, description="Check/create the dict resources at startup instead of first use."
    )
    dict_region: str | None = Field(
        None, description="Region of the dict table and bucket; default boto3's, else us-east-1."
    )
    dict_endpoint_url: str | None = Field(
        None,
        description="AWS endpoint the SDK should use for dicts (an emulator); unset: AWS itself.",
    )
    dict_dynamodb_endpoint_url: str | None = Field(
        None,
        description="DynamoDB endpoint the SDK should use for dicts when it differs from "
        "dict_endpoint_url (LocalStack without DynamoDB, beside the DynamoDB emulator); "
        "unset: dict_endpoint_url.",
    )
    dict_credentials_ttl_s: int = Field(
        3600, ge=900, le=43200, description="Lifetime of vended dict credentials."
    )

    @property
    def agent_url(self) -> str:
        """The control plane as seen from a VM."""
        return self.public_url or f"http://{self.host}:{self.port}"
