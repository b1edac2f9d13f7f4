"""The decorator, local calls, binding rules and pickling of handles."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cloudpickle
import pytest

import multinode as mn
from multinode._serialization import pickle_function
from multinode.functions import registered_functions


def test_bare_and_parenthesised_decorators_give_handles() -> None:
    @mn.function
    def bare(x: int) -> int:
        return x + 1

    @mn.function()
    def empty(x: int) -> int:
        return x + 2

    @mn.function(cpu=16, memory="32GiB", gpu="a10g:2")
    def sized(x: int) -> int:
        return x + 3

    for handle in (bare, empty, sized):
        assert isinstance(handle, mn.Function)
    assert bare.spec.cpu == 1.0
    assert (sized.spec.cpu, sized.spec.memory_mib, sized.spec.gpu_type, sized.spec.gpu_count) == (
        16.0,
        32768,
        "A10G",
        2,
    )


def test_calling_the_handle_runs_plain_python_here() -> None:
    @mn.function(cpu=2)
    def add(a: int, b: int = 10) -> int:
        """Adds."""
        return a + b

    assert add(1) == 11
    assert add(1, b=2) == 3
    assert add.__name__ == "add" and add.__doc__ == "Adds." and add.name == "add"
    assert add.__wrapped__(5) == 15


def test_handles_are_registered_per_module_for_deploy() -> None:
    @mn.function
    def registered_one() -> None:
        return None

    assert registered_functions(__name__)["registered_one"] is registered_one


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda: mn.function(42), "got 42 instead of a function"),
        (lambda: mn.function("cpu"), "pass options by keyword"),
        (lambda: mn.function(len, cpu=4), "write @mn.function(cpu=4) above def len"),
        (lambda: mn.function(lambda x: x), "not '<lambda>'"),
        (lambda: mn.function(cpu=2)(3), "decorates functions, not int"),
        (lambda: mn.function(mn.function(len)), "decorated with @mn.function twice"),
    ],
    ids=["number", "string", "function-with-options", "lambda", "non-callable", "twice"],
)
def test_misuse_of_the_decorator_says_how_to_write_it(make, fragment: str) -> None:
    with pytest.raises(mn.InvalidRequestError) as caught:
        make()
    assert fragment in str(caught.value)


def test_unbound_handle_explains_how_to_run_remotely() -> None:
    @mn.function
    def lonely(x: int) -> int:
        return x

    with pytest.raises(mn.InvalidRequestError) as caught:
        lonely.call(1)
    message = str(caught.value)
    assert (
        "mn deploy" in message
        and "mn run" in message
        and 'mn.get_function("APP", "lonely")' in message
    )


def test_handle_resolves_its_app_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    @mn.function
    def inside() -> None:
        return None

    assert inside.app is None
    monkeypatch.setenv("MN_APP", "vm-app")
    monkeypatch.setenv("MN_VERSION", "3")
    monkeypatch.setenv("MN_CALL_ID", "parent-1")
    target = inside._target()
    assert (target.app, target.function, target.version, target.parent_call_id) == (
        "vm-app",
        "inside",
        3,
        "parent-1",
    )


def test_handle_pickles_by_reference_to_app_and_name(tmp_path: Path) -> None:
    """A function shipped to a VM that uses another handle calls that deployed function."""
    app_file = tmp_path / "pickled_app.py"
    app_file.write_text(
        textwrap.dedent(
            """
            import multinode as mn

            @mn.function(cpu=2)
            def square(x):
                return x * x

            @mn.function
            def fan_out():
                return (square.app, square.name, square.spec.cpu, square(4))
            """
        )
    )
    from multinode._deploy import load_app

    module, functions = load_app(app_file)
    blob = pickle_function(functions["fan_out"]._func)
    script = "import sys, cloudpickle; print(cloudpickle.loads(sys.stdin.buffer.read())())"
    env = {**os.environ, "MN_APP": "vm-app"}
    proc = subprocess.run(
        [sys.executable, "-c", script],
        input=blob,
        capture_output=True,
        env=env,
        cwd="/",
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().strip() == "('vm-app', 'square', 2.0, 16)"
    # A binding by name travels with the handle; a binding made by deploying does not.
    functions["square"]._bind("named-app", travels=True)
    copy = cloudpickle.loads(cloudpickle.dumps(functions["square"]))
    assert (copy.app, copy.name, copy(3)) == ("named-app", "square", 9)
    functions["square"]._bind("deployed-app")
    assert cloudpickle.loads(cloudpickle.dumps(functions["square"])).app is None


def test_get_call_rebuilds_a_handle_without_a_request() -> None:
    handle = mn.get_call("call-123")
    assert isinstance(handle, mn.CallHandle) and handle.id == "call-123"
    assert cloudpickle.loads(cloudpickle.dumps(handle)).id == "call-123"
