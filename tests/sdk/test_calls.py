"""Deploy, call, map and handles against the in-memory control plane (``fake_plane``)."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import multinode as mn
import pytest
from multinode import _calls, wire
from multinode._deploy import load_app

from tests.sdk.fake_plane import FakePlane

APP_SOURCE = """
import multinode as mn
from helper_mod import OFFSET


class Boom(Exception):
    pass


@mn.function(cpu=2, memory="1GiB")
def inc(x, step=1):
    return x + step + OFFSET


@mn.function
def fail(x):
    if x % 2:
        raise Boom(f"odd {x}")
    return x


@mn.function
def nested(n):
    return sum(inc.map(range(n)))


@mn.function
def slow(x):
    return x


def main(n="3"):
    return inc.map(range(int(n)))
"""


@pytest.fixture
def app(tmp_path: Path, plane: FakePlane) -> tuple[ModuleType, dict[str, mn.Function[Any]]]:
    (tmp_path / "helper_mod.py").write_text("OFFSET = 0\n")
    path = tmp_path / "demo_app.py"
    path.write_text(textwrap.dedent(APP_SOURCE))
    module, functions = load_app(path)
    info = mn.deploy(list(functions.values()), name="demo")
    assert info.app == "demo" and {f.name for f in info.functions} == set(functions)
    return module, functions


def test_deploy_uploads_each_blob_once_and_binds_handles(app, plane: FakePlane) -> None:
    module, functions = app
    assert functions["inc"].app == "demo"
    assert len(plane.blobs) == len(functions)
    puts = [r for r in plane.requests if r[0] == "PUT"]
    mn.deploy(list(functions.values()), name="demo")  # same code: HEAD only, no new PUT
    assert [r for r in plane.requests if r[0] == "PUT"] == puts
    assert plane.deployments["demo"].version == 2
    spec = plane.deployments["demo"].functions[0].spec
    assert (spec.cpu, spec.memory_mib) == (2.0, 1024)


def test_call_returns_the_remote_result(app) -> None:
    _, functions = app
    assert functions["inc"].call(41) == 42
    assert functions["inc"].call(1, step=5) == 6


def test_remote_exception_comes_back_as_itself_with_remote_traceback(app) -> None:
    module, functions = app
    with pytest.raises(module.Boom, match="odd 3") as caught:
        functions["fail"].call(3)
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert "Remote traceback" in notes and "raise Boom" in notes


def test_map_keeps_input_order_and_chunks_requests(app, plane: FakePlane, monkeypatch) -> None:
    monkeypatch.setattr(_calls, "SUBMIT_CHUNK", 4)
    monkeypatch.setattr(_calls, "OUTPUTS_WINDOW", 5)
    plane.max_outputs_per_answer = 3  # answers trickle in, as from a busy control plane
    _, functions = app
    assert functions["inc"].map(range(10)) == list(range(1, 11))
    assert plane.create_sizes == [4, 4, 2]
    assert max(plane.outputs_sizes) <= 5
    assert functions["inc"].starmap([(1, 2), (3, 4)]) == [3, 7]
    assert functions["inc"].map([1, 2], kwargs={"step": 10}) == [11, 12]
    assert functions["inc"].map([]) == []


def test_map_raises_or_returns_exceptions_in_place(app) -> None:
    module, functions = app
    with pytest.raises(module.Boom):
        functions["fail"].map(range(4))
    results = functions["fail"].map(range(4), return_exceptions=True)
    assert results[0] == 0 and results[2] == 2
    assert isinstance(results[1], module.Boom) and isinstance(results[3], module.Boom)


def test_ten_thousand_inputs_go_through_quickly(app, plane: FakePlane) -> None:
    _, functions = app
    started = time.perf_counter()
    assert functions["slow"].map(range(10_000)) == list(range(10_000))
    assert plane.create_sizes == [1_000] * 10
    assert (
        time.perf_counter() - started < 20
    )  # the fake runs calls inline; this bounds SDK overhead


@pytest.mark.parametrize(
    ("status", "error"),
    [
        ("timed_out", mn.CallTimeoutError),
        ("cancelled", mn.CallCancelledError),
        ("failed", mn.InfrastructureError),
    ],
)
def test_platform_outcomes_map_to_errors(app, plane: FakePlane, status: str, error) -> None:
    _, functions = app
    plane.forced["slow"] = (status, "the reason given")
    with pytest.raises(error, match="the reason given"):
        functions["slow"].call(1)


def test_unrebuildable_exception_becomes_remote_error() -> None:
    output = wire.CallOutput(
        call_id="c1",
        status=wire.CallStatus.failed,
        error=wire.CallError(type="ext.Weird", message="strange", traceback="Traceback: here\n"),
    )
    with pytest.raises(mn.RemoteError) as caught:
        _calls.unwrap(output, function="f")
    assert "ext.Weird: strange" in str(caught.value) and "Traceback: here" in str(caught.value)
    assert caught.value.details["type"] == "ext.Weird"


def test_start_gives_a_handle_with_status_result_and_cancel(app, plane: FakePlane) -> None:
    _, functions = app
    handle = functions["inc"].start(1)
    assert handle.status() == wire.CallStatus.succeeded
    assert handle.result() == 2
    assert mn.get_call(handle.id).result() == 2
    plane.forced["slow"] = ("queued", "")
    pending = functions["slow"].start(1)
    with pytest.raises(mn.ResultTimeoutError, match=pending.id):
        pending.result(timeout=0)
    assert pending.cancel().status == wire.CallStatus.cancelled
    with pytest.raises(mn.CallCancelledError):
        pending.result(timeout=0)


def test_nested_calls_inside_a_vm_use_the_env_app_and_parent(app, plane, monkeypatch) -> None:
    _, functions = app
    monkeypatch.setenv("MN_APP", "demo")  # set by the agent in a real VM
    monkeypatch.setenv("MN_CALL_ID", "parent-7")
    assert functions["nested"].call(4) == 10  # 1+2+3+4, through inc.map in the "VM"
    assert "parent-7" in plane.parents


def test_get_function_binds_or_names_what_exists(app) -> None:
    handle = mn.get_function("demo", "inc")
    assert handle.call(1) == 2
    with pytest.raises(mn.InvalidRequestError, match="no local code"):
        handle(1)
    with pytest.raises(mn.NotFoundError) as caught:
        mn.get_function("demo", "nope")
    assert "has no function 'nope'" in str(caught.value) and "inc" in str(caught.value)
    with pytest.raises(mn.NotFoundError, match=r"no app named 'other'.*demo"):
        mn.get_function("other", "inc")


def test_deploy_of_a_file_without_functions_says_what_to_do(tmp_path: Path, plane) -> None:
    path = tmp_path / "empty_app.py"
    path.write_text("x = 1\n")
    with pytest.raises(mn.InvalidRequestError, match="no @mn.function found"):
        mn.deploy(path, name="empty")
    with pytest.raises(mn.InvalidRequestError, match="app name 'bad name'"):
        mn.deploy(path, name="bad name")
