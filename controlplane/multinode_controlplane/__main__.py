"""``python -m multinode_controlplane [--host H] [--port P] [--check]``: serve with settings
from ``MN_SERVER_*`` (and ``MN_AWS_*``), or only check the AWS target they name."""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn

from multinode_controlplane.app import create_app
from multinode_controlplane.db import Database, DatabaseInUseError
from multinode_controlplane.services import aws_check, provisioning
from multinode_controlplane.services.dict_storage import DictStorage
from multinode_controlplane.settings import ServerSettings

log = logging.getLogger("multinode_controlplane")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m multinode_controlplane")
    parser.add_argument("--host", help="interface to bind (MN_SERVER_HOST)")
    parser.add_argument("--port", type=int, help="port to bind (MN_SERVER_PORT)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="check the AWS target (dict table, bucket, role; EC2 settings and launch "
        "permission), print what is missing and exit: 0 when nothing is, 2 otherwise",
    )
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = ServerSettings(**overrides)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.check:
        return check(settings)
    try:
        database = Database(settings.database_url)
    except DatabaseInUseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    log.info(
        "control plane on http://%s:%d (agents use %s), database %s, compute %s",
        settings.host,
        settings.port,
        settings.agent_url,
        database.describe(),
        settings.compute,
    )
    try:
        uvicorn.run(
            create_app(settings, database=database),
            host=settings.host,
            port=settings.port,
            log_level="warning",
            # The standard loop, measured: uvloop (installed for the gateway) gave the API
            # no gain in bench/bench_calls.py (2,644 against 2,871 inputs/s, within noise).
            loop="asyncio",
        )
    finally:
        database.close()
    return 0


def check(settings: ServerSettings) -> int:
    """Run the AWS target check alone (no database, no server) and print its report."""
    try:
        cloud = provisioning.build_compute(settings)
    except provisioning.ComputeConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = aws_check.run(DictStorage(settings), cloud)
    print(aws_check.describe(result))
    return 0 if result.status == "ok" else 2


if __name__ == "__main__":
    sys.exit(main())
