"""`mn services`: where each service's replicas answer and how they fare.

Registered on the `mn` command by :mod:`multinode.cli`, which imports this module last.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from multinode import wire
from multinode.cli import _client, _command, _print_json, _time, out


@_command("services")
def services_command(
    app_name: Annotated[str | None, typer.Argument(metavar="[APP]")] = None,
    include_stopped: Annotated[
        bool, typer.Option("--all", help="include stopped replicas")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List services: each one's stable endpoint, then each replica's URL, version, state
    and restarts."""
    items = _client().list_services(app=app_name, include_stopped=include_stopped)
    if as_json:
        return _print_json(items)
    out.print(services_table(items))


def services_table(items: list[wire.ServiceInfo]) -> Table:
    table = Table(
        "app", "service", "endpoint", "version", "replica", "replica url", "state", "restarts",
        "since",
    )  # fmt: skip
    for item in items:
        state = item.state.value + (" (crash loop)" if item.crash_looping else "")
        table.add_row(
            item.app,
            item.name,
            item.endpoint or "-",
            str(item.version),
            str(item.replica),
            item.url or "-",
            state,
            str(item.restarts),
            _time(item.ready_at or item.created_at),
        )
    return table
