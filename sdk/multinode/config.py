"""Where the control plane is, and the SDK's other environment settings.

Resolution order for the connection (first match wins):

1. ``MN_URL`` (with ``MN_API_KEY``) from the environment; inside a VM the agent sets these.
2. ``$MN_HOME/config.json``, written by ``mn login URL --key KEY``.
3. ``$MN_HOME/local/state.json``, written by ``mn up`` for the local cloud.

``MN_HOME`` defaults to ``~/.multinode``. When ``MN_URL`` carries no key, the key is
taken from whichever file names the same URL.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from multinode.errors import ControlPlaneUnreachableError, InvalidRequestError

START_HINT = "start the local cloud with `mn up`, set MN_URL, or run `mn login URL --key KEY`"


class Settings(BaseSettings):
    """The SDK's settings, read from ``MN_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="MN_", extra="ignore")

    url: str | None = Field(None, description="control plane base URL, e.g. http://127.0.0.1:8000")
    api_key: str | None = Field(None, description="Bearer token: an API key or an agent token")
    home: Path = Field(
        default_factory=lambda: Path.home() / ".multinode",
        description="where `mn login` and `mn up` keep their files",
    )
    app: str | None = Field(None, description="the app this process belongs to (set inside VMs)")
    version: int | None = Field(None, description="the app version running here (set inside VMs)")
    call_id: str | None = Field(None, description="the call running here; sent as parent_call_id")
    connect_retry_s: float = Field(
        3.0,
        ge=0,
        description="how long to keep retrying a refused connection to a control plane that "
        "has not answered yet (none running there) before failing",
    )
    outage_retry_s: float = Field(
        180.0,
        ge=0,
        description="how long to wait out a control plane that answered before and then "
        "stopped answering (a restart), retrying with backoff, before failing",
    )

    @property
    def config_file(self) -> Path:
        return self.home / "config.json"

    @property
    def local_state_file(self) -> Path:
        return self.home / "local" / "state.json"


@dataclass(frozen=True)
class Connection:
    """A control plane to talk to, and where its address came from (for messages)."""

    url: str
    api_key: str | None
    source: str

    def unreachable(self, reason: str | None = None) -> ControlPlaneUnreachableError:
        """The one-line error for a control plane that does not answer at ``url``."""
        hint = (
            "start the local cloud with `mn up`"
            if self.source.endswith("state.json")
            else "start the local cloud with `mn up` or set MN_URL"
        )
        return ControlPlaneUnreachableError(
            f"no control plane at {self.url} (from {self.source}); {hint}",
            details={"url": self.url, "source": self.source, "reason": reason or ""},
        )


def load_settings() -> Settings:
    """The settings as the environment gives them now (call it where they are needed).

    Built once per distinct set of ``MN_*`` variables: every remote call reads them, and
    building a settings object costs more than the rest of a call's client-side work.
    """
    key = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("MN_") or k == "HOME"))
    settings = _settings_cache.get(key)
    if settings is None:
        if len(_settings_cache) > 64:
            _settings_cache.clear()
        settings = _settings_cache[key] = Settings()
    return settings


_settings_cache: dict[tuple[tuple[str, str], ...], Settings] = {}


def resolve_connection(settings: Settings | None = None) -> Connection:
    """Find the control plane, following the order in this module's docstring.

    Raises:
        ControlPlaneUnreachableError: nothing is configured anywhere; the one-line
            message lists where it looked and how to start one.
    """
    settings = settings or load_settings()
    files = [
        (_display(settings.config_file), _read_json(settings.config_file)),
        (_display(settings.local_state_file), _read_json(settings.local_state_file)),
    ]
    if settings.url:
        url = _normalize(settings.url)
        key = settings.api_key or next(
            (data.get("api_key") for _, data in files if _normalize(data.get("url") or "") == url),
            None,
        )
        return Connection(url=url, api_key=key, source="MN_URL")
    for source, data in files:
        if data.get("url"):
            key = settings.api_key or data.get("api_key")
            return Connection(url=_normalize(data["url"]), api_key=key, source=source)
    looked = ", ".join(["MN_URL", *(source for source, _ in files)])
    raise ControlPlaneUnreachableError(
        f"no control plane configured (looked at {looked}); {START_HINT}",
        details={"looked_at": looked},
    )


def save_login(url: str, api_key: str, *, settings: Settings | None = None) -> Path:
    """Store ``url`` and ``api_key`` in ``$MN_HOME/config.json``, readable only by the user.

    Returns:
        The path written.
    """
    settings = settings or load_settings()
    path = settings.config_file
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    body = json.dumps({"url": _normalize(url), "api_key": api_key}, indent=2) + "\n"
    # Create with 0600 from the start so the key is never readable by others, even briefly.
    tmp = path.with_suffix(".json.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(body)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def _normalize(url: str) -> str:
    url = url.strip().rstrip("/")
    if url and "://" not in url:
        raise InvalidRequestError(
            f"control plane URL {url!r} has no scheme; write it like http://127.0.0.1:8000"
        )
    return url


def _read_json(path: Path) -> dict[str, Any]:
    """The file's JSON object ({} when absent or not an object), re-read only when the
    file changes (`mn login` and `mn up` rewrite these files while programs run)."""
    try:
        stat = path.stat()
    except OSError:
        return {}
    key = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
    cached = _json_cache.get(path)
    if cached is not None and cached[0] == key:
        return cached[1]
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    data = data if isinstance(data, dict) else {}
    _json_cache[path] = (key, data)
    return data


_json_cache: dict[Path, tuple[tuple[int, int, int], dict[str, Any]]] = {}


def _display(path: Path) -> str:
    home = str(Path.home())
    text = str(path)
    return "~" + text[len(home) :] if text.startswith(home + os.sep) else text
