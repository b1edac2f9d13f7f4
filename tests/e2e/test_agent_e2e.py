"""The agent against the real control plane: its blob cache, and a refused registration."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import multinode as mn

pytestmark = pytest.mark.e2e


def test_an_instance_fetches_a_function_once_then_runs_it_from_its_cache(
    local_cloud, write_app, app_name
) -> None:
    path = write_app(
        f"""
        import multinode as mn

        TAG = {app_name!r}  # new code for this test: no cache has seen these blobs

        @mn.function(cpu=0.1, cooldown=30)
        def cached(x):
            return (TAG, x)

        @mn.function(cpu=0.1, cooldown=30)
        def never_fetched():
            return TAG
        """
    )
    info = mn.deploy(path, name=app_name)
    blob = {f.name: f.blob_hash for f in info.functions}
    cached = mn.get_function(app_name, "cached")
    assert cached.call(0) == (app_name, 0)
    assert (local_cloud["blob_cache"] / blob["cached"]).exists()

    # The control plane loses both blobs: what was fetched once keeps running from the
    # cache on fresh workers; what was never fetched cannot run at all.
    db = sqlite3.connect(local_cloud["config"].dir / "controlplane.db", timeout=30)
    with db:
        db.execute("DELETE FROM blobs WHERE sha256 IN (?, ?)", tuple(blob.values()))
    db.close()
    assert cached.map(range(10)) == [(app_name, x) for x in range(10)]
    with pytest.raises(mn.InfrastructureError, match=f"blob {blob['never_fetched']}"):
        mn.get_function(app_name, "never_fetched").call()


def test_an_agent_with_a_refused_bootstrap_token_powers_its_vm_off(
    local_cloud, tmp_path: Path
) -> None:
    marker = tmp_path / "powered-off"
    env = {
        **os.environ,
        "MN_AGENT_URL": local_cloud["url"],
        "MN_AGENT_BOOTSTRAP_TOKEN": "mnb_not_issued_by_this_control_plane",
        "MN_AGENT_CACHE_DIR": str(tmp_path / "blobs"),
        "MN_AGENT_SHUTDOWN_COMMAND": f"touch {marker}",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "multinode_agent"], env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "registration refused" in proc.stderr
    assert marker.exists(), "a VM whose agent cannot register must not idle, billed"
