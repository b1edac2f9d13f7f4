"""Tables. Timestamps are unix seconds (float) so that SQLite and PostgreSQL compare them
alike and time arithmetic in SQL is plain subtraction; the API turns them into datetimes.
Binary payloads are opaque bytes: nothing here ever unpickles them."""

from __future__ import annotations

from sqlalchemy import Column, Index, LargeBinary, UniqueConstraint
from sqlmodel import Field, SQLModel


class OwnerRow(SQLModel, table=True):
    __tablename__ = "owners"

    name: str = Field(primary_key=True)
    created_at: float


class ApiKeyRow(SQLModel, table=True):
    __tablename__ = "api_keys"

    id: int | None = Field(default=None, primary_key=True)
    owner: str = Field(foreign_key="owners.name")
    key_hash: str = Field(unique=True, index=True)
    created_at: float
    revoked: bool = False


class AppRow(SQLModel, table=True):
    __tablename__ = "apps"
    __table_args__ = (UniqueConstraint("owner", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    owner: str = Field(foreign_key="owners.name")
    name: str
    current_version: int | None = None
    status: str = "deployed"  # deployed | undeployed
    ephemeral: bool = False
    created_at: float


class DeploymentRow(SQLModel, table=True):
    """One immutable version of an app."""

    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("app_id", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    app_id: int = Field(foreign_key="apps.id", index=True)
    version: int
    python_version: str
    cloudpickle_version: str
    created_at: float


class FunctionRow(SQLModel, table=True):
    __tablename__ = "functions"
    __table_args__ = (UniqueConstraint("deployment_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    deployment_id: int = Field(foreign_key="deployments.id", index=True)
    name: str
    spec: str  # FunctionSpec as JSON
    blob_hash: str


class SecretRow(SQLModel, table=True):
    """A named secret of an owner: its values encrypted (Fernet), its key names in clear
    so listings never decrypt. See services/secrets.py."""

    __tablename__ = "secrets"
    __table_args__ = (UniqueConstraint("owner", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    owner: str = Field(foreign_key="owners.name")
    name: str
    keys: str  # JSON list of the key names
    ciphertext: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: float
    updated_at: float


class EnvironmentRow(SQLModel, table=True):
    """A set of packages for one Python and platform, built once by the builder loop and
    stored packed in the bucket. See services/environments.py."""

    __tablename__ = "environments"

    id: str = Field(primary_key=True)  # sha256 of python, platform, requirements, base
    python: str
    platform: str
    requirements: str  # JSON list, as requested
    status: str = Field(index=True)  # pending | building | ready | failed
    builds: int = 0  # how many builds started
    lease_until: float | None = None  # a building row whose lease passed is taken again
    size: int | None = None
    sha256: str | None = None  # of the packed file
    object_key: str | None = None
    packages: str = "[]"  # JSON list of the pins installed (beyond the VM's own)
    build_s: float | None = None
    error: str | None = None
    log: str = ""
    created_at: float
    updated_at: float


class BlobRow(SQLModel, table=True):
    """A content-addressed function blob (a pickled function; never unpickled here)."""

    __tablename__ = "blobs"

    sha256: str = Field(primary_key=True)
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    size: int
    created_at: float


class CallRow(SQLModel, table=True):
    """One call. Resource needs are copied from the function's spec for fast placement."""

    __tablename__ = "calls"
    __table_args__ = (
        # A claim's order, id included: the calls of one batch share created_at, and
        # without the id here each claim would sort the app's whole queued batch.
        Index("ix_calls_app_status_created_id", "app_id", "status", "created_at", "id"),
        Index("ix_calls_status_app", "status", "app_id"),
    )

    id: str = Field(primary_key=True)
    app_id: int = Field(foreign_key="apps.id")
    version: int
    function_id: int = Field(foreign_key="functions.id")
    function: str
    kind: str = "function"  # the function's kind: function | job | service
    status: str = "queued"
    input: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    output: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    error: str | None = None  # CallError as JSON
    failure_reason: str | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0  # attempts made so far; the newest attempt's fence
    user_failures: int = 0  # attempts failed by user code (spend `retries`)
    infra_failures: int = 0  # attempts lost to infrastructure (spend max_call_attempts)
    parent_call_id: str | None = None
    cancel_requested: bool = False
    current_attempt_id: str | None = None
    instance_id: str | None = None
    cpu: float
    memory_mib: int | None = None
    gpu_count: int = 0
    timeout_s: float
    retries: int = 0


class AttemptRow(SQLModel, table=True):
    """One run of a call on one instance; ``fence`` must come back with its result."""

    __tablename__ = "attempts"
    __table_args__ = (
        Index("ix_attempts_instance_status", "instance_id", "status"),
        Index("ix_attempts_status_started", "status", "started_at"),
        # An instance's latest finish is one index probe, however much it has run.
        Index("ix_attempts_instance_finished", "instance_id", "finished_at"),
    )

    id: str = Field(primary_key=True)
    call_id: str = Field(index=True)
    number: int
    instance_id: str
    fence: int
    status: str = "running"  # running | succeeded | failed | timed_out | cancelled | lost
    started_at: float
    finished_at: float | None = None
    reason: str | None = None
    cpu: float
    memory_mib: int | None = None
    gpu_count: int = 0
    timeout_s: float


class InstanceRow(SQLModel, table=True):
    __tablename__ = "instances"

    id: str = Field(primary_key=True)
    cloud_id: str | None = Field(default=None, index=True)
    app_id: int = Field(foreign_key="apps.id", index=True)
    instance_type: str
    vcpus: float
    memory_mib: int
    gpu_count: int = 0
    price_per_hour: float
    state: str = Field(default="launching", index=True)
    launched_for: str
    dedicated: bool = False  # launched for a service: runs one replica of it, nothing else
    launch_token: str
    bootstrap_token_hash: str | None = Field(default=None, index=True)
    agent_token_hash: str | None = Field(default=None, index=True)
    hostname: str | None = None
    last_heartbeat: float | None = None
    idle_since: float | None = None
    cooldown_s: float
    launched_at: float
    ready_at: float | None = None
    terminated_at: float | None = None
    reason: str | None = None


class ServiceReplicaRow(SQLModel, table=True):
    """One replica of one version of a service: a long-running call on its own instance.

    ``state`` is what the agent last reported (``starting``, ``ready``, ``crashed``) or
    what the control plane decided (``pending`` before an instance takes it, ``stopping``
    once its call is cancelled, ``stopped`` once the call has ended).
    """

    __tablename__ = "service_replicas"
    __table_args__ = (Index("ix_service_replicas_app_state", "app_id", "state"),)

    id: str = Field(primary_key=True)
    app_id: int = Field(foreign_key="apps.id")
    function: str
    version: int
    replica: int  # 0 .. replicas-1 within its version
    call_id: str = Field(index=True)
    state: str = "pending"
    url: str | None = None
    restarts: int = 0  # times the agent restarted its process after an exit
    crash_looping: bool = False
    last_exit: str | None = None  # how the process last ended
    instance_id: str | None = None
    created_at: float
    ready_at: float | None = None
    stopped_at: float | None = None
    updated_at: float


class LogRow(SQLModel, table=True):
    __tablename__ = "logs"
    __table_args__ = (
        Index("ix_logs_app_id", "app_id", "id"),
        Index("ix_logs_call_id", "call_id", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    ts: float
    app_id: int
    function: str
    call_id: str
    stream: str
    text: str


class ScheduleRow(SQLModel, table=True):
    """One scheduled function of an app, kept across redeploys (its identity is the name).

    ``next_fire_time`` is the earliest due time not yet acted on; NULL while paused or
    inactive, so the scheduler's index holds only schedules that can fire. A replica
    claims a due schedule by taking its lease and bumping ``fence``; its dispatch is
    accepted only while the fence is unchanged.
    """

    __tablename__ = "schedules"
    __table_args__ = (UniqueConstraint("app_id", "function"),)

    id: int | None = Field(default=None, primary_key=True)
    app_id: int = Field(foreign_key="apps.id", index=True)
    function: str
    rule: str  # schedule_math to_json() as JSON
    overlap: str = "skip"  # skip | queue | allow
    catchup_window_s: float = 3600.0
    input: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    active: bool = True  # False once removed from the app or the app is undeployed
    paused: bool = False
    next_fire_time: float | None = Field(default=None, index=True)
    last_fire_time: float | None = None  # the latest due time acted on
    last_call_id: str | None = None  # the newest run, for the overlap policy
    lease_owner: str | None = None
    lease_until: float | None = None
    fence: int = 0
    error: str | None = None  # why the scheduler stopped this schedule, if it did
    created_at: float
    updated_at: float


class FireRow(SQLModel, table=True):
    """What happened at one due time of one schedule; unique, so a time fires once."""

    __tablename__ = "schedule_fires"
    __table_args__ = (
        UniqueConstraint("schedule_id", "fire_time"),
        Index("ix_schedule_fires_status", "status"),
    )

    id: int | None = Field(default=None, primary_key=True)
    schedule_id: int = Field(foreign_key="schedules.id")
    fire_time: float
    status: str  # dispatched | skipped | missed | queued
    call_id: str | None = None
    reason: str | None = None
    dispatched_at: float  # when the scheduler acted on it (lateness = this - fire_time)


class JobRow(SQLModel, table=True):
    """What a job adds to its call: the latest value its generator yielded (opaque bytes).

    One row per call of a function whose spec has kind "job", written with the call; the
    call row stays the source of truth for status, result and error. ``(progress_fence,
    progress_seq)`` orders updates so an older one never replaces a newer one.
    """

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_app_created", "app_id", "created_at"),)

    call_id: str = Field(primary_key=True, foreign_key="calls.id")
    app_id: int = Field(foreign_key="apps.id")
    created_at: float
    progress: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    progress_fence: int = 0
    progress_seq: int = 0
    progress_at: float | None = None


owners = OwnerRow.__table__
api_keys = ApiKeyRow.__table__
apps = AppRow.__table__
deployments = DeploymentRow.__table__
functions = FunctionRow.__table__
blobs = BlobRow.__table__
calls = CallRow.__table__
attempts = AttemptRow.__table__
instances = InstanceRow.__table__
logs = LogRow.__table__
service_replicas = ServiceReplicaRow.__table__
schedules = ScheduleRow.__table__
schedule_fires = FireRow.__table__
jobs = JobRow.__table__
