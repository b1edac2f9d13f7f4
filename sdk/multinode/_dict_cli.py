"""``mn dict``: look at and change an app's dicts from a terminal (a thin shell over the SDK).

Keys typed on the command line are strings unless ``--key-type`` says int or bytes (the
text's UTF-8 bytes); ``set --json`` stores the JSON value (so ``5`` is the int 5).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from enum import Enum
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from multinode.errors import MultinodeError

dict_app = typer.Typer(
    name="dict",
    help="Read and write an app's dicts (mn.get_dict).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
out = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


class KeyType(str, Enum):
    str = "str"
    int = "int"
    bytes = "bytes"


KeyTypeOption = Annotated[
    KeyType, typer.Option("--key-type", help="how to read KEY: str, int or bytes (UTF-8)")
]
AppArg = Annotated[str, typer.Argument(metavar="APP", help="the app owning the dict")]
NameArg = Annotated[str, typer.Argument(metavar="NAME", help="the dict's name")]
KeyArg = Annotated[str, typer.Argument(metavar="KEY")]


def _command(name: str) -> Callable[[F], F]:
    def register(command: F) -> F:
        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return command(*args, **kwargs)
            except MultinodeError as exc:
                err.print(f"[red]error:[/red] {exc.message}", highlight=False, soft_wrap=True)
                raise typer.Exit(1) from None
            except KeyError as exc:
                err.print(f"[red]error:[/red] no key {exc.args[0]!r}", highlight=False)
                raise typer.Exit(1) from None

        dict_app.command(name)(wrapper)
        return command

    return register


@_command("ls")
def ls_command(
    app_name: AppArg,
    name: Annotated[
        str | None, typer.Argument(metavar="[NAME]", help="list this dict's keys")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List APP's dicts with their sizes, or the keys of dict NAME."""
    from multinode.dicts import get_dict, list_dicts

    if name is not None:
        keys = list(get_dict(name, app=app_name))
        if as_json:
            out.print_json(json.dumps([_jsonable(k) for k in keys]))
            return
        for key in keys:
            out.print(repr(key), highlight=False, markup=False)
        return
    names = list_dicts(app_name)
    sizes = {n: len(get_dict(n, app=app_name)) for n in names}
    if as_json:
        out.print_json(json.dumps([{"name": n, "keys": sizes[n]} for n in names]))
        return
    table = Table("dict", "keys")
    for n in names:
        table.add_row(n, str(sizes[n]))
    out.print(table)


@_command("get")
def get_command(
    app_name: AppArg,
    name: NameArg,
    key: KeyArg,
    key_type: KeyTypeOption = KeyType.str,
    as_json: Annotated[bool, typer.Option("--json", help="print the value as JSON")] = False,
) -> None:
    """Print the value of KEY in dict NAME of APP."""
    from multinode.dicts import get_dict

    value = get_dict(name, app=app_name)[_key(key, key_type)]
    if as_json:
        out.print_json(json.dumps(_jsonable(value)))
    elif isinstance(value, str):
        out.print(value, highlight=False, markup=False)
    else:
        out.print(repr(value), highlight=False, markup=False)


@_command("set")
def set_command(
    app_name: AppArg,
    name: NameArg,
    key: KeyArg,
    value: Annotated[str, typer.Argument(metavar="VALUE")],
    key_type: KeyTypeOption = KeyType.str,
    as_json: Annotated[
        bool, typer.Option("--json", help="VALUE is JSON, e.g. 5 or [1, 2]")
    ] = False,
) -> None:
    """Set KEY to VALUE (a string, or JSON with --json) in dict NAME of APP."""
    from multinode.dicts import get_dict
    from multinode.errors import InvalidRequestError

    stored: Any = value
    if as_json:
        try:
            stored = json.loads(value)
        except ValueError as exc:
            raise InvalidRequestError(f"VALUE is not valid JSON: {exc}") from None
    get_dict(name, app=app_name)[_key(key, key_type)] = stored


@_command("del")
def del_command(
    app_name: AppArg, name: NameArg, key: KeyArg, key_type: KeyTypeOption = KeyType.str
) -> None:
    """Delete KEY from dict NAME of APP."""
    from multinode.dicts import get_dict

    del get_dict(name, app=app_name)[_key(key, key_type)]


def _key(text: str, key_type: KeyType) -> str | int | bytes:
    from multinode.errors import InvalidRequestError

    if key_type is KeyType.int:
        try:
            return int(text)
        except ValueError:
            raise InvalidRequestError(f"KEY {text!r} is not an integer (--key-type int)") from None
    if key_type is KeyType.bytes:
        return text.encode("utf-8")
    return text


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value
