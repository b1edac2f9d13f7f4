"""Pickling errors name the object, and happen before anything is sent."""

from __future__ import annotations

import hashlib
import pickle
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import cloudpickle
import pytest

import multinode as mn
from multinode._serialization import blob_hash, dumps, loads, pickle_function
from tests.support.procs import free_port


@mn.function
def crunch(x: int, **kwargs: object) -> int:
    return x * 2


def test_dumps_names_the_object_and_its_type() -> None:
    with pytest.raises(mn.SerializationError) as caught:
        dumps(threading.Lock(), what="argument 0 of crunch")
    message = str(caught.value)
    assert message.startswith("argument 0 of crunch: cannot pickle '_thread.lock' object")
    assert "of type _thread.lock" in message
    assert caught.value.details["type"] == "_thread.lock"


def test_loads_names_the_version_mismatch_as_likely_cause() -> None:
    with pytest.raises(mn.SerializationError) as caught:
        loads(b"\x80\x05not a pickle", what="the result of call c1")
    message = str(caught.value)
    assert "cannot unpickle the result of call c1" in message
    assert "Python" in message and "cloudpickle" in message and "version" in message


def test_loads_names_a_missing_module(tmp_path: Path) -> None:
    (tmp_path / "no_such_mod_x.py").write_text("def f():\n    return 1\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import no_such_mod_x

        data = pickle.dumps(no_such_mod_x.f)  # by reference: needs the module to load
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("no_such_mod_x", None)
    with pytest.raises(mn.SerializationError, match="'no_such_mod_x' is not installed"):
        loads(data, what="the function")


def test_blob_hash_is_sha256_hex() -> None:
    assert blob_hash(b"abc") == hashlib.sha256(b"abc").hexdigest()


@pytest.fixture
def closed_port_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MN_URL", url)
    monkeypatch.setenv("MN_HOME", str(tmp_path))
    monkeypatch.setenv("MN_APP", "some-app")
    monkeypatch.setenv("MN_CONNECT_RETRY_S", "0")
    return url


@pytest.mark.parametrize(
    "send",
    [
        lambda lock: crunch.call(lock),
        lambda lock: crunch.start(1, lock=lock),
        lambda lock: crunch.map([1, 2, lock]),
        lambda lock: crunch.starmap([(1,), (lock,)]),
    ],
    ids=["call", "start-kwarg", "map", "starmap"],
)
def test_unpicklable_argument_fails_before_any_network_traffic(closed_port_url: str, send) -> None:
    """MN_URL points at a closed port: reaching the network would raise 'unreachable'."""
    with pytest.raises(mn.SerializationError) as caught:
        send(threading.Lock())
    message = str(caught.value)
    assert "of crunch" in message and "_thread.lock" in message
    assert "argument 0" in message or "'lock'" in message


def test_map_names_the_position_of_the_bad_input(closed_port_url: str) -> None:
    with pytest.raises(mn.SerializationError, match=r"^input 2: argument 0 of crunch"):
        crunch.map([1, 2, threading.Lock()])


def test_unpicklable_function_is_named(tmp_path: Path) -> None:
    lock = threading.Lock()

    def holds_a_lock() -> None:
        lock.acquire()

    with pytest.raises(mn.SerializationError, match=r"function .*holds_a_lock"):
        pickle_function(holds_a_lock)


def test_user_module_is_pickled_by_value(tmp_path: Path) -> None:
    """A function from a module only this machine has loads where that module is absent."""
    (tmp_path / "user_mod_for_value.py").write_text(
        textwrap.dedent(
            """
            FACTOR = 7

            def scale(x):
                return x * FACTOR
            """
        )
    )
    sys.path.insert(0, str(tmp_path))
    try:
        import user_mod_for_value

        blob = pickle_function(user_mod_for_value.scale)
        assert "user_mod_for_value" in cloudpickle.list_registry_pickle_by_value()
        cloudpickle.unregister_pickle_by_value(user_mod_for_value)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("user_mod_for_value", None)
    script = "import sys, cloudpickle; print(cloudpickle.loads(sys.stdin.buffer.read())(6))"
    proc = subprocess.run(
        [sys.executable, "-c", script], input=blob, capture_output=True, cwd="/", check=False
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().strip() == "42"
