"""The ``mn`` command: help, one-line errors, and the commands over the in-memory plane."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from multinode.cli import app
from typer.testing import CliRunner

from tests.sdk.fake_plane import FakePlane
from tests.support.procs import free_port

runner = CliRunner()


def _mn(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "mn"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "multinode.cli"]
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


@pytest.mark.parametrize("args", [["--help"], ["deploy", "--help"], ["run", "--help"]])
def test_help_runs(args: list[str]) -> None:
    proc = _mn(*args)
    assert proc.returncode == 0, proc.stderr
    assert "Usage" in proc.stdout


def test_expected_error_is_one_red_line_without_traceback() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    proc = _mn("apps", env={"MN_URL": url, "MN_CONNECT_RETRY_S": "0"})
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"no control plane at {url} (from MN_URL)" in lines[0]


def test_login_refuses_a_url_that_does_not_answer(isolated_env: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = runner.invoke(app, ["login", url, "--key", "mnk_x"])
    assert result.exit_code == 1
    assert not (isolated_env / "config.json").exists()


APP = """
import multinode as mn

@mn.function(cpu=4, memory="8GiB", gpu="T4")
def double(x):
    return int(x) * 2

def main(n="2"):
    print("sum", sum(double.map(range(int(n)))))
"""


@pytest.fixture
def app_file(tmp_path: Path) -> Path:
    path = tmp_path / "cli_app.py"
    path.write_text(textwrap.dedent(APP))
    return path


def test_deploy_prints_app_version_and_resources(app_file: Path, plane: FakePlane) -> None:
    result = runner.invoke(app, ["deploy", str(app_file)])
    assert result.exit_code == 0, result.output
    assert "Deployed app cli-app version 1" in result.output
    assert "double" in result.output and "8 GiB" in result.output and "T4:1" in result.output
    listed = runner.invoke(app, ["apps", "--json"])
    assert json.loads(listed.output)[0]["name"] == "cli-app"


def test_run_deploys_an_ephemeral_app_calls_main_and_undeploys(
    app_file: Path, plane: FakePlane
) -> None:
    result = runner.invoke(app, ["run", str(app_file), "5"])
    assert result.exit_code == 0, result.output
    assert "sum 20" in result.output
    (name,) = plane.undeployed
    assert name.startswith("cli-app-run-")
    assert any(q.get("app") == name for q in plane.log_queries)


def test_run_undeploys_even_when_the_entry_fails(app_file: Path, plane: FakePlane) -> None:
    result = runner.invoke(app, ["run", f"{app_file}::double", "x"])
    assert result.exit_code != 0
    assert len(plane.undeployed) == 1


def test_run_without_main_names_the_fix(tmp_path: Path, plane: FakePlane) -> None:
    path = tmp_path / "no_main.py"
    path.write_text("import multinode as mn\n\n@mn.function\ndef f():\n    return 1\n")
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 1
    assert "define `def main():`" in result.output and "::ENTRY" in result.output


def test_listing_commands_print_tables_and_json(app_file: Path, plane: FakePlane) -> None:
    assert runner.invoke(app, ["deploy", str(app_file), "--name", "demo"]).exit_code == 0
    assert runner.invoke(app, ["run", f"{app_file}::main", "3"]).exit_code == 0
    calls = json.loads(runner.invoke(app, ["calls", "--json", "--limit", "2"]).output)
    assert len(calls) == 2 and calls[0]["status"] == "succeeded"
    table = runner.invoke(app, ["calls"])
    assert table.exit_code == 0 and "succeeded" in table.output
    assert runner.invoke(app, ["instances", "--json"]).output.strip() == "[]"
    assert runner.invoke(app, ["logs", "demo", "--function", "double"]).exit_code == 0
    assert plane.log_queries[-1] == {"app": "demo", "function": "double", "limit": "1000"}
    cancelled = runner.invoke(app, ["cancel", calls[0]["id"]])
    assert cancelled.exit_code == 0 and calls[0]["id"] in cancelled.output
    undeployed = runner.invoke(app, ["undeploy", "demo"])
    assert undeployed.exit_code == 0 and "undeployed" in undeployed.output
    missing = runner.invoke(app, ["undeploy", "nope"])
    assert missing.exit_code == 1 and "no app 'nope'" in missing.output
