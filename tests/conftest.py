"""Fixtures shared by every test folder."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest

from tests.support.procs import free_port, moto_server

PG_ADMIN_URL = os.environ.get("MN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def aws_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of the local cloud's AWS emulator (a real moto server process) shared by the
    session, with dummy credentials set."""
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        os.environ.setdefault(key, value)
    with moto_server(tmp_path_factory.mktemp("moto")) as url:
        yield url


# What a client needs to talk to LocalStack: dummy credentials (account 000000000000).
LOCALSTACK_ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def localstack_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL (``http://127.0.0.1:<free port>``) of a real LocalStack for the session.

    Started by the project's launcher (`mn localstack up`: host mode, from
    ``.venv-localstack``, which `make test` builds), with its own data directory and the
    repository's init hooks (dict bucket and role; no DynamoDB: route it elsewhere with
    ``AWS_ENDPOINT_URL_DYNAMODB``); stopped at the end of the session. Dummy credentials
    and region ``us-east-1`` are set in the environment when not set already
    (:data:`LOCALSTACK_ENV`). Skips with a one-line reason when LocalStack's virtual
    environment is missing, except under CI=true.
    """
    from multinode import _localstack

    try:
        python = _localstack.find_python()
    except _localstack.LocalStackError as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"LocalStack unavailable: {exc.message}")
    for key, value in LOCALSTACK_ENV.items():
        os.environ.setdefault(key, value)
    config = _localstack.LocalStackConfig(
        home=tmp_path_factory.mktemp("localstack-home"), port=free_port(), python=python
    )
    with _localstack.running(config) as state:
        yield state["endpoint"]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A uniquely named PostgreSQL database with the control plane's tables, for this
    session, dropped at the end. Skips when PostgreSQL is unreachable, except under CI=true."""
    with fresh_postgres_database() as url:
        yield url


@contextlib.contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """Create a uniquely named database with the control plane's tables; drop it after."""
    from sqlalchemy import create_engine, text

    from multinode_controlplane.db import Database, normalize_url

    try:
        admin = create_engine(normalize_url(PG_ADMIN_URL), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"PostgreSQL unreachable at {PG_ADMIN_URL}: {type(exc).__name__}")
    name = f"mn_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    schema = Database(url)
    schema.create_tables()
    schema.close()
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
