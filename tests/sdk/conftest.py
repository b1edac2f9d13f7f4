"""Fixtures of the SDK tests: an isolated environment with no control plane configured.

Tests here need no server; everything that talks to a control plane runs in ``tests/e2e``
against the real local cloud.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_MN_ENV = ("MN_URL", "MN_API_KEY", "MN_APP", "MN_VERSION", "MN_CALL_ID", "MN_CONNECT_RETRY_S")


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No test sees the user's ~/.multinode or MN_* variables; returns the MN_HOME used."""
    for name in _MN_ENV:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "mn-home"
    monkeypatch.setenv("MN_HOME", str(home))
    return home
