"""Fixtures of the SDK tests: an isolated environment and the in-memory control plane."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from multinode import _client
from multinode._client import Client
from multinode.config import Connection

from tests.sdk.fake_plane import FakePlane

_MN_ENV = ("MN_URL", "MN_API_KEY", "MN_APP", "MN_VERSION", "MN_CALL_ID", "MN_CONNECT_RETRY_S")


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No test sees the user's ~/.multinode or MN_* variables; returns the MN_HOME used."""
    for name in _MN_ENV:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "mn-home"
    monkeypatch.setenv("MN_HOME", str(home))
    return home


@pytest.fixture
def plane(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakePlane]:
    """The SDK's client talks to a fresh FakePlane for the length of the test."""
    fake = FakePlane()
    client = Client(
        Connection(url="http://fake.invalid", api_key="mnk_test", source="test"),
        transport=fake.transport(),
    )
    monkeypatch.setattr(_client, "get_client", lambda: client)
    yield fake
    client.close()
