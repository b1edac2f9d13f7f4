"""``mn secret set|ls|rm``: named secrets, whose values are never shown again.

Registered on the ``mn`` command by :mod:`multinode.cli`, which imports this module last.
A function gets a secret's keys as variables by naming it: ``@mn.function(secrets=[...])``.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.table import Table

from multinode import wire
from multinode.cli import _client, _expected_errors, _print_json, _time, out
from multinode.errors import InvalidRequestError

secret_app = typer.Typer(
    name="secret",
    help="Manage named secrets (values are stored encrypted and never printed).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@secret_app.command("set")
@_expected_errors
def set_command(
    name: Annotated[str, typer.Argument(metavar="NAME", help="the secret's name")],
    pairs: Annotated[
        list[str],
        typer.Argument(
            metavar="KEY=VALUE...",
            help="its values; a bare KEY takes the value of $KEY here",
        ),
    ],
) -> None:
    """Create secret NAME, or replace all its values."""
    values = parse_pairs(pairs)
    info = _client().set_secret(name, values)
    out.print(f"Saved secret [bold]{info.name}[/bold] with keys: {', '.join(info.keys)}")


@secret_app.command("ls")
@_expected_errors
def ls_command(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List secrets with their keys (never their values)."""
    secrets = _client().list_secrets()
    if as_json:
        return _print_json(secrets)
    table = Table("name", "keys", "updated", "created")
    for info in secrets:
        table.add_row(
            info.name, ", ".join(info.keys), _time(info.updated_at), _time(info.created_at)
        )
    out.print(table)


@secret_app.command("rm")
@_expected_errors
def rm_command(name: Annotated[str, typer.Argument(metavar="NAME")]) -> None:
    """Delete secret NAME; functions that name it fail to start until it is set again."""
    info = _client().delete_secret(name)
    out.print(f"Deleted secret [bold]{info.name}[/bold]")


def parse_pairs(pairs: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` (or ``KEY``, read from this environment) into a dict.

    Raises:
        InvalidRequestError: no pairs, a key given twice, a bad name, or a bare KEY that is
            not set here. Messages name keys, never values.
    """
    if not pairs:
        raise InvalidRequestError("give the secret's values as KEY=VALUE, e.g. API_KEY=abc123")
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            if key not in os.environ:
                raise InvalidRequestError(
                    f"{key} has no value: write {key}=VALUE, or set ${key} in this shell"
                )
            value = os.environ[key]
        if key in values:
            raise InvalidRequestError(f"{key} is given twice; give each key once")
        problem = wire.env_problem(key, value)
        if problem:
            raise InvalidRequestError(problem)
        values[key] = value
    return values
