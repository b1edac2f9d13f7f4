"""`mn jobs [APP]`: the runs of an app's jobs, with their status and latest result.

Registered on the `mn` command by :mod:`multinode.cli`, which imports this module last.
Cancelling a run is `mn cancel JOB_ID`: a job run is a call.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from multinode import wire
from multinode.cli import _client, _command, _print_json, _time, out
from multinode.errors import SerializationError

_RESULT_WIDTH = 60


@_command("jobs")
def jobs_command(
    app_name: Annotated[str | None, typer.Argument(metavar="[APP]")] = None,
    status: Annotated[
        wire.JobStatus | None, typer.Option(help="only runs with this status")
    ] = None,
    limit: Annotated[int, typer.Option(help="at most this many runs")] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List job runs, newest first, with their latest result."""
    runs = _client().list_jobs(app=app_name, status=status.value if status else None, limit=limit)
    if as_json:
        return _print_json(runs)
    table = Table("id", "app", "job", "status", "result", "updated", "created", "reason")
    for run in runs:
        table.add_row(
            run.id,
            run.app,
            run.function,
            run.status.value,
            _short_result(run.result),
            _time(run.result_at),
            _time(run.created_at),
            run.reason or "",
        )
    out.print(table)


def _short_result(data: bytes | None) -> str:
    """The result's repr, cut to fit a table cell; its size when it cannot be read here."""
    if data is None:
        return ""
    from multinode._serialization import loads

    try:
        text = repr(loads(data, what="a job result"))
    except SerializationError:
        return f"<{len(data)} bytes>"
    return text if len(text) <= _RESULT_WIDTH else text[: _RESULT_WIDTH - 1] + "…"
