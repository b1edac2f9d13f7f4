"""User-data scripts: shape, quoting, and that bash runs them as intended."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from multinode.errors import InvalidRequestError
from multinode_provisioner.userdata import FORMAT_LINE, render


def test_script_shape() -> None:
    script = render(
        control_plane_url="http://10.0.0.1:8000",
        bootstrap_token="mnb_abc",
        install_command="pip install multinode==0.1.0",
        extra_env={"MN_APP": "demo"},
    )
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    assert FORMAT_LINE in lines and "set -euo pipefail" in lines
    assert lines.index("pip install multinode==0.1.0") < len(lines) - 1
    assert lines[-1] == 'exec "${MN_PYTHON:-python3}" -m multinode_agent'


def test_values_are_shell_quoted_and_reach_the_agent(tmp_path: Path) -> None:
    nasty = "a b'c\"$(touch pwned)`x`;\n$HOME"
    script = render(
        control_plane_url="http://127.0.0.1:1/x?a=1&b=2",
        bootstrap_token="mnb_'tok'",
        install_command=None,
        extra_env={"MN_EXTRA": nasty},
    )
    # A stand-in "python" that prints what the agent would see.
    fake = tmp_path / "fakepython"
    fake.write_text(
        '#!/bin/bash\nprintf "%s\\n" "$@"; printf "%s|" "$MN_AGENT_URL" "$MN_AGENT_BOOTSTRAP_TOKEN" "$MN_EXTRA"\n'
    )
    fake.chmod(0o755)
    (tmp_path / "user-data.sh").write_text(script)
    out = subprocess.run(
        ["bash", "user-data.sh"],
        cwd=tmp_path,
        env={"MN_PYTHON": str(fake), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert out == f"-m\nmultinode_agent\nhttp://127.0.0.1:1/x?a=1&b=2|mnb_'tok'|{nasty}|"
    assert not (tmp_path / "pwned").exists()


def test_failed_install_stops_the_script(tmp_path: Path) -> None:
    script = render(
        control_plane_url="u", bootstrap_token="t", install_command="false", extra_env={}
    )
    (tmp_path / "ud.sh").write_text(script)
    result = subprocess.run(
        ["bash", "ud.sh"],
        cwd=tmp_path,
        env={"MN_PYTHON": "/bin/echo"},
        capture_output=True,
        timeout=30,
    )
    assert result.returncode != 0 and b"multinode_agent" not in result.stdout


@pytest.mark.parametrize("name", ["1BAD", "A-B", "X Y", "MN_AGENT_URL", "MN_PYTHON"])
def test_bad_or_reserved_env_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidRequestError, match=name):
        render(control_plane_url="u", bootstrap_token="t", extra_env={name: "v"})


def test_oversized_script_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="16384"):
        render(control_plane_url="u", bootstrap_token="t", extra_env={"BIG": "x" * 20_000})
