"""Functions end to end: SDK → control plane → provisioner → EC2 emulator → VM runner →
agent → worker process, and back. Every process here is the real one."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path

import pytest

import multinode as mn
from multinode._client import get_client
from multinode.wire import CallStatus, InstanceState
from tests.support.procs import wait_until

pytestmark = pytest.mark.e2e

APP_SOURCE = """
import os
import time
from pathlib import Path

import multinode as mn


class QuotaExceeded(Exception):
    '''A user-defined exception type: it must come back as itself.'''


@mn.function(cpu=0.25, cooldown=120)
def square(x):
    return x * x


@mn.function(cpu=0.25, cooldown=120)
def add(a, b):
    return a + b


@mn.function(cpu=0.25, cooldown=120)
async def fetch_twice(x):
    # An async def function: the worker runs it on an event loop.
    import asyncio

    first, second = await asyncio.gather(asyncio.sleep(0, x), asyncio.sleep(0, x))
    return first + second


@mn.function(cpu=0.25, cooldown=120)
def fail_on_odd(x):
    if x % 2:
        raise QuotaExceeded(f"odd input {x}")
    return x


@mn.function(cpu=0.25, cooldown=120)
def sum_of_squares(n):
    # A nested fan-out: runs inside a VM, calls back through the control plane.
    return sum(square.map(range(n)))


@mn.function(cpu=0.25, cooldown=120, timeout=2)
def too_slow(marker):
    Path(marker).write_text(str(os.getpid()))
    time.sleep(120)


@mn.function(cpu=0.25, cooldown=120)
def wait_for(marker, release):
    # Records its pid, prints, then blocks until the test releases it (bounded).
    Path(marker).write_text(str(os.getpid()))
    print("step 1 done", flush=True)
    deadline = time.monotonic() + 120
    while not Path(release).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return "released"


@mn.function(cpu=0.25, cooldown=120, retries=2)
def flaky(counter):
    # Fails on its first two attempts: retries=2 must carry it to success.
    path = Path(counter)
    n = int(path.read_text()) if path.exists() else 0
    path.write_text(str(n + 1))
    if n < 2:
        raise RuntimeError(f"attempt {n + 1} fails")
    return n + 1
"""


@pytest.fixture(scope="module")
def app(local_cloud, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("app") / "e2e_functions.py"
    path.write_text(textwrap.dedent(APP_SOURCE))
    name = "e2e-fn-" + uuid.uuid4().hex[:6]
    info = mn.deploy(path, name=name)
    assert info.version == 1
    assert {f.name for f in info.functions} >= {"square", "flaky", "wait_for"}
    return name


def fn(app: str, name: str) -> mn.Function:
    return mn.get_function(app, name)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_call_returns_the_result_and_map_keeps_input_order(app: str) -> None:
    square = fn(app, "square")
    assert square.call(7) == 49
    assert square.map(range(200)) == [x * x for x in range(200)]
    assert fn(app, "add").starmap([(1, 2), (3, 4), ("a", "b")]) == [3, 7, "ab"]


def test_an_async_function_returns_its_awaited_result(app: str) -> None:
    fetch_twice = fn(app, "fetch_twice")
    assert fetch_twice.call(21) == 42
    assert fetch_twice.map(range(5)) == [0, 2, 4, 6, 8]


def test_remote_exception_comes_back_as_its_own_type_with_the_remote_traceback(app: str) -> None:
    with pytest.raises(Exception) as caught:
        fn(app, "fail_on_odd").call(3)
    assert type(caught.value).__name__ == "QuotaExceeded"
    assert str(caught.value) == "odd input 3"
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert "fail_on_odd" in notes and "Traceback" in notes


def test_map_with_return_exceptions_puts_errors_in_place(app: str) -> None:
    results = fn(app, "fail_on_odd").map(range(6), return_exceptions=True)
    assert results[0::2] == [0, 2, 4]
    assert [type(r).__name__ for r in results[1::2]] == ["QuotaExceeded"] * 3


def test_nested_map_inside_a_function_goes_through_the_control_plane(app: str) -> None:
    assert fn(app, "sum_of_squares").call(20) == sum(x * x for x in range(20))
    calls = get_client().list_calls(app=app, limit=200)
    nested = [c for c in calls if c.function == "square" and c.parent_call_id]
    assert len(nested) >= 20, "the inner map's calls should record their parent"


def test_a_call_is_visible_and_awaitable_from_another_process(app: str, tmp_path: Path) -> None:
    marker, release = tmp_path / "pid", tmp_path / "go"
    handle = fn(app, "wait_for").start(str(marker), str(release))
    wait_until(marker.exists, timeout=30, what="the call to start")
    assert handle.status() is CallStatus.running

    script = textwrap.dedent(
        f"""
        import multinode as mn
        print(mn.get_call({handle.id!r}).result(timeout=60))
        print(mn.get_function({app!r}, "square").call(12))
        """
    )
    other = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    release.touch()
    out, _ = other.communicate(timeout=60)
    assert out.split() == ["released", "144"]
    assert handle.result(timeout=30) == "released"
    assert handle.status() is CallStatus.succeeded


def test_logs_stream_while_the_call_runs(app: str, tmp_path: Path) -> None:
    marker, release = tmp_path / "pid", tmp_path / "go"
    handle = fn(app, "wait_for").start(str(marker), str(release))

    def printed() -> bool:
        page = get_client().logs(app=app, call_id=handle.id)
        return any("step 1 done" in line.text for line in page.lines)

    wait_until(printed, timeout=30, what="the call's output to reach the control plane")
    assert handle.status() is CallStatus.running  # streamed, not collected at the end
    release.touch()
    assert handle.result(timeout=30) == "released"


def test_timeout_stops_the_call_and_kills_its_worker(app: str, tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    with pytest.raises(mn.CallTimeoutError):
        fn(app, "too_slow").call(str(marker))
    pid = int(marker.read_text())
    wait_until(lambda: not pid_alive(pid), timeout=10, what=f"worker {pid} to be killed")


def test_cancel_mid_run_ends_the_worker_within_seconds(app: str, tmp_path: Path) -> None:
    marker, release = tmp_path / "pid", tmp_path / "never"
    handle = fn(app, "wait_for").start(str(marker), str(release))
    # write_text creates the file before it writes the pid: wait for the pid itself.
    wait_until(
        lambda: marker.exists() and marker.read_text().isdigit(),
        timeout=30,
        what="the call to start",
    )
    pid = int(marker.read_text())
    handle.cancel()
    wait_until(lambda: handle.status() is CallStatus.cancelled, timeout=10, what="cancelled")
    wait_until(lambda: not pid_alive(pid), timeout=10, what=f"worker {pid} to end")
    with pytest.raises(mn.CallCancelledError):
        handle.result(timeout=5)


def test_user_retries_carry_a_flaky_function_to_success(app: str, tmp_path: Path) -> None:
    handle = fn(app, "flaky").start(str(tmp_path / "count"))
    assert handle.result(timeout=60) == 3
    assert handle.info().attempts == 3


def test_unknown_function_error_names_what_exists(app: str) -> None:
    with pytest.raises(mn.NotFoundError) as caught:
        mn.get_function(app, "sqaure")
    assert "square" in str(caught.value)
    with pytest.raises(mn.NotFoundError):
        mn.get_function("no-such-app-" + uuid.uuid4().hex[:6], "square")


def test_unpicklable_argument_fails_on_the_callers_machine_before_sending(app: str) -> None:
    square = fn(app, "square")
    before = len(get_client().list_calls(app=app, limit=1000))
    with pytest.raises(mn.SerializationError) as caught:
        square.call(threading.Lock())
    assert "lock" in str(caught.value).lower()
    assert len(get_client().list_calls(app=app, limit=1000)) == before


def test_a_16_cpu_function_lands_on_a_16_vcpu_instance(local_cloud, write_app, app_name) -> None:
    path = write_app(
        """
        import os
        import multinode as mn

        @mn.function(cpu=16, cooldown=1)
        def big(x):
            return os.environ["MN_INSTANCE_ID"]
        """
    )
    mn.deploy(path, name=app_name)
    big_on = set(mn.get_function(app_name, "big").map(range(2)))
    instances = {i.id: i for i in mn.list_instances(app=app_name)}
    assert {instances[i].vcpus for i in big_on} == {16}
    assert all(instances[i].instance_type.endswith(".4xlarge") for i in big_on)

    # Idle past the 1 s cooldown, every instance is terminated.
    def all_terminated() -> bool:
        return all(i.state is InstanceState.terminated for i in mn.list_instances(app=app_name))

    wait_until(all_terminated, timeout=30, what="idle instances to be terminated")


def test_small_calls_share_one_small_instance(local_cloud, write_app, app_name) -> None:
    path = write_app(
        """
        import os
        import multinode as mn

        @mn.function(cpu=0.1, cooldown=1)
        def small(x):
            return os.environ["MN_INSTANCE_ID"]
        """
    )
    mn.deploy(path, name=app_name)
    small_on = set(mn.get_function(app_name, "small").map(range(10)))
    assert len(small_on) == 1, "ten 0.1-CPU calls fit on one small instance"
    (instance,) = [i for i in mn.list_instances(app=app_name) if i.id in small_on]
    assert instance.vcpus <= 2 and instance.launched_for == "small"


def test_max_workers_caps_the_instances_of_a_function(local_cloud, write_app, app_name) -> None:
    path = write_app(
        """
        import os
        import time
        import multinode as mn

        @mn.function(cpu=16, max_workers=2, cooldown=1)
        def heavy(x):
            time.sleep(0.3)
            return os.environ["MN_INSTANCE_ID"]
        """
    )
    mn.deploy(path, name=app_name)
    used = mn.get_function(app_name, "heavy").map(range(6))
    launched = [i for i in mn.list_instances(app=app_name) if i.launched_for == "heavy"]
    assert len(launched) <= 2
    assert set(used) <= {i.id for i in launched}


def test_a_lost_instance_is_replaced_without_spending_user_retries(
    local_cloud, write_app, app_name, tmp_path: Path
) -> None:
    """An agent that stops heart-beating (frozen with SIGSTOP) is declared lost, its call
    runs again on a new instance, and the user's retries=0 budget is untouched."""
    first = tmp_path / "first"
    path = write_app(
        f"""
        import os
        import time
        from pathlib import Path
        import multinode as mn

        @mn.function(cpu=16, retries=0, cooldown=1)
        def once():
            first = Path({str(first)!r})
            if not first.exists():
                first.write_text(f"{{os.getppid()}} {{os.getpid()}} {{os.environ['MN_INSTANCE_ID']}}")
                time.sleep(120)  # frozen with its agent; never returns
            return os.environ["MN_INSTANCE_ID"]
        """
    )
    mn.deploy(path, name=app_name)
    handle = mn.get_function(app_name, "once").start()
    wait_until(
        lambda: first.exists() and first.read_text().count(" ") == 2,
        timeout=30,
        what="the first attempt to start",
    )
    agent_pid, worker_pid, lost_instance = first.read_text().split()
    frozen = [int(agent_pid), int(worker_pid)]
    for pid in frozen:
        os.kill(pid, 19)  # SIGSTOP: no heartbeat, no result
    try:
        second_instance = handle.result(timeout=90)
    finally:
        for pid in frozen:  # end what this test froze, if the VM runner has not already
            if pid_alive(pid):
                os.kill(pid, 9)
    assert second_instance != lost_instance
    info = handle.info()
    assert info.status is CallStatus.succeeded
    assert info.attempts == 2
    lost = {i.id: i for i in mn.list_instances(app=app_name)}[lost_instance]
    assert lost.state in (InstanceState.failed, InstanceState.terminated)


def test_undeploy_stops_new_calls(local_cloud, write_app, app_name) -> None:
    path = write_app(
        """
        import multinode as mn

        @mn.function(cpu=0.1, cooldown=1)
        def echo(x):
            return x
        """
    )
    mn.deploy(path, name=app_name)
    echo = mn.get_function(app_name, "echo")
    assert echo.call("hi") == "hi"
    get_client().undeploy(app_name)
    with pytest.raises((mn.NotFoundError, mn.InvalidRequestError, mn.ConflictError)):
        echo.call("again")
