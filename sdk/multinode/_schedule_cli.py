"""`mn schedules`, `mn fires`, `mn trigger`, `mn pause`, `mn resume`: operating scheduled tasks.

Registered on the `mn` command by :mod:`multinode.cli`, which imports this module last.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any

import typer
from rich.table import Table

from multinode.cli import _command, _print_json, _time, out
from multinode.errors import InvalidRequestError


@_command("schedules")
def schedules_command(
    app_name: Annotated[str | None, typer.Argument(metavar="[APP]")] = None,
    start: Annotated[
        str | None,
        typer.Option("--from", help="preview fire times after this ISO time (naive = UTC)"),
    ] = None,
    count: Annotated[int, typer.Option("--count", help="fire times to show per schedule")] = 3,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List schedules with their rule, timezone and next fire times."""
    from multinode import schedules

    after = _parse_instant(start) if start else None
    items = schedules.list_schedules(app_name, after=after, count=count)
    if as_json:
        return _print_json(items)
    table = Table("app", "task", "rule", "timezone", "overlap", "status", "next fires (UTC)")
    for item in items:
        table.add_row(
            item.app,
            item.function,
            item.description,
            item.timezone,
            item.overlap,
            item.status,
            "\n".join(_time(t) for t in item.next_fires),
        )
    out.print(table)


@_command("fires")
def fires_command(
    app_name: Annotated[str, typer.Argument(metavar="APP")],
    task: Annotated[str, typer.Argument(metavar="TASK")],
    limit: Annotated[int, typer.Option(help="at most this many fires")] = 20,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show what happened at a schedule's latest due times, newest first."""
    from multinode import schedules

    items = schedules.list_fires(app_name, task, limit=limit)
    if as_json:
        return _print_json(items)
    table = Table("due (UTC)", "status", "call", "reason")
    for item in items:
        table.add_row(
            _time(item.fire_time), item.status.value, item.call_id or "", item.reason or ""
        )
    out.print(table)


@_command("trigger")
def trigger_command(
    app_name: Annotated[str, typer.Argument(metavar="APP")],
    task: Annotated[str, typer.Argument(metavar="TASK")],
    wait: Annotated[
        bool, typer.Option("--wait", help="wait for the run and print its result")
    ] = False,
) -> None:
    """Run a scheduled task once, now."""
    from multinode import schedules

    handle = schedules.trigger(app_name, task)
    out.print(f"started {task} as call {handle.id}")
    if wait:
        result = handle.result()
        if result is not None:
            out.print(result)


@_command("pause")
def pause_command(
    app_name: Annotated[str, typer.Argument(metavar="APP")],
    task: Annotated[str | None, typer.Argument(metavar="[TASK]")] = None,
) -> None:
    """Pause a schedule (default: every schedule of APP)."""
    from multinode import schedules

    for item in schedules.pause(app_name, task):
        out.print(f"{item.app} {item.function}: {item.status}")


@_command("resume")
def resume_command(
    app_name: Annotated[str, typer.Argument(metavar="APP")],
    task: Annotated[str | None, typer.Argument(metavar="[TASK]")] = None,
) -> None:
    """Resume a paused schedule (default: every schedule of APP) from its next due time."""
    from multinode import schedules

    for item in schedules.resume(app_name, task):
        nxt = _time(item.next_fires[0]) if item.next_fires else "-"
        out.print(f"{item.app} {item.function}: {item.status}, next fire {nxt} UTC")


def _parse_instant(text: str) -> Any:

    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequestError(
            f"--from {text!r} is not an ISO time; write e.g. --from 2025-03-09T00:00 or "
            "--from 2025-03-09T00:00+01:00"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
