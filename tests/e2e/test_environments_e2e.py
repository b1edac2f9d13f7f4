"""Packages a function declares (requirements.txt beside the app, ``pip=`` on a decorator)
are built once on the control plane with uv, stored in the bucket and unpacked by every VM
that needs them. The packages used here are not in the agent's own environment, and the
build reaches the real package index."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid

import pytest

import multinode as mn
from multinode._client import get_client

pytestmark = pytest.mark.e2e

MN = [sys.executable, "-m", "multinode.cli"]

APP = """
import importlib.util
import os
import time
from pathlib import Path

import multinode as mn


@mn.function(cpu=0.25, cooldown=60, pip=["humanize==4.17.0"])
def describe(n):
    import humanize
    import slugify  # from requirements.txt; it brings text-unidecode with it

    return humanize.intcomma(n), slugify.slugify("Hej Världen")


@mn.function(cpu=0.25, cooldown=60)
def only_app_requirements():
    import text_unidecode

    return {
        "slugify": importlib.util.find_spec("slugify") is not None,
        "humanize": importlib.util.find_spec("humanize") is not None,
        "transitive": text_unidecode.unidecode("Världen"),
    }


@mn.function(cpu=2, cooldown=60, max_workers=2)
def hold(marker_dir):
    # Takes a whole 2-vCPU instance; returns once both calls run, on two instances.
    import slugify

    Path(marker_dir, os.environ["MN_CALL_ID"]).touch()
    deadline = time.monotonic() + 120
    while len(os.listdir(marker_dir)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    return os.environ["MN_INSTANCE_ID"], slugify.slugify("A B")
"""


def mn_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [*MN, *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "250"},
    )
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def app(local_cloud, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("env-app")
    (folder / "packaged.py").write_text(textwrap.dedent(APP))
    (folder / "requirements.txt").write_text("# the app's own packages\npython-slugify==8.0.4\n")
    name = "env-" + uuid.uuid4().hex[:6]
    out = mn_cli("deploy", str(folder / "packaged.py"), "--name", name)
    return {"name": name, "folder": folder, "deploy_output": out.stderr}


def environment_of(app: str, function: str) -> str:
    info = get_client().get_function(app, function)
    assert info.spec.environment is not None
    return info.spec.environment


def test_packages_from_requirements_txt_and_pip_reach_the_function(app) -> None:
    assert "building" in app["deploy_output"] and "ready" in app["deploy_output"]
    describe = mn.get_function(app["name"], "describe")
    assert describe.call(1234567) == ("1,234,567", "hej-varlden")
    only = mn.get_function(app["name"], "only_app_requirements").call()
    # requirements.txt applies to every function; pip= only to the one that names it.
    assert only == {"slugify": True, "humanize": False, "transitive": "Varlden"}
    assert environment_of(app["name"], "describe") != environment_of(
        app["name"], "only_app_requirements"
    )


def test_an_environment_is_built_once_for_every_vm_and_every_deploy(app, tmp_path) -> None:
    env_id = environment_of(app["name"], "hold")
    markers = tmp_path / "markers"
    markers.mkdir()
    hold = mn.get_function(app["name"], "hold")
    results = hold.map([str(markers), str(markers)])
    instances = {instance for instance, _ in results}
    assert len(instances) == 2 and all(slug == "a-b" for _, slug in results)
    assert get_client().get_environment(env_id).builds == 1  # two VMs, one build

    again = mn_cli("deploy", str(app["folder"] / "packaged.py"), "--name", app["name"])
    assert "reused" in again.stderr and "building" not in again.stderr
    assert get_client().get_environment(env_id).builds == 1


def test_a_requirement_that_cannot_be_met_fails_the_deploy_with_the_resolvers_message(
    write_app, app_name
) -> None:
    path = write_app(
        """
        import multinode as mn

        @mn.function(pip=["humanize==0.0.999999"])
        def f():
            return 1
        """
    )
    proc = mn_cli("deploy", str(path), "--name", app_name, check=False)
    assert proc.returncode == 1
    assert "could not be installed" in proc.stderr and "nothing was deployed" in proc.stderr
    # uv's own explanation names the requirement it could not satisfy.
    assert "humanize==0.0.999999" in proc.stderr and "no version" in proc.stderr.lower()
    names = [a["name"] for a in json.loads(mn_cli("apps", "--json").stdout)]
    assert app_name not in names


def test_a_python_the_vms_do_not_run_is_refused_at_deploy_with_what_they_run(
    write_app, app_name
) -> None:
    path = write_app(
        """
        import multinode as mn

        @mn.function(python="3.9")
        def f():
            return 1
        """
    )
    proc = mn_cli("deploy", str(path), "--name", app_name, check=False)
    assert proc.returncode == 1
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert "Python 3.9" in proc.stderr and f"they run {here}" in proc.stderr
