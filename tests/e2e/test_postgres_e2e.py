"""The same call path with the control plane on PostgreSQL instead of SQLite."""

from __future__ import annotations

import os
import uuid

import pytest

import multinode as mn
from multinode import _localcloud
from multinode._client import get_client
from tests.conftest import fresh_postgres_database
from tests.support.procs import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


@pytest.fixture(scope="module")
def pg_cloud(tmp_path_factory):
    with fresh_postgres_database() as url:
        home = tmp_path_factory.mktemp("mn-home-pg")
        config = _localcloud.LocalCloudConfig(
            home=home,
            aws_port=free_port(),
            control_plane_port=free_port(),
            use_existing_aws=False,
            database_url=url,
        )
        state = _localcloud.up(config, echo=lambda _m: None)
        saved = {k: os.environ.get(k) for k in ("MN_URL", "MN_API_KEY")}
        os.environ["MN_URL"], os.environ["MN_API_KEY"] = state["url"], state["api_key"]
        try:
            yield state
        finally:
            _localcloud.down(config, echo=lambda _m: None)
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def test_call_map_and_errors_on_postgres(pg_cloud, write_app) -> None:
    assert get_client().health().database == "postgresql"
    path = write_app(
        """
        import multinode as mn

        @mn.function(cpu=0.25, cooldown=1)
        def cube(x):
            if x < 0:
                raise ValueError("negative")
            return x ** 3
        """
    )
    name = "pg-" + uuid.uuid4().hex[:6]
    mn.deploy(path, name=name)
    cube = mn.get_function(name, "cube")
    assert cube.call(3) == 27
    assert cube.map(range(300)) == [x**3 for x in range(300)]
    with pytest.raises(ValueError, match="negative"):
        cube.call(-1)
