"""A control plane vending dict credentials against a real emulator server (moto over HTTP).

The control plane runs in a thread (uvicorn on a free port) with the apps ``alpha`` and
``beta`` deployed and one agent token each; SDK code under test reaches it through
``MN_URL``/``MN_API_KEY`` exactly as a user's script or a VM would.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn

from multinode_controlplane.app import create_app
from multinode_controlplane.services.auth import Principal
from multinode_controlplane.settings import ServerSettings
from tests.controlplane.helpers import deploy, new_agent
from tests.support.procs import free_port, wait_until

KEY = "mnk_dicts-test-key"
APPS = ("alpha", "beta", "gamma")


@dataclass
class DictPlane:
    url: str
    key: str
    agent_tokens: dict[str, str]
    aws_endpoint: str
    settings: ServerSettings
    app: object

    def env(self, token: str | None = None, app: str | None = None) -> dict[str, str]:
        """Environment of a process using this control plane (as MN_APP ``app``)."""
        env = {"MN_URL": self.url, "MN_API_KEY": token or self.key}
        if app:
            env["MN_APP"] = app
        return env


@pytest.fixture(scope="session")
def dict_plane(aws_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DictPlane]:
    home: Path = tmp_path_factory.mktemp("dict-plane")
    saved = os.environ.get("AWS_ENDPOINT_URL")
    # The control plane's own boto3 clients find the emulator the way they find any AWS.
    os.environ["AWS_ENDPOINT_URL"] = aws_endpoint
    suffix = uuid.uuid4().hex[:8]
    port = free_port()
    settings = ServerSettings(
        database_url=f"sqlite:///{home / 'cp.db'}",
        compute="none",
        api_key=KEY,
        port=port,
        dict_table=f"mn-dicts-{suffix}",
        dict_bucket=f"mn-dicts-{suffix}",
        dict_role_name=f"mn-dicts-{suffix}",
        dict_endpoint_url=aws_endpoint,
        dict_prepare_at_startup=True,
    )
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, timeout=20, what="the control plane to start")
        ctx = app.state.ctx
        owner = Principal(kind="key", owner="default")
        tokens = {}
        for name in APPS:
            deploy(ctx, owner, name)
            tokens[name] = new_agent(ctx, owner, app=name)[1]
        yield DictPlane(
            url=f"http://127.0.0.1:{port}",
            key=KEY,
            agent_tokens=tokens,
            aws_endpoint=aws_endpoint,
            settings=settings,
            app=app,
        )
    finally:
        server.should_exit = True
        thread.join(10)
        if saved is None:
            os.environ.pop("AWS_ENDPOINT_URL", None)
        else:
            os.environ["AWS_ENDPOINT_URL"] = saved


@pytest.fixture
def as_app(dict_plane: DictPlane, monkeypatch: pytest.MonkeyPatch):
    """Point this process's SDK at the dict plane, as app ``alpha``'s agent by default."""

    def use(app: str = "alpha", *, token: str | None = None) -> None:
        for name, value in dict_plane.env(token or dict_plane.agent_tokens[app], app).items():
            monkeypatch.setenv(name, value)

    use()
    return use


@pytest.fixture
def fresh_name() -> str:
    return "d-" + uuid.uuid4().hex[:10]
