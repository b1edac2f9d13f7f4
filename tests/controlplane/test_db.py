"""Database set-up rules and the import boundaries of the control plane."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from multinode_controlplane.db import Database, DatabaseInUseError


def test_sqlite_refuses_a_second_replica(tmp_path: Path) -> None:
    path = tmp_path / "cp.db"
    first = Database(f"sqlite:///{path}")
    try:
        with pytest.raises(DatabaseInUseError, match="SQLite allows one replica"):
            Database(f"sqlite:///{path}")
    finally:
        first.close()
    Database(f"sqlite:///{path}").close()  # free again once the first has gone


def test_second_control_plane_process_exits_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "cp.db"
    held = Database(f"sqlite:///{path}")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "multinode_controlplane", "--port", "1"],
            env={
                "MN_SERVER_DATABASE_URL": f"sqlite:///{path}",
                "MN_SERVER_COMPUTE": "none",
                "PATH": "",
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        held.close()
    assert proc.returncode == 1
    assert f"another control plane already uses {path}" in proc.stderr


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'cp.db'}")
    try:
        with db.read() as session:
            assert session.connection().exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        db.close()


def test_create_tables_brings_an_older_database_s_indexes_up_to_date(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'cp.db'}")
    try:
        db.create_tables()
        with db.write() as session:  # the calls index as an earlier version made it
            conn = session.connection()
            conn.exec_driver_sql("DROP INDEX ix_calls_app_status_created_id")
            conn.exec_driver_sql(
                "CREATE INDEX ix_calls_app_status_created ON calls (app_id, status, created_at)"
            )
        db.create_tables()
        with db.read() as session:
            names = set(
                session.connection()
                .exec_driver_sql("SELECT name FROM sqlite_master WHERE tbl_name = 'calls'")
                .scalars()
            )
        assert "ix_calls_app_status_created_id" in names
        assert "ix_calls_app_status_created" not in names
    finally:
        db.close()


def test_the_control_plane_never_imports_pickle_libraries_or_the_agent() -> None:
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('cloudpickle', 'multinode_agent'):\n"
        "            raise ImportError('forbidden: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import multinode_controlplane.app, multinode_controlplane.__main__\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_no_control_plane_module_imports_pickle() -> None:
    import multinode_controlplane

    root = Path(multinode_controlplane.__file__).parent
    offenders = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if any(
            line.strip().startswith(
                ("import pickle", "from pickle", "import cloudpickle", "from cloudpickle")
            )
            for line in p.read_text().splitlines()
        )
    ]
    assert offenders == []
