"""The database: engine set-up for SQLite (WAL, one replica) and PostgreSQL (several).

Write transactions go through :meth:`Database.write`. On SQLite a process-wide lock
serialises them: SQLite has one writer anyway, queuing in Python wakes the next writer at
once instead of after SQLite's sleeping busy handler, and since no write can commit
between another writer's first read and its first write, a deferred transaction never
fails to upgrade its snapshot (SQLITE_BUSY_SNAPSHOT). The file lock on ``<db>.lock`` makes
a second control plane on the same file refuse to start, since the Python lock cannot
span processes. On PostgreSQL transactions run concurrently and claims use
``FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session
from sqlmodel import SQLModel

from multinode_controlplane import models  # noqa: F401  (registers the tables)

# Indexes that earlier versions created and a newer one replaced.
_RETIRED_INDEXES = ("ix_calls_app_status_created",)


class DatabaseInUseError(RuntimeError):
    """Another control plane already holds this SQLite database."""


class Memo:
    """Values read from rows that never change once written (an app's name, a deployment,
    a function), so that hot paths do not re-read them on every request.

    Kept per :class:`Database`, since ids mean nothing across databases. Bounded: once
    ``size`` entries are held it starts again empty. Safe across threads (single dict
    operations).
    """

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._values: dict[Any, Any] = {}

    def get(self, key: Any) -> Any:
        """The value stored under ``key``, or None."""
        return self._values.get(key)

    def put(self, key: Any, value: Any) -> None:
        if len(self._values) >= self._size:
            self._values.clear()
        self._values[key] = value


class Database:
    """An engine plus the transaction helpers every service uses.

    Args:
        url: SQLAlchemy URL, ``sqlite:///path`` or ``postgresql://...``.

    Raises:
        DatabaseInUseError: on SQLite, when another process holds the database.
    """

    def __init__(self, url: str) -> None:
        self.url = url = normalize_url(url)
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        self.is_sqlite = self.dialect == "sqlite"
        self._lock_file: IO[bytes] | None = None
        self._write_lock: threading.Lock | None = None
        self.memo = Memo()
        if self.is_sqlite:
            path = Path(parsed.database or "")
            if not parsed.database or parsed.database == ":memory:":
                raise ValueError("the control plane needs an SQLite file, not :memory:")
            path.parent.mkdir(parents=True, exist_ok=True)
            self.path = path
            self._lock_file = _exclusive_lock(path)
            self._write_lock = threading.Lock()
            self.engine = _sqlite_engine(url)
        else:
            self.path = None
            self.engine = create_engine(
                url, pool_size=10, max_overflow=40, pool_pre_ping=True, pool_recycle=1800
            )

    def create_tables(self) -> None:
        """Create missing tables, and missing indexes of existing ones; drop retired indexes."""
        SQLModel.metadata.create_all(self.engine)
        with self.engine.begin() as conn:
            for table in SQLModel.metadata.sorted_tables:
                for index in table.indexes:
                    index.create(conn, checkfirst=True)
            for name in _RETIRED_INDEXES:
                conn.exec_driver_sql(f"DROP INDEX IF EXISTS {name}")

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reads; whatever it wrote is rolled back."""
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        """A session inside one transaction, committed when the block ends without error.

        Never call the network inside: the transaction (and on SQLite every other writer)
        waits for it.
        """
        lock = self._write_lock or contextlib.nullcontext()
        with lock, Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    def describe(self) -> str:
        """The database, for logs and /health, without a password."""
        return make_url(self.url).render_as_string(hide_password=True)

    def close(self) -> None:
        """Dispose of the engine and release the SQLite file lock."""
        self.engine.dispose()
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None


def normalize_url(url: str) -> str:
    """``postgresql://`` means psycopg2, the driver installed with the server (SQLAlchemy 2.1
    would otherwise pick psycopg 3)."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return parsed.render_as_string(hide_password=False)


def _exclusive_lock(path: Path) -> IO[bytes]:
    lock_path = Path(f"{path}.lock")
    handle = open(lock_path, "ab")  # noqa: SIM115  (held for the life of the process)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise DatabaseInUseError(
            f"another control plane already uses {path}; SQLite allows one replica "
            "— use PostgreSQL for several"
        ) from None
    os.set_inheritable(handle.fileno(), False)
    return handle


def _sqlite_engine(url: str) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        # Let SQLAlchemy, not the sqlite3 module, decide where transactions begin, so
        # that reads see one snapshot (the documented pysqlite recipe).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:  # type: ignore[no-untyped-def]
        connection.exec_driver_sql("BEGIN")

    return engine
