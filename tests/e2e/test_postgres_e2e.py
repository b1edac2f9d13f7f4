"""The same call path with the control plane on PostgreSQL instead of SQLite."""

from __future__ import annotations

import uuid

import pytest

import multinode as mn
from multinode._client import get_client
from tests.conftest import fresh_postgres_database
from tests.e2e.conftest import started_local_cloud

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


@pytest.fixture(scope="module")
def pg_cloud(tmp_path_factory, aws_target):
    with (
        fresh_postgres_database() as url,
        started_local_cloud(
            tmp_path_factory.mktemp("mn-home-pg"), aws_target, database_url=url
        ) as state,
        pytest.MonkeyPatch.context() as env,
    ):
        env.setenv("MN_URL", state["url"])
        env.setenv("MN_API_KEY", state["api_key"])
        yield state


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
