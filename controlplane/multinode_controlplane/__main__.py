"""``python -m multinode_controlplane [--host H] [--port P]``: serve with settings from
``MN_SERVER_*``."""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn

from multinode_controlplane.app import create_app
from multinode_controlplane.db import Database, DatabaseInUseError
from multinode_controlplane.settings import ServerSettings

log = logging.getLogger("multinode_controlplane")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m multinode_controlplane")
    parser.add_argument("--host", help="interface to bind (MN_SERVER_HOST)")
    parser.add_argument("--port", type=int, help="port to bind (MN_SERVER_PORT)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = ServerSettings(**overrides)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
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
        )
    finally:
        database.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
