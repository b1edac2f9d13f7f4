"""Wire schemas: the JSON bodies exchanged by the SDK, the control plane and the agent.

One definition serves all three sides, so a field renamed here is renamed everywhere.
Binary payloads (pickled inputs, outputs, exceptions) travel as base64 strings
(``Base64Bytes``); the control plane stores them as opaque bytes and never unpickles them.

``WIRE_FORMAT`` versions everything persisted or sent; bump it on an incompatible change.
This module imports only pydantic (the control plane and the agent import it too).
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import Enum
from typing import Literal

from pydantic import Base64Bytes, BaseModel, Field, field_validator

WIRE_FORMAT = 1
# A function blob that is an import reference (JSON) rather than a cloudpickle, and the
# manifest of an app's source files it names: see multinode._source.
SOURCE_REFERENCE_FORMAT = "mn-import/1"
SOURCE_MANIFEST_FORMAT = "mn-source/1"
MAX_ENV_VARS = 200
MAX_SECRETS_PER_FUNCTION = 50
MAX_SECRET_KEYS = 100
MAX_ENV_VALUE_BYTES = 32 * 1024
MAX_REQUIREMENTS = 500
MAX_REQUIREMENT_LENGTH = 500
PYTHON_MINOR_PATTERN = r"^3\.[0-9]{1,2}$"

# ---------------------------------------------------------------------------- errors


class ErrorBody(BaseModel):
    """Every failed API response: a stable code, a sentence, structured details."""

    code: str
    message: str
    details: dict = Field(default_factory=dict)


# ---------------------------------------------------------------------------- functions


class FunctionSpec(BaseModel):
    """Resources and options of one deployed function (validated by the SDK's decorator)."""

    kind: Literal["function", "job", "service"] = Field(
        "function",
        description="function: called; job: long work with progress; service: kept running",
    )
    cpu: float = Field(1.0, gt=0, le=192)
    memory_mib: int | None = Field(None, gt=0)
    gpu_type: str | None = None
    gpu_count: int = Field(0, ge=0)
    timeout_s: float = Field(300.0, gt=0)
    retries: int = Field(0, ge=0, le=20)
    max_workers: int = Field(10, ge=1, le=1000)
    cooldown_s: float = Field(60.0, ge=0)
    capacity_timeout_s: float = Field(
        1800.0,
        gt=0,
        le=7 * 86400,
        description="a call still queued this long while no instance type has capacity fails",
    )
    port: int | None = Field(None, ge=1, le=65535, description="service: the port it listens on")
    replicas: int = Field(1, ge=1, le=100, description="service: how many copies run")
    env: dict[str, str] = Field(
        default_factory=dict,
        max_length=MAX_ENV_VARS,
        description="variables set in this function's processes on the VM",
    )
    secrets: list[str] = Field(
        default_factory=list,
        max_length=MAX_SECRETS_PER_FUNCTION,
        description="names of secrets whose keys are set in this function's processes",
    )
    pip: list[str] = Field(
        default_factory=list,
        max_length=MAX_REQUIREMENTS,
        description="requirements of this function, added to the app's requirements.txt",
    )
    python: str | None = Field(
        None,
        pattern=PYTHON_MINOR_PATTERN,
        description="Python minor version to run on (default: the deployer's)",
    )
    environment: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="the built environment (app and function requirements) it runs in; "
        "set by the SDK at deploy, None for none",
    )

    @field_validator("env")
    @classmethod
    def _check_env(cls, env: dict[str, str]) -> dict[str, str]:
        for key, value in env.items():
            problem = env_problem(key, value)
            if problem:
                raise ValueError(problem)
        return env

    @field_validator("pip")
    @classmethod
    def _check_pip(cls, requirements: list[str]) -> list[str]:
        return check_requirements(requirements)

    @field_validator("secrets")
    @classmethod
    def _check_secrets(cls, names: list[str]) -> list[str]:
        for name in names:
            if not re.match(SECRET_NAME_PATTERN, name):
                raise ValueError(f"secret name {name!r} is not valid; {SECRET_NAME_RULE}")
        if len(set(names)) != len(names):
            raise ValueError("a secret is named twice; name each once")
        return names


APP_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
APP_NAME_RULE = (
    "use letters, digits, '-', '_' or '.', starting with a letter or digit, at most 63 characters"
)
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
# Secrets are named as apps are: one rule.
SECRET_NAME_PATTERN = APP_NAME_PATTERN
SECRET_NAME_RULE = APP_NAME_RULE


def requirement_problem(requirement: object) -> str | None:
    """Why ``requirement`` is not one requirement line, or None if it may be.

    A requirement is a PEP 508 line such as ``pandas==2.2.3`` or ``torch>=2; sys_platform
    == "linux"``; options (``-r``, ``--index-url``) and local paths are refused: an
    environment is built on the control plane, where the user's files do not exist.
    """
    if not isinstance(requirement, str):
        return f"a requirement must be a string, not {type(requirement).__name__}"
    text = requirement.strip()
    if not text or len(text) > MAX_REQUIREMENT_LENGTH or any(c in text for c in "\r\n\x00"):
        return (
            f"requirement {requirement[:80]!r} is not one line of at most "
            f"{MAX_REQUIREMENT_LENGTH} characters, e.g. 'pandas==2.2.3'"
        )
    if text.startswith("-"):
        return (
            f"requirement {text!r} is an option; list packages only, e.g. 'pandas==2.2.3' "
            "(indexes and constraints are the control plane's settings)"
        )
    if text.startswith((".", "/", "~")) or "file:" in text:
        return f"requirement {text!r} names a local path, which the build cannot read"
    return None


def check_requirements(requirements: list[str]) -> list[str]:
    """``requirements`` if every one passes :func:`requirement_problem`.

    Raises:
        ValueError: the first problem found (pydantic turns it into a 422).
    """
    for requirement in requirements:
        problem = requirement_problem(requirement)
        if problem:
            raise ValueError(problem)
    return requirements


def env_problem(key: str, value: object) -> str | None:
    """Why ``key=value`` cannot be set in a function's environment, or None if it can.

    ``MN_`` variables belong to the platform (they tell the SDK where it runs).
    """
    if not isinstance(key, str) or not re.match(ENV_NAME_PATTERN, key):
        return (
            f"variable name {key!r} is not valid; use letters, digits and '_', not starting "
            "with a digit, e.g. GREETING"
        )
    if key.upper().startswith("MN_"):
        return f"variable {key!r} is reserved: names starting with MN_ belong to Multinode"
    if not isinstance(value, str):
        return f"the value of {key} must be a string, not {type(value).__name__}"
    if "\x00" in value or len(value.encode()) > MAX_ENV_VALUE_BYTES:
        return f"the value of {key} must be at most {MAX_ENV_VALUE_BYTES} bytes, without NUL"
    return None


class FunctionUpload(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
    spec: FunctionSpec
    blob_hash: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the pickled function")


class DeployRequest(BaseModel):
    format: int = WIRE_FORMAT
    functions: list[FunctionUpload]
    python_version: str = Field(description="major.minor.micro of the pickling interpreter")
    cloudpickle_version: str
    ephemeral: bool = Field(False, description="made by `mn run`; removed when the run ends")
    schedules: list[ScheduleUpload] = Field(
        default_factory=list, description="schedules of this version, one per scheduled function"
    )


class BlobsMissingRequest(BaseModel):
    hashes: list[str] = Field(max_length=1000, description="sha256 hex digests to look for")


class BlobsMissingResponse(BaseModel):
    missing: list[str] = Field(description="the hashes asked about that are not stored")


class SecretSet(BaseModel):
    """The whole content of a secret: its keys and their values (replaces what was there)."""

    values: dict[str, str] = Field(min_length=1, max_length=MAX_SECRET_KEYS)


class SecretInfo(BaseModel):
    """A secret as listed: its name and keys; values are never sent back."""

    name: str
    keys: list[str]
    created_at: datetime
    updated_at: datetime


class FunctionEnvRequest(BaseModel):
    """An agent asks for the variables of one function of its app's deployed version."""

    function: str
    version: int


class EnvironmentRequest(BaseModel):
    """Build (or reuse) the environment of these requirements for VMs of this Python."""

    python: str = Field(pattern=PYTHON_MINOR_PATTERN, description="e.g. 3.11")
    requirements: list[str] = Field(min_length=1, max_length=MAX_REQUIREMENTS)

    @field_validator("requirements")
    @classmethod
    def _check_requirements(cls, requirements: list[str]) -> list[str]:
        return check_requirements(requirements)


class EnvironmentStatus(str, Enum):
    pending = "pending"
    building = "building"
    ready = "ready"
    failed = "failed"


class EnvironmentInfo(BaseModel):
    """An environment and its build. ``log`` holds the build's output from ``log_offset``."""

    id: str = Field(description="sha256 of what identifies it: Python, platform, requirements")
    python: str
    platform: str
    requirements: list[str]
    status: EnvironmentStatus
    builds: int = Field(description="how many times it was built (once, unless one failed)")
    size: int | None = Field(None, description="bytes of the packed environment")
    packages: list[str] = Field(
        default_factory=list, description="the resolved pins it holds beyond the VM's own"
    )
    build_s: float | None = Field(None, description="how long the last build took")
    error: str | None = None
    log: str = ""
    log_offset: int = 0
    log_size: int = 0
    created_at: datetime


class EnvironmentRef(BaseModel):
    """Where an agent downloads a built environment."""

    id: str
    url: str = Field(description="a presigned GET of the packed environment (tar.gz)")
    sha256: str
    size: int


class FunctionEnv(BaseModel):
    env: dict[str, str] = Field(description="the function's env, then its secrets' keys")
    environment: EnvironmentRef | None = Field(
        None, description="the packages it runs with, if it has requirements"
    )
    secret_keys: list[str] = Field(
        default_factory=list,
        description="the keys of env whose values came from secrets (masked in logs)",
    )


class FunctionInfo(BaseModel):
    app: str
    name: str
    version: int
    spec: FunctionSpec
    blob_hash: str


class DeploymentInfo(BaseModel):
    app: str
    version: int
    created_at: datetime
    python_version: str
    cloudpickle_version: str
    functions: list[FunctionInfo]


class AppInfo(BaseModel):
    name: str
    status: Literal["deployed", "undeployed"]
    version: int | None
    created_at: datetime
    ephemeral: bool
    functions: list[str]


# ---------------------------------------------------------------------------- calls


class CallStatus(str, Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    timed_out = "timed_out"

    @property
    def terminal(self) -> bool:
        return self not in (CallStatus.queued, CallStatus.running)


class CallsCreate(BaseModel):
    """One or many calls of one function; each input is a pickled ``(args, kwargs)``."""

    app: str
    function: str
    version: int | None = Field(None, description="None: the app's current version")
    inputs: list[Base64Bytes] = Field(min_length=1, max_length=10_000)
    parent_call_id: str | None = None
    wait: float = Field(
        0.0,
        ge=0,
        le=60,
        description="seconds to wait for the outputs before answering (a single call saves"
        " a separate POST /calls/outputs); outputs not ready by then are fetched as usual",
    )


class CallsCreated(BaseModel):
    app: str
    function: str
    version: int
    call_ids: list[str]
    outputs: list[CallOutput] = Field(
        default_factory=list, description="outputs that were ready within the request's wait"
    )


class CallInfo(BaseModel):
    id: str
    app: str
    function: str
    version: int
    status: CallStatus
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    failure_reason: str | None = None
    instance_id: str | None = None
    parent_call_id: str | None = None


class CallError(BaseModel):
    """A user exception, as the agent captured it."""

    type: str = Field(description="qualified name, e.g. builtins.ValueError")
    message: str
    traceback: str
    pickled: Base64Bytes | None = Field(
        None, description="the cloudpickled exception, if it pickled"
    )


class CallOutput(BaseModel):
    """The outcome of a call that reached a terminal status."""

    call_id: str
    status: CallStatus
    output: Base64Bytes | None = Field(None, description="pickled return value when succeeded")
    error: CallError | None = Field(None, description="the user's exception when failed")
    reason: str | None = Field(None, description="why it failed/timed out/was cancelled")


class OutputsRequest(BaseModel):
    """Long-poll: answer as soon as at least one of ``call_ids`` is terminal, or at ``timeout``."""

    call_ids: list[str] = Field(min_length=1, max_length=10_000)
    timeout: float = Field(30.0, ge=0, le=60)


class OutputsResponse(BaseModel):
    outputs: list[CallOutput]


class LogEntry(BaseModel):
    id: int
    ts: datetime
    app: str
    function: str
    call_id: str
    stream: Literal["stdout", "stderr", "system"]
    text: str


class LogsPage(BaseModel):
    lines: list[LogEntry]
    next_after: int = Field(description="pass as ?after= to get the lines that follow")


# ---------------------------------------------------------------------------- instances


class InstanceState(str, Enum):
    launching = "launching"  # row written, RunInstances not yet confirmed
    booting = "booting"  # the cloud has it; its agent has not registered yet
    ready = "ready"  # agent registered and heart-beating
    terminating = "terminating"
    terminated = "terminated"
    failed = "failed"  # never came up, or was lost


class InstanceInfo(BaseModel):
    id: str
    cloud_id: str | None
    app: str
    instance_type: str
    vcpus: float
    memory_mib: int
    price_per_hour: float
    state: InstanceState
    launched_for: str = Field(description="the function whose demand launched it")
    running_calls: int
    launched_at: datetime
    ready_at: datetime | None = None
    terminated_at: datetime | None = None
    reason: str | None = None


# ---------------------------------------------------------------------------- agent protocol


class RegisterRequest(BaseModel):
    bootstrap_token: str
    python_version: str
    cloudpickle_version: str
    hostname: str
    agent_version: str


class RegisterResponse(BaseModel):
    instance_id: str
    agent_token: str = Field(description="scoped to this instance's app; send as Bearer")
    app: str
    vcpus: float
    memory_mib: int
    heartbeat_interval_s: float
    poll_timeout_s: float


class Assignment(BaseModel):
    """One attempt of one call, given to an agent. ``fence`` must come back with the result."""

    attempt_id: str
    call_id: str
    fence: int
    app: str
    function: str
    version: int
    blob_hash: str
    input: Base64Bytes
    timeout_s: float
    cpu: float
    python_version: str = Field(description="interpreter that pickled the function and input")
    cloudpickle_version: str
    kind: Literal["function", "job", "service"] = Field(
        "function", description="the function's kind; a job's generator reports progress"
    )
    port: int | None = Field(None, description="service: the port its process listens on")


MAX_PREFETCH = 16
"""Most instances' worth of calls an agent may hold beyond its free capacity."""


class PollRequest(BaseModel):
    """Long-poll for work; it doubles as the agent's heartbeat."""

    running: list[str] = Field(default_factory=list, description="attempt ids still running here")
    wait: float = Field(20.0, ge=0, le=60)
    prefetch: int = Field(
        0,
        ge=0,
        le=MAX_PREFETCH,
        description="also take up to this many instances' worth of calls beyond the free "
        "capacity, to start as slots free up (agents ask while their calls are short: the "
        "shorter, the more)",
    )


class PollResponse(BaseModel):
    assignments: list[Assignment] = Field(default_factory=list)
    cancel: list[str] = Field(default_factory=list, description="attempt ids to stop now")
    shutdown: bool = False


class AttemptResult(BaseModel):
    attempt_id: str
    fence: int
    status: Literal["succeeded", "failed", "timed_out", "cancelled"]
    output: Base64Bytes | None = None
    error: CallError | None = None
    reason: str | None = None
    final: bool = Field(
        False,
        description="the failure cannot succeed on another attempt (the VM cannot load what "
        "was deployed: another Python or cloudpickle); the call fails at once, retries unspent",
    )


class AgentLog(BaseModel):
    attempt_id: str
    stream: Literal["stdout", "stderr", "system"]
    text: str
    ts: float = Field(description="unix seconds")


class ServiceEvent(BaseModel):
    """What became of a service replica's process on its instance, sent with a report."""

    attempt_id: str
    fence: int
    state: Literal["starting", "ready", "crashed"]
    url: str | None = Field(None, description="where the replica answers, once ready")
    restarts: int = Field(0, ge=0, description="processes restarted after an exit so far")
    crash_looping: bool = Field(False, description="it keeps exiting soon after it starts")
    detail: str | None = Field(None, description="how the process last ended")
    ts: float = Field(description="unix seconds")


class ReportRequest(BaseModel):
    results: list[AttemptResult] = Field(default_factory=list)
    logs: list[AgentLog] = Field(default_factory=list)
    services: list[ServiceEvent] = Field(default_factory=list)
    released: list[str] = Field(
        default_factory=list,
        description="prefetched attempt ids this agent could not start soon enough; their "
        "calls are queued again without spending retries",
    )
    prefetch: int = Field(0, ge=0, le=MAX_PREFETCH, description="as in PollRequest, for the refill")
    progress: list[AttemptProgress] = Field(
        default_factory=list, description="the latest value each running job yielded"
    )


class ReportResponse(BaseModel):
    rejected: list[str] = Field(
        default_factory=list,
        description="attempt ids whose result was refused (stale fence, unknown attempt)",
    )
    assignments: list[Assignment] = Field(
        default_factory=list,
        description="new work claimed for the capacity these results freed (run them as if"
        " a poll had returned them)",
    )


class AwsProblem(BaseModel):
    """One thing missing or refused in the AWS target a control plane was given."""

    item: str = Field(description="what was checked, e.g. 'dict table', 'AMI', 'launch'")
    setting: str | None = Field(None, description="the variable naming it, e.g. MN_AWS_AMI_ID")
    message: str = Field(description="what is wrong and how to fix it")


class AwsCheck(BaseModel):
    """The control plane's start-up check of its AWS target (infra/README.md)."""

    status: Literal["pending", "ok", "problems"]
    checked: list[str] = Field(default_factory=list, description="items checked, in order")
    problems: list[AwsProblem] = Field(default_factory=list)
    duration_s: float | None = None


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str
    database: str
    aws: AwsCheck | None = Field(
        None, description="the AWS target's start-up check; None when none runs"
    )


# ---------------------------------------------------------------------------- schedules


class ScheduleUpload(BaseModel):
    """A schedule as deployed: which function it runs, when, and its policies.

    ``rule`` is ``multinode.schedule_math``'s versioned ``to_json()`` dict; the control plane
    reads it back with the same code. ``input`` is the pickled ``((), {})`` each fire's call
    receives, made by the SDK because the control plane never pickles.
    """

    format: int = WIRE_FORMAT
    function: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
    rule: dict
    overlap: Literal["skip", "queue", "allow"] = "skip"
    catchup_window_s: float = Field(3600.0, ge=0)
    input: Base64Bytes


class FireStatus(str, Enum):
    dispatched = "dispatched"  # a call was created for this due time
    skipped = "skipped"  # overlap="skip" (or a run already queued): no call
    missed = "missed"  # due while no scheduler ran, and not the one catch-up run
    queued = "queued"  # overlap="queue": waits for the previous run to finish


class FireInfo(BaseModel):
    app: str
    function: str
    fire_time: datetime
    status: FireStatus
    call_id: str | None = None
    reason: str | None = None
    dispatched_at: datetime | None = Field(None, description="when the scheduler acted on it")


class ScheduleInfo(BaseModel):
    app: str
    function: str
    kind: Literal["interval", "cron"]
    description: str
    timezone: str
    rule: dict
    overlap: Literal["skip", "queue", "allow"]
    catchup_window_s: float
    status: Literal["active", "paused", "inactive", "stopped"] = Field(
        description="inactive: the app is undeployed; stopped: its rule failed (see error)"
    )
    next_fires: list[datetime] = Field(default_factory=list)
    last_fire: FireInfo | None = None
    error: str | None = None


class TriggerResponse(BaseModel):
    app: str
    function: str
    call_id: str


DeployRequest.model_rebuild()
CallsCreated.model_rebuild()  # it refers to CallOutput, defined after it


# ---------------------------------------------------------------------------- jobs


class JobStatus(str, Enum):
    """A job run's status, derived from its call (see ``docs/jobs.md``)."""

    pending = "pending"  # queued, waiting for capacity
    running = "running"
    succeeded = "succeeded"
    failed = "failed"  # raised, timed out, or could not be run
    cancelling = "cancelling"  # cancel requested; its process has not ended yet
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


class AttemptProgress(BaseModel):
    """The latest value a running job's generator yielded, pickled by the worker.

    ``(fence, seq)`` orders updates: the control plane keeps an update only if it is newer
    than the one it holds, so a retried or late report never goes back in time.
    """

    attempt_id: str
    fence: int
    seq: int = Field(ge=1, description="1 for the first value this attempt yielded")
    value: Base64Bytes


class JobInfo(BaseModel):
    """One run of a job (``GET /v1/jobs/{id}``); its id is the id of its call."""

    id: str
    app: str
    function: str = Field(description="the job's name within its app")
    version: int
    status: JobStatus
    call_status: CallStatus = Field(description="the underlying call's status")
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    result: Base64Bytes | None = Field(
        None,
        description="pickled: the final result once succeeded, otherwise the latest value"
        " the job yielded (None before the first)",
    )
    result_at: datetime | None = Field(None, description="when `result` last changed")
    yields: int = Field(0, description="values yielded so far by the latest attempt")
    error: CallError | None = Field(None, description="the user's exception when failed")
    reason: str | None = Field(None, description="why it failed or was cancelled")


ReportRequest.model_rebuild()  # it refers to AttemptProgress, defined after it


# ---------------------------------------------------------------------------- dicts


class DictCredentials(BaseModel):
    """Short-lived AWS credentials for one app's dicts (``POST /apps/{app}/dict-credentials``).

    A session policy limits them to items whose partition key starts with ``key_prefix``
    and to S3 objects under ``object_prefix`` in ``bucket``.
    """

    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: datetime
    region: str
    table: str
    bucket: str
    key_prefix: str = Field(description="every partition key of this app starts with it")
    object_prefix: str = Field(description="every S3 object key of this app starts with it")
    endpoint_url: str | None = Field(None, description="AWS endpoint to use; None: AWS itself")
    dynamodb_endpoint_url: str | None = Field(
        None, description="DynamoDB's endpoint when it differs from endpoint_url"
    )


class DictsDeleted(BaseModel):
    """What ``DELETE /apps/{app}/dicts`` removed."""

    app: str
    dicts: list[str]
    items: int
    objects: int


# ---------------------------------------------------------------------------- services


class ServiceState(str, Enum):
    pending = "pending"  # waiting for its instance
    starting = "starting"  # its process runs; the port does not answer yet
    ready = "ready"  # the port answers at ``url``
    crashed = "crashed"  # its process exited; the agent restarts it after a back-off
    stopping = "stopping"  # replaced or undeployed; its process is being stopped
    stopped = "stopped"


class ServiceInfo(BaseModel):
    """One replica of one version of a service."""

    app: str
    name: str
    version: int
    replica: int
    state: ServiceState
    url: str | None = None
    endpoint: str | None = Field(
        None,
        description="the service's stable address at the gateway, the same for every "
        "replica and version (None without a gateway)",
    )
    restarts: int = 0
    crash_looping: bool = False
    last_exit: str | None = None
    call_id: str
    instance_id: str | None = None
    created_at: datetime
    ready_at: datetime | None = None
    stopped_at: datetime | None = None
