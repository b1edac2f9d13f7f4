"""Outcomes the SDK turns into values and errors, and deploy mistakes caught before any request.

Everything that needs a control plane is in ``tests/e2e`` (``test_sdk_e2e.py`` and
``test_functions_e2e.py``), against the real one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import multinode as mn
from multinode import _calls, wire


@pytest.mark.parametrize(
    ("status", "error"),
    [
        ("timed_out", mn.CallTimeoutError),
        ("cancelled", mn.CallCancelledError),
        ("failed", mn.InfrastructureError),
    ],
)
def test_platform_outcomes_become_errors_that_give_the_reason(status: str, error) -> None:
    output = wire.CallOutput(call_id="c1", status=status, reason="the reason given")
    with pytest.raises(error, match="call c1 of f .*the reason given") as caught:
        _calls.unwrap(output, function="f")
    assert caught.value.details["reason"] == "the reason given"


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


def test_deploy_of_a_file_without_functions_says_what_to_do(tmp_path: Path) -> None:
    # No control plane is configured here: these must fail before the first request.
    path = tmp_path / "empty_app.py"
    path.write_text("x = 1\n")
    with pytest.raises(mn.InvalidRequestError, match="no @mn.function found"):
        mn.deploy(path, name="empty")
    with pytest.raises(mn.InvalidRequestError, match="app name 'bad name'"):
        mn.deploy(path, name="bad name")
