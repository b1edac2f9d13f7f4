"""The user's code runs as written: the app's folder is uploaded and imported on the VM,
with env vars and secrets reaching only the functions that declare them. Every process is
the real one (control plane, emulator, VM runner, agents, workers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import httpx
import pytest

import multinode as mn
from multinode import _client
from multinode._client import Client, get_client
from multinode._deploy import load_app, package
from tests.support.recording import RecordingTransport

pytestmark = pytest.mark.e2e

MN = [sys.executable, "-m", "multinode.cli"]

APP = """
import os
import threading

import uvicorn
from fastapi import FastAPI

import multinode as mn
from helpers import normalise

LOCK = threading.Lock()  # module-level objects cannot be pickled; imported, they just exist
COUNT = {"n": 0}
app = FastAPI()


class ScrapeError(Exception):
    def __init__(self, url, status):
        super().__init__(f"{url} answered {status}")
        self.url = url
        self.status = status


@app.get("/words")
def words(text: str):
    return {"words": normalise(text), "module": __name__}


@mn.function(cpu=0.25, cooldown=120, env={"GREETING": "hej"}, secrets=["SECRET_NAME"])
def describe(n):
    with LOCK:
        COUNT["n"] += 1
    return {
        "text": normalise(f"{os.environ['GREETING']} Number {n}"),
        "key_len": len(os.environ["API_KEY"]),
        "module": __name__,
        "cwd_has_data": os.path.exists("data/greeting.txt"),
    }


@mn.function(cpu=0.25, cooldown=120)
def plain():
    names = ("GREETING", "API_KEY", "API_SECRET")
    return {name: os.environ.get(name) for name in names}


@mn.function(cpu=0.25, cooldown=120)
def scrape(url):
    raise ScrapeError(url, 503)


@mn.function(cpu=0.25, cooldown=120, secrets=["SECRET_NAME"])
def leak():
    print("the key is", os.environ["API_KEY"], flush=True)
    return "printed"


@mn.service(port=80, cpu=0.25)
def api():
    uvicorn.run(app, host="0.0.0.0", port=int(os.environ.get("PORT", 80)), log_level="warning")
"""

HELPERS = """
def normalise(text):
    return " ".join(text.lower().split())
"""


@pytest.fixture(scope="module")
def secret_name(local_cloud) -> str:
    return "e2e-secret-" + uuid.uuid4().hex[:6]


@pytest.fixture(scope="module")
def secret_value() -> str:
    return "sv-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def deployed(local_cloud, tmp_path_factory, secret_name, secret_value) -> dict:
    folder = tmp_path_factory.mktemp("source-app")
    (folder / "scraper.py").write_text(textwrap.dedent(APP.replace("SECRET_NAME", secret_name)))
    (folder / "helpers.py").write_text(textwrap.dedent(HELPERS))
    (folder / "data").mkdir()
    (folder / "data" / "greeting.txt").write_text("hej\n")
    (folder / ".gitignore").write_text("ignored/\n")
    (folder / "ignored").mkdir()
    (folder / "ignored" / "big.bin").write_bytes(os.urandom(1024))
    set_out = mn_cli("secret", "set", secret_name, f"API_KEY={secret_value}", "API_SECRET=x")
    deploy_out = mn_cli("deploy", str(folder / "scraper.py"), "--name", "src-" + secret_name)
    return {
        "folder": folder,
        "app": "src-" + secret_name,
        "outputs": [set_out.stdout + set_out.stderr, deploy_out.stdout + deploy_out.stderr],
    }


def mn_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [*MN, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "250"},
    )
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_module_level_objects_neighbour_modules_and_files_exist_on_the_vm(deployed) -> None:
    describe = mn.get_function(deployed["app"], "describe")
    result = describe.call(7)
    assert result["text"] == "hej number 7"  # helpers.normalise, imported from beside it
    assert result["module"] == "scraper"  # imported under its own name, not pickled
    assert result["cwd_has_data"]  # other files of the folder are there, cwd is the folder
    assert [r["text"] for r in describe.map(range(3))] == [f"hej number {i}" for i in range(3)]


def test_a_module_level_fastapi_app_serves_through_the_service(deployed) -> None:
    service = mn.get_service(deployed["app"], "api")
    url = service.wait_ready(timeout=120)[0]
    answer = httpx.get(f"{url}/words", params={"text": "Hello   World"}, timeout=10).json()
    assert answer == {"words": "hello world", "module": "scraper"}


def test_env_and_secrets_reach_only_the_functions_that_declare_them(deployed, secret_value) -> None:
    assert mn.get_function(deployed["app"], "describe").call(1)["key_len"] == len(secret_value)
    # Run on the same warm instance (and possibly the same worker) after describe.
    assert mn.get_function(deployed["app"], "plain").call() == {
        "GREETING": None,
        "API_KEY": None,
        "API_SECRET": None,
    }


def test_a_secret_value_is_never_shown_by_the_cli(deployed, secret_name, secret_value) -> None:
    handle = mn.get_function(deployed["app"], "leak")
    call = handle.start()
    assert call.result(timeout=120) == "printed"
    logs = mn_cli("logs", deployed["app"], "--call", call.id).stdout
    assert "the key is ***" in logs  # what the function printed, with the value masked
    listing = mn_cli("secret", "ls").stdout
    as_json = json.loads(mn_cli("secret", "ls", "--json").stdout)
    mine = next(s for s in as_json if s["name"] == secret_name)
    assert mine["keys"] == ["API_KEY", "API_SECRET"]
    assert secret_name in listing and "API_KEY" in listing
    apps = mn_cli("apps").stdout + mn_cli("apps", "--json").stdout
    outputs = [*deployed["outputs"], logs, listing, json.dumps(as_json), apps]
    assert all(secret_value not in text for text in outputs)
    # Nor does any log of the local cloud (control plane, VM runner and the VMs' agents).
    logs_dir = Path(os.environ["MN_HOME"]) / "local" / "logs"
    files = list(logs_dir.rglob("*.log"))
    assert any(f.name == "controlplane.log" for f in files)
    assert all(secret_value not in f.read_text(errors="replace") for f in files)


def test_deploying_a_function_that_names_a_missing_secret_fails_with_the_fix(
    write_app, app_name
) -> None:
    path = write_app(
        """
        import multinode as mn

        @mn.function(secrets=["no-such-secret"])
        def f():
            return 1
        """
    )
    proc = mn_cli("deploy", str(path), "--name", app_name, check=False)
    assert proc.returncode == 1
    assert "no-such-secret" in proc.stderr and "mn secret set no-such-secret" in proc.stderr
    assert app_name not in mn_cli("apps").stdout  # nothing was deployed


def test_a_user_exception_reaches_a_script_beside_the_app_as_its_class(deployed) -> None:
    script = deployed["folder"] / "check_scrape.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import multinode as mn
            from scraper import ScrapeError

            try:
                mn.get_function({deployed["app"]!r}, "scrape").call("https://example.test")
            except ScrapeError as exc:
                print("caught", type(exc).__module__, exc.url, exc.status)
            """
        )
    )
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=deployed["folder"],
    )
    assert proc.stdout.strip() == "caught scraper https://example.test 503", proc.stderr


def test_an_app_module_that_fails_to_import_on_the_vm_fails_the_call_with_its_traceback(
    write_app, app_name
) -> None:
    path = write_app(
        """
        import os
        import multinode as mn

        if os.environ.get("MN_CALL_ID"):  # only on a VM
            raise RuntimeError("cannot reach the model server from this VM")

        @mn.function(cpu=0.25, cooldown=5)
        def f():
            return 1
        """
    )
    mn.deploy(path, name=app_name)
    with pytest.raises(RuntimeError, match="cannot reach the model server") as caught:
        mn.get_function(app_name, "f").call()
    remote = "\n".join(getattr(caught.value, "__notes__", []))
    assert path.name in remote  # the VM's traceback points into the user's file


def test_only_changed_files_are_uploaded_again(local_cloud, tmp_path, app_name) -> None:
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "main_app.py").write_text(
        textwrap.dedent(
            f"""
            import multinode as mn
            from lib import VALUE

            TAG = {app_name!r}

            @mn.function(cpu=0.25)
            def value():
                return VALUE
            """
        )
    )
    (folder / "lib.py").write_text(f"VALUE = 1  # {app_name}\n")
    (folder / "big.csv").write_text(f"{app_name}\n" + "x,y\n" * 50_000)
    recorded = RecordingTransport()
    client = Client(get_client().connection, transport=recorded)
    original = _client.get_client
    _client.get_client = lambda: client  # type: ignore[assignment]
    try:
        mn.deploy(folder / "main_app.py", name=app_name)
        first = put_sizes(recorded)
        assert sum(first) > 200_000  # the first deploy uploads big.csv
        recorded.requests.clear()
        (folder / "lib.py").write_text(f"VALUE = 2  # {app_name}\n")
        functions = load_app(folder / "main_app.py")[1]
        _, blobs = package(list(functions.values()))
        mn.deploy(list(functions.values()), name=app_name)
        again = put_sizes(recorded)
        assert mn.get_function(app_name, "value").call() == 2  # the VM runs the new lib.py
    finally:
        _client.get_client = original  # type: ignore[assignment]
        client.close()
    # lib.py, the new manifest and the function's reference: nothing large, one PUT each.
    assert len(again) == 3 and sum(again) < 2_000, again
    assert len(blobs) == 5  # main_app.py, lib.py, big.csv, the manifest, the reference


def put_sizes(recorded: RecordingTransport) -> list[int]:
    """The size of each upload the client sent."""
    return [len(r.content) for r in recorded.requests if r.method == "PUT"]
