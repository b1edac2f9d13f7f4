"""Where the SDK looks for the control plane, in order, and how it says it found none."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

import multinode as mn
from multinode._client import Client, get_client
from multinode.config import Connection, load_settings, resolve_connection, save_login
from tests.support.procs import free_port


def _write(path: Path, url: str, key: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"url": url, "api_key": key}))


def test_nothing_configured_says_where_it_looked_and_how_to_start(isolated_env: Path) -> None:
    with pytest.raises(mn.ControlPlaneUnreachableError) as caught:
        resolve_connection()
    message = str(caught.value)
    assert "\n" not in message
    assert "MN_URL" in message and "config.json" in message and "state.json" in message
    assert "mn up" in message


def test_local_cloud_state_is_the_last_resort(isolated_env: Path) -> None:
    _write(isolated_env / "local" / "state.json", "http://127.0.0.1:7600/", "mnk_local")
    assert resolve_connection() == Connection(
        "http://127.0.0.1:7600", "mnk_local", str(isolated_env / "local" / "state.json")
    )


def test_login_config_wins_over_local_cloud(isolated_env: Path) -> None:
    _write(isolated_env / "local" / "state.json", "http://127.0.0.1:7600", "mnk_local")
    _write(isolated_env / "config.json", "https://mn.example.com", "mnk_login")
    connection = resolve_connection()
    assert (connection.url, connection.api_key) == ("https://mn.example.com", "mnk_login")
    assert connection.source.endswith("config.json")


def test_environment_wins_over_files(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(isolated_env / "config.json", "https://mn.example.com", "mnk_login")
    monkeypatch.setenv("MN_URL", "http://10.0.0.5:9000")
    monkeypatch.setenv("MN_API_KEY", "mna_agent")
    assert resolve_connection() == Connection("http://10.0.0.5:9000", "mna_agent", "MN_URL")


def test_env_url_without_key_takes_the_key_of_a_file_naming_that_url(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(isolated_env / "config.json", "https://mn.example.com", "mnk_login")
    _write(isolated_env / "local" / "state.json", "http://127.0.0.1:7600", "mnk_local")
    monkeypatch.setenv("MN_URL", "http://127.0.0.1:7600/")
    assert resolve_connection().api_key == "mnk_local"
    monkeypatch.setenv("MN_URL", "http://elsewhere:1")
    assert resolve_connection().api_key is None


def test_settings_are_built_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MN_APP", "a")
    monkeypatch.setenv("MN_VERSION", "4")
    monkeypatch.setenv("MN_CALL_ID", "c9")
    settings = load_settings()
    assert (settings.app, settings.version, settings.call_id) == ("a", 4, "c9")


def test_unreachable_url_is_one_line_naming_url_and_source(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MN_URL", url)
    monkeypatch.setenv("MN_CONNECT_RETRY_S", "0.2")
    with pytest.raises(mn.ControlPlaneUnreachableError) as caught:
        get_client().health()
    message = str(caught.value)
    assert (
        message
        == f"no control plane at {url} (from MN_URL); start the local cloud with `mn up` or set MN_URL"
    )
    assert caught.value.details["url"] == url


def test_save_login_writes_a_private_file(isolated_env: Path) -> None:
    path = save_login("https://mn.example.com/", "mnk_secret")
    assert path == isolated_env / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {
        "url": "https://mn.example.com",
        "api_key": "mnk_secret",
    }
    assert resolve_connection().api_key == "mnk_secret"


def test_url_without_scheme_is_rejected_with_an_example(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MN_URL", "localhost:7600")
    with pytest.raises(mn.InvalidRequestError, match="http://127.0.0.1:8000"):
        resolve_connection()


def test_client_sends_bearer_token_and_maps_error_bodies() -> None:
    import httpx

    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        if request.url.path == "/v1/apps/x":
            body = {"code": "not_found", "message": "no app 'x'", "details": {"apps": ["y"]}}
            return httpx.Response(404, json=body)
        if request.url.path == "/v1/apps/teapot":
            return httpx.Response(418, text="short and stout")
        return httpx.Response(403, json={"code": "forbidden", "message": "not yours"})

    client = Client(
        Connection("http://cp", "mnk_k", "test"), transport=httpx.MockTransport(handler)
    )
    with pytest.raises(mn.NotFoundError) as caught:
        client.get_app("x")
    assert caught.value.details == {"apps": ["y"]} and str(caught.value) == "no app 'x'"
    with pytest.raises(mn.MultinodeError, match="HTTP 418: short and stout"):
        client.get_app("teapot")
    with pytest.raises(mn.errors.ForbiddenError, match="not yours"):
        client.undeploy("z")
    assert seen == ["Bearer mnk_k"] * 3
