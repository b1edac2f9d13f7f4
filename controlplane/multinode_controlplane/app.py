"""The FastAPI application and its lifespan (database, background loops)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator

from fastapi import FastAPI

from multinode import wire
from multinode_controlplane import __version__
from multinode_controlplane.api import agent, apps, blobs, calls, errors, health, instances, logs
from multinode_controlplane.api import dicts as dicts_api
from multinode_controlplane.api import environments as environments_api
from multinode_controlplane.api import jobs as jobs_api
from multinode_controlplane.api import schedules as schedules_api
from multinode_controlplane.api import secrets as secrets_api
from multinode_controlplane.api import services as services_api
from multinode_controlplane.clock import Clock, system_clock
from multinode_controlplane.db import Database
from multinode_controlplane.loops import run_forever
from multinode_controlplane.loops.builder import Builder
from multinode_controlplane.loops.provisioner import Provisioner
from multinode_controlplane.loops.reaper import Reaper
from multinode_controlplane.loops.scheduler import Scheduler
from multinode_controlplane.loops.services import ServicesLoop
from multinode_controlplane.services import auth, aws_check, provisioning
from multinode_controlplane.services.context import Context
from multinode_controlplane.services.dict_storage import DictStorage
from multinode_controlplane.services.events import BUILDER, PROVISIONER, SERVICES, Notifier
from multinode_controlplane.settings import ServerSettings

log = logging.getLogger(__name__)


def create_app(
    settings: ServerSettings | None = None,
    *,
    compute: provisioning.Compute | None = None,
    database: Database | None = None,
    clock: Clock = system_clock,
) -> FastAPI:
    """Build the control plane's app.

    Args:
        settings: default: read from ``MN_SERVER_*``.
        compute: the cloud; default: built from ``settings.compute`` (none for "none").
        database: an opened database (its SQLite lock taken); default: opened at startup
            from ``settings.database_url`` and closed at shutdown.
        clock: where "now" comes from.

    Raises:
        provisioning.ComputeConfigError: ``settings.compute`` is "aws" and the EC2
            settings are missing.
    """
    settings = settings or ServerSettings()
    cloud = compute if compute is not None else provisioning.build_compute(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = database or Database(settings.database_url)
        try:
            db.create_tables()
            ctx = Context(
                db=db, notifier=Notifier(), settings=settings, clock=clock, started_at=clock()
            )
            if settings.api_key:
                auth.ensure_api_key(ctx, settings.api_key)
            app.state.ctx = ctx
            app.state.dict_storage = DictStorage(settings)
            if settings.dict_prepare_at_startup:
                await asyncio.to_thread(app.state.dict_storage.prepare_quietly)
            app.state.aws_check = None
            if settings.aws_check and cloud is not None:
                _start_aws_check(app, cloud)
            tasks = [
                asyncio.create_task(
                    run_forever(
                        "reaper",
                        Reaper(ctx, cloud).run_once,
                        notifier=ctx.notifier,
                        wake_on=[],
                        interval=settings.provisioner_interval_s,
                    )
                )
            ]
            tasks.append(asyncio.create_task(Scheduler(ctx).run_forever()))
            tasks.append(
                asyncio.create_task(
                    run_forever(
                        "builder",
                        Builder(ctx, app.state.dict_storage).run_once,
                        notifier=ctx.notifier,
                        wake_on=[BUILDER],
                        interval=settings.services_interval_s,
                    )
                )
            )
            tasks.append(
                asyncio.create_task(
                    run_forever(
                        "services",
                        ServicesLoop(ctx).run_once,
                        notifier=ctx.notifier,
                        wake_on=[SERVICES],
                        interval=settings.services_interval_s,
                    )
                )
            )
            if cloud is not None:
                provisioner = Provisioner(ctx, cloud)
                tasks.append(
                    asyncio.create_task(
                        run_forever(
                            "provisioner",
                            provisioner.run_once,
                            notifier=ctx.notifier,
                            wake_on=[PROVISIONER],
                            interval=settings.provisioner_interval_s,
                            min_gap=settings.provisioner_min_gap_s,
                            on_event=provisioner.launch_for_demand,
                        )
                    )
                )
            try:
                yield
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            if database is None:
                db.close()

    app = FastAPI(title="Multinode control plane", version=__version__, lifespan=lifespan)
    errors.install(app)
    for module in (
        health,
        blobs,
        apps,
        calls,
        logs,
        instances,
        agent,
        schedules_api,
        dicts_api,
        services_api,
        secrets_api,
        environments_api,
    ):
        app.include_router(module.router, prefix="/v1")
    app.include_router(jobs_api.router, prefix="/v1")
    return app


def _start_aws_check(app: FastAPI, cloud: provisioning.Compute) -> None:
    """Check the AWS target on a daemon thread: the server answers meanwhile (health says
    "pending"), and a slow or unreachable endpoint never holds up start or shutdown."""
    app.state.aws_check = wire.AwsCheck(status="pending")

    def run() -> None:
        result = aws_check.run(app.state.dict_storage, cloud)
        app.state.aws_check = result
        aws_check.log_result(result)

    threading.Thread(target=run, name="aws-check", daemon=True).start()
