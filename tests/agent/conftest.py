"""Helpers for the agent tests: jobs made from real pickled functions, real workers."""

from __future__ import annotations

import hashlib
import itertools
import platform
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle
import pytest

from multinode_agent.worker import Job, Worker, WorkerPool
from tests.agent import payloads

cloudpickle.register_pickle_by_value(payloads)

_ids = itertools.count()


def blob_of(func: Callable[..., Any]) -> tuple[str, bytes]:
    blob = cloudpickle.dumps(func)
    return hashlib.sha256(blob).hexdigest(), blob


def make_job(
    func: Callable[..., Any],
    *args: Any,
    timeout_s: float = 30.0,
    python_version: str | None = None,
    cloudpickle_version: str | None = None,
    env: dict[str, str] | None = None,
    kind: str = "function",
    progress_interval_s: float = 0.5,
    environment: str | None = None,
    **kwargs: Any,
) -> Job:
    blob_hash, blob = blob_of(func)
    return Job(
        attempt_id=f"att-{next(_ids)}",
        function=func.__name__,
        blob_hash=blob_hash,
        blob=blob,
        input=cloudpickle.dumps((args, kwargs)),
        timeout_s=timeout_s,
        python_version=python_version or platform.python_version(),
        cloudpickle_version=cloudpickle_version or cloudpickle.__version__,
        env=env or {},
        kind=kind,
        progress_interval_s=progress_interval_s,
        environment=environment,
    )


@pytest.fixture
def worker() -> Iterator[Worker]:
    w = Worker(kill_grace_s=0.5)
    try:
        yield w
    finally:
        w.close()


@pytest.fixture
def pool() -> Iterator[WorkerPool]:
    p = WorkerPool(idle_s=60.0, warm=1, kill_grace_s=0.5)
    try:
        yield p
    finally:
        p.close()
