"""The ``mn`` command without a control plane: help, one-line errors, mistakes caught locally.

The commands that talk to a control plane are tested in ``tests/e2e`` against the real one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from multinode.cli import app
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


def test_run_without_main_names_the_fix(tmp_path: Path) -> None:
    # Found while loading the file, before anything is deployed (no control plane here).
    path = tmp_path / "no_main.py"
    path.write_text("import multinode as mn\n\n@mn.function\ndef f():\n    return 1\n")
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 1
    assert "define `def main():`" in result.output and "::ENTRY" in result.output
