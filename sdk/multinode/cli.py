"""The ``mn`` command: a thin shell over the SDK.

Expected failures (every ``multinode.errors`` class) print one red line and exit 1; only
bugs show a traceback. Listing commands take ``--json`` for programs.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from multinode import wire
from multinode.errors import InvalidRequestError, MultinodeError

app = typer.Typer(
    name="mn",
    help="Run Python functions on cloud VMs that exist only while there is work for them.",
    no_args_is_help=True,
    add_completion=False,
    # Locals can hold API keys; never print them in a traceback.
    pretty_exceptions_show_locals=False,
)
out = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])
_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


def main() -> None:
    """Entry point of the ``mn`` script."""
    app()


def _expected_errors(command: F) -> F:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except MultinodeError as exc:
            err.print(
                f"[red]error:[/red] {escape(exc.message)}",
                highlight=False,
                markup=True,
                soft_wrap=True,
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _command(*args: Any, **kwargs: Any) -> Callable[[F], F]:
    def register(command: F) -> F:
        app.command(*args, **kwargs)(_expected_errors(command))
        return command

    return register


def _client() -> Any:
    from multinode._client import get_client

    return get_client()


def _print_json(value: Any) -> None:
    if isinstance(value, list):
        value = [
            item.model_dump(mode="json") if hasattr(item, "model_dump") else item for item in value
        ]
    elif hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    out.print_json(json.dumps(value, default=str))


def _time(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


# ---------------------------------------------------------------------------- deploy and run


@_command("deploy")
def deploy_command(
    path: Annotated[Path, typer.Argument(help="the Python file that defines your functions")],
    name: Annotated[
        str | None, typer.Option("--name", "-n", help="app name (default: file stem)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the deployment as JSON")] = False,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="wait until the app's services answer")
    ] = True,
    timeout: Annotated[
        float, typer.Option("--timeout", help="seconds to wait for services to answer")
    ] = 120.0,
) -> None:
    """Deploy the functions, tasks and services of PATH as an app.

    With services, waits (unless --no-wait) until every replica of the new version answers
    on its port and prints their URLs; a service that crash-loops or never answers is
    reported with its last log lines and a non-zero exit.
    """
    from multinode._deploy import default_app_name, deploy

    with err.status(f"deploying {path}") as status:
        info = deploy(path, name=name or default_app_name(path), progress=_build_progress(status))
    services = [f.name for f in info.functions if f.spec.kind == "service"]
    if as_json:
        _print_json(info)
    else:
        out.print(f"Deployed app [bold]{info.app}[/bold] version {info.version}")
        out.print(_functions_table(info.functions))
    if not (services and wait):
        return
    from multinode._service_cli import services_table
    from multinode.services import wait_ready

    client = _client()
    for service in services:
        with out.status(f"waiting for service {service} to answer"):
            wait_ready(client, info.app, service, version=info.version, timeout=timeout)
    if not as_json:
        replicas = [r for r in client.list_services(app=info.app) if r.version == info.version]
        out.print(services_table(replicas))
        for endpoint in sorted({r.endpoint for r in replicas if r.endpoint}):
            out.print(f"[bold]{escape(endpoint)}[/bold]  (the same after every redeploy)")


@_command("run", context_settings=_PASS_THROUGH)
def run_command(
    target: Annotated[str, typer.Argument(help="PATH or PATH::ENTRY (default entry: main)")],
    args: Annotated[list[str] | None, typer.Argument(help="passed to ENTRY as strings")] = None,
) -> None:
    """Deploy PATH for the length of one run and call ENTRY here, streaming logs.

    ENTRY defaults to a plain function named main; if ENTRY is an @mn.function it is
    called remotely. The temporary app is undeployed at the end, even on error or Ctrl-C.
    """
    from multinode._deploy import default_app_name, deploy, load_app
    from multinode.functions import Function

    path, _, entry_name = target.partition("::")
    module, functions = load_app(path)
    entry = getattr(module, entry_name or "main", None)
    if not callable(entry):
        names = ", ".join(sorted(functions)) or "none"
        raise InvalidRequestError(
            f"{path} has no function {entry_name or 'main'!r} to run; define `def main():` "
            f"or name an entry, e.g. `mn run {path}::ENTRY` (its @mn.function functions: {names})"
        )
    name = f"{default_app_name(path)}-run-{uuid.uuid4().hex[:8]}"
    with err.status(f"deploying {path}") as status:
        deploy(
            list(functions.values()), name=name, ephemeral=True, progress=_build_progress(status)
        )
    streamer = _LogStreamer(name)
    streamer.start()
    err.print(f"[dim]running {path} as ephemeral app {name}[/dim]")
    try:
        result = entry.call(*(args or [])) if isinstance(entry, Function) else entry(*(args or []))
        streamer.stop()
        if result is not None:
            out.print(result)
    except KeyboardInterrupt:
        streamer.stop()
        err.print("[yellow]interrupted[/yellow]")
        raise typer.Exit(130) from None
    finally:
        streamer.stop()
        try:
            _client().undeploy(name)
        except MultinodeError as exc:
            err.print(f"[yellow]warning:[/yellow] could not undeploy {name}: {exc.message}")


def _build_progress(status: Any) -> Callable[[str], None]:
    """Shows environment builds: each step on the spinner and in the output, the build's
    own lines dimmed beneath it."""

    def show(line: str) -> None:
        if line.startswith("  "):
            err.print(f"[dim]{escape(line)}[/dim]", highlight=False, soft_wrap=True)
            return
        err.print(escape(line), highlight=False, soft_wrap=True)
        status.update(escape(line))

    return show


class _LogStreamer:
    """Prints an app's log lines while ``mn run`` runs (polls GET /v1/logs)."""

    def __init__(self, app_name: str, *, interval: float = 0.5) -> None:
        self._app = app_name
        self._interval = interval
        self._after: int | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mn-logs", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop polling after one last fetch, so lines written at the end are shown."""
        if self._done.is_set():
            return
        self._done.set()
        self._thread.join(timeout=5)
        self._fetch()

    def _loop(self) -> None:
        while not self._done.wait(self._interval):
            self._fetch()

    def _fetch(self) -> None:
        try:
            while True:
                page = _client().logs(app=self._app, after=self._after, limit=1000)
                _print_lines(page.lines)
                self._after = page.next_after
                if len(page.lines) < 1000:
                    return
        except MultinodeError:
            return  # logs are best effort; the run itself reports real failures


def _print_lines(lines: list[wire.LogEntry], console: Console | None = None) -> None:
    """Print log lines; `mn logs` sends them to stdout (pipeable), `mn run` to stderr."""
    console = console or err
    for line in lines:
        style = {"stderr": "red", "system": "dim"}.get(line.stream, "")
        prefix = f"[cyan]{line.function}[/cyan] [dim]{line.call_id[:8]}[/dim]"
        text = line.text.rstrip("\n")
        console.print(prefix, end=" ", highlight=False)
        console.print(text, style=style, markup=False, highlight=False)


# ---------------------------------------------------------------------------- listings


@_command("apps")
def apps_command(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List apps."""
    apps = _client().list_apps()
    if as_json:
        return _print_json(apps)
    table = Table("app", "status", "version", "functions", "created", "ephemeral")
    for item in apps:
        table.add_row(
            item.name,
            item.status,
            str(item.version or "-"),
            ", ".join(item.functions),
            _time(item.created_at),
            "yes" if item.ephemeral else "",
        )
    out.print(table)


@_command("calls")
def calls_command(
    app_name: Annotated[str | None, typer.Argument(metavar="[APP]")] = None,
    status: Annotated[str | None, typer.Option(help="only calls with this status")] = None,
    limit: Annotated[int, typer.Option(help="at most this many calls")] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List recent calls, newest first."""
    calls = _client().list_calls(app=app_name, status=status, limit=limit)
    if as_json:
        return _print_json(calls)
    table = Table("id", "app", "function", "status", "created", "attempts", "reason")
    for call in calls:
        table.add_row(
            call.id,
            call.app,
            call.function,
            call.status.value,
            _time(call.created_at),
            str(call.attempts),
            call.failure_reason or "",
        )
    out.print(table)


@_command("logs")
def logs_command(
    app_name: Annotated[str, typer.Argument(metavar="APP")],
    function: Annotated[str | None, typer.Option("--function", help="only this function")] = None,
    call_id: Annotated[str | None, typer.Option("--call", help="only this call")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new lines")] = False,
) -> None:
    """Print an app's logs."""
    client = _client()
    after: int | None = None
    stop = threading.Event()
    try:
        while True:
            page = client.logs(
                app=app_name, function=function, call_id=call_id, after=after, limit=1000
            )
            _print_lines(page.lines, out)
            after = page.next_after
            if len(page.lines) == 1000:
                continue
            if not follow or stop.wait(1.0):
                return
    except KeyboardInterrupt:
        return


@_command("instances")
def instances_command(
    app_name: Annotated[str | None, typer.Argument(metavar="[APP]")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List VMs and their state."""
    items = _client().instances(app=app_name)
    if as_json:
        return _print_json(items)
    table = Table("id", "app", "type", "vcpus", "memory", "state", "calls", "$/h", "launched")
    for item in items:
        table.add_row(
            item.id,
            item.app,
            item.instance_type,
            f"{item.vcpus:g}",
            _mib(item.memory_mib),
            item.state.value,
            str(item.running_calls),
            f"{item.price_per_hour:.4f}",
            _time(item.launched_at),
        )
    out.print(table)


@_command("cancel")
def cancel_command(call_id: Annotated[str, typer.Argument(metavar="CALL_ID")]) -> None:
    """Cancel a call or a job run (a running one is stopped within seconds)."""
    info = _client().cancel_call(call_id)
    # A running call ends once its agent has stopped it, within seconds.
    state = "cancelling" if info.status is wire.CallStatus.running else info.status.value
    out.print(f"call {info.id}: {state}")


@_command("undeploy")
def undeploy_command(
    app_name: Annotated[str, typer.Argument(metavar="APP")],
    delete_data: Annotated[
        bool, typer.Option("--delete-data", help="also delete the app's dicts, for good")
    ] = False,
) -> None:
    """Undeploy an app (its VMs stop once idle); its dicts stay unless --delete-data."""
    info = _client().undeploy(app_name)
    out.print(f"app {info.name}: {info.status}")
    if delete_data:
        gone = _client().delete_dicts(app_name)
        out.print(f"deleted {len(gone.dicts)} dicts ({gone.items} keys, {gone.objects} S3 objects)")


# ---------------------------------------------------------------------------- control plane


@_command("login")
def login_command(
    url: Annotated[str, typer.Argument(help="control plane URL, e.g. https://mn.example.com")],
    key: Annotated[str, typer.Option("--key", help="API key (mnk_...)")],
) -> None:
    """Check a control plane answers, then store its URL and key in $MN_HOME/config.json."""
    from multinode._client import Client
    from multinode.config import Connection, save_login

    url = url.strip().rstrip("/")
    if "://" not in url:
        raise InvalidRequestError(f"{url!r} has no scheme; write it like https://{url}")
    client = Client(Connection(url=url, api_key=key, source="mn login"), connect_retry_s=1.0)
    try:
        health = client.health()
        client.list_apps()  # health needs no key; this proves the key works
    finally:
        client.close()
    path = save_login(url, key)
    out.print(f"Logged in to {url} (control plane {health.version}); saved to {path}")


@_command("server", context_settings=_PASS_THROUGH)
def server_command(ctx: typer.Context) -> None:
    """Run the control plane in the foreground (arguments pass through)."""
    argv = [sys.executable, "-m", "multinode_controlplane", *ctx.args]
    os.execv(sys.executable, argv)


@_command("up")
def up_command() -> None:
    """Start the local cloud (AWS emulator, control plane, VM runner) in the background."""
    _local_cloud("up")(echo=_echo)


@_command("down")
def down_command() -> None:
    """Stop the local cloud and everything it started."""
    _local_cloud("down")(echo=_echo)


@_command("status")
def status_command(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show the local cloud's components and whether they run."""
    components = _local_cloud("status")()
    if as_json:
        return _print_json([dataclasses.asdict(item) for item in components])
    if not components:
        out.print("local cloud is not running (start it with `mn up`)")
        return
    table = Table("component", "pid", "running", "detail")
    for item in components:
        table.add_row(
            item.name, str(item.pid or "-"), "yes" if item.running else "[red]no[/red]", item.detail
        )
    out.print(table)


def _local_cloud(name: str) -> Callable[..., Any]:
    # Imported here: the launcher is only needed by these three commands.
    try:
        from multinode import _localcloud
    except ImportError as exc:
        raise InvalidRequestError(
            f"the local cloud is not available in this install ({exc})"
        ) from None
    command = getattr(_localcloud, name, None)
    if command is None:
        raise InvalidRequestError(f"the local cloud has no `{name}` command in this install")
    return command


def _echo(message: str) -> None:
    err.print(message, highlight=False, markup=False)


# ---------------------------------------------------------------------------- helpers


def _functions_table(functions: list[wire.FunctionInfo]) -> Table:
    table = Table(
        "function", "kind", "cpu", "memory", "gpu", "timeout", "retries", "max workers", "cooldown"
    )
    for fn in functions:
        spec = fn.spec
        table.add_row(
            fn.name,
            spec.kind + (f" :{spec.port} x{spec.replicas}" if spec.kind == "service" else ""),
            f"{spec.cpu:g}",
            _mib(spec.memory_mib) if spec.memory_mib else "auto",
            f"{spec.gpu_type}:{spec.gpu_count}" if spec.gpu_type else "-",
            f"{spec.timeout_s:g}s",
            str(spec.retries),
            str(spec.max_workers),
            f"{spec.cooldown_s:g}s",
        )
    return table


def _mib(value: int) -> str:
    return f"{value / 1024:g} GiB" if value >= 1024 else f"{value} MiB"


# `mn dict ...`, `mn localstack ...` and `mn secret ...` live in their own modules; registered here so
# `mn --help` lists them.
import multinode._job_cli  # noqa: E402,F401  (registers `mn jobs`)
import multinode._schedule_cli  # noqa: E402,F401  (registers the schedule commands)
import multinode._service_cli  # noqa: E402,F401  (registers `mn services`)
from multinode._dict_cli import dict_app  # noqa: E402
from multinode._localstack_cli import localstack_app  # noqa: E402
from multinode._secret_cli import secret_app  # noqa: E402

app.add_typer(dict_app, name="dict")
app.add_typer(localstack_app, name="localstack")
app.add_typer(secret_app, name="secret")


if __name__ == "__main__":
    # Run as `python -m multinode.cli`, this file is `__main__`, a second copy of the
    # module; the schedule commands registered themselves on the importable
    # `multinode.cli`, so that is the one to run.
    from multinode.cli import main as _main

    _main()
