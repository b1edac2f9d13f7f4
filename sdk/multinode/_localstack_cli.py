"""`mn localstack up|down|status`: LocalStack without Docker, for `mn up` to use.

Registered on the `mn` command by :mod:`multinode.cli`; the launcher is
:mod:`multinode._localstack`.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from multinode.cli import _echo, _expected_errors, _print_json, out

localstack_app = typer.Typer(
    name="localstack",
    help="Run LocalStack without Docker (host mode, from .venv-localstack).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


def _config(port: int | None) -> Any:
    from multinode._localstack import LocalStackConfig

    return LocalStackConfig() if port is None else LocalStackConfig(port=port)


PortOption = Annotated[
    int | None,
    typer.Option("--port", help="port on 127.0.0.1 (default MN_LOCALSTACK_PORT, else 4566)"),
]


@localstack_app.command("up")
@_expected_errors
def up_command(port: PortOption = None) -> None:
    """Start LocalStack in the background and wait until it is ready."""
    from multinode import _localstack

    state = _localstack.up(_config(port), echo=_echo)
    if state["port"] != 4566:
        _echo(f"for `mn up`: MN_LOCAL_AWS_PORT={state['port']} mn up")


@localstack_app.command("down")
@_expected_errors
def down_command() -> None:
    """Stop the LocalStack `mn localstack up` started (its whole process group)."""
    from multinode import _localstack

    _localstack.down(echo=_echo)


@localstack_app.command("status")
@_expected_errors
def status_command(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Whether the launcher's LocalStack runs and answers its health check."""
    from multinode import _localstack

    state = _localstack.status()
    if as_json:
        return _print_json(state)
    if state is None:
        out.print("LocalStack (launcher) is not running (start it with `mn localstack up`)")
        return
    health = "healthy" if state["healthy"] else "[red]not answering[/red]"
    running = f"running, {health}" if state["running"] else "[red]not running[/red]"
    out.print(
        f"LocalStack on {state['endpoint']}: {running} (pid {state['pid']}, log {state['log']})"
    )
