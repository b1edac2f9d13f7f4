"""The agent's settings, read from ``MN_AGENT_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "multinode-agent" / "blobs"


class AgentSettings(BaseSettings):
    """Everything the agent needs, built once and passed to :class:`~multinode_agent.agent.Agent`.

    User-data sets ``MN_AGENT_URL`` and ``MN_AGENT_BOOTSTRAP_TOKEN``; the rest have defaults
    that suit a real VM. Tests build this object directly instead of patching globals.
    """

    model_config = SettingsConfigDict(env_prefix="MN_AGENT_", extra="ignore")

    url: str = Field(
        description="base URL of the control plane as seen from this VM, e.g. http://10.0.0.5:8000 "
        "(MN_AGENT_URL); also given to user code as MN_URL"
    )
    bootstrap_token: str = Field(
        description="single-use token from user-data, exchanged at registration for the agent "
        "token (MN_AGENT_BOOTSTRAP_TOKEN)"
    )
    unreachable_limit_s: float = Field(
        300.0,
        gt=0,
        description="if every request to the control plane fails for longer than this, stop the "
        "workers and shut the machine down, so a lost control plane leaves no VM billing "
        "(MN_AGENT_UNREACHABLE_LIMIT_S)",
    )
    shutdown_command: str | None = Field(
        None,
        description="shell command that powers the machine off when the agent shuts down "
        "(server asked, token revoked, control plane unreachable), e.g. 'shutdown -h now'; "
        "None: only exit the agent process with code 0 (MN_AGENT_SHUTDOWN_COMMAND)",
    )
    cache_dir: Path = Field(
        default_factory=_default_cache_dir,
        description="directory where function blobs are cached on disk by content hash "
        "(MN_AGENT_CACHE_DIR)",
    )
    worker_idle_s: float = Field(
        60.0,
        ge=0,
        description="a worker process idle for longer than this exits, except the warm ones "
        "(MN_AGENT_WORKER_IDLE_S)",
    )
    warm_workers: int = Field(
        1,
        ge=0,
        description="idle worker processes kept alive regardless of worker_idle_s, so the "
        "next call does not wait for a process to start (MN_AGENT_WARM_WORKERS)",
    )
    report_interval_s: float = Field(
        0.01,
        ge=0,
        le=5,
        description="longest time a finished result or log line waits so it can be sent in "
        "one report together with others (MN_AGENT_REPORT_INTERVAL_S)",
    )
    report_interval_busy_s: float = Field(
        0.1,
        ge=0,
        le=5,
        description="as report_interval_s, while calls queue on this instance for CPU: the "
        "slots stay busy without a refill, so results wait longer to travel in larger "
        "batches (MN_AGENT_REPORT_INTERVAL_BUSY_S)",
    )
    progress_interval_s: float = Field(
        0.5,
        ge=0,
        le=60,
        description="least time between two progress reports of one running job: a job's "
        "generator may yield as fast as it likes, the latest value wins "
        "(MN_AGENT_PROGRESS_INTERVAL_S)",
    )
    kill_grace_s: float = Field(
        1.0,
        ge=0,
        description="after SIGTERM, how long a cancelled or timed-out worker may take to exit "
        "before it gets SIGKILL (MN_AGENT_KILL_GRACE_S)",
    )
    prefetch_below_s: float = Field(
        0.5,
        ge=0,
        description="while every function this agent ran in the last minute takes less than "
        "this on average, it asks for calls beyond its free slots (one instance's worth, up "
        "to 16 for very short calls), so a slot never waits on a round trip; calls of a "
        "function this short run in batches; 0 turns both off (MN_AGENT_PREFETCH_BELOW_S)",
    )
    prefetch_max_wait_s: float = Field(
        5.0,
        gt=0,
        description="a prefetched call still waiting for a slot after this long is given back "
        "to the control plane unstarted, for another instance (MN_AGENT_PREFETCH_MAX_WAIT_S)",
    )
    vm_address: str | None = Field(
        None,
        validation_alias="MN_VM_ADDRESS",
        description="this VM's address as others reach it, set by the local cloud's VM runner "
        "(MN_VM_ADDRESS); unset on EC2, where the metadata service gives the private IP. "
        "Services report their URL with it",
    )
    vm_isolated: bool | None = Field(
        None,
        validation_alias="MN_VM_ISOLATED",
        description="whether this VM has ports of its own (MN_VM_ISOLATED, set by the local "
        "cloud's VM runner: 1 in a network namespace, 0 for a plain process, where services "
        "get a free port in PORT instead of the one they declared); unset means yes",
    )
