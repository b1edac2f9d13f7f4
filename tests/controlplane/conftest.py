"""Fixtures of the control-plane tests: every service test runs against SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from multinode_controlplane.db import Database
from multinode_controlplane.services.auth import DEFAULT_OWNER, Principal, ensure_api_key
from multinode_controlplane.services.context import Context
from multinode_controlplane.services.events import Notifier
from multinode_controlplane.settings import ServerSettings
from tests.controlplane.helpers import ManualClock


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a fresh SQLite file, or the session's PostgreSQL database emptied."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'controlplane.db'}"
    url = request.getfixturevalue("postgres_url")
    db = Database(url)
    try:
        names = ", ".join(f'"{t}"' for t in _table_names())
        with db.write() as session:
            session.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    finally:
        db.close()
    return url


def _table_names() -> list[str]:
    from sqlmodel import SQLModel

    return list(SQLModel.metadata.tables)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def settings() -> ServerSettings:
    return ServerSettings(
        database_url="sqlite:///unused",
        compute="none",
        agent_lost_after_s=30,
        boot_timeout_s=300,
        max_call_attempts=3,
        launch_backoff_s=30,
        reconcile_interval_s=30,
    )


@pytest.fixture
def ctx(database_url: str, settings: ServerSettings, clock: ManualClock) -> Iterator[Context]:
    db = Database(database_url)
    db.create_tables()
    settings = settings.model_copy(update={"database_url": database_url})
    try:
        yield Context(db=db, notifier=Notifier(), settings=settings, clock=clock)
    finally:
        db.close()


@pytest.fixture
def user(ctx: Context) -> Principal:
    ensure_api_key(ctx, "mnk_test-key")
    return Principal(kind="key", owner=DEFAULT_OWNER)
