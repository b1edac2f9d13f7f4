"""The local cloud's AWS emulator: moto's server, with DynamoDB requests applied one at a
time.

moto's server handles requests on many threads, and its DynamoDB applies an update by
reading the item and writing it back, so two concurrent ``ADD`` updates of one counter can
lose one of them. DynamoDB itself applies each request atomically, and the dicts promise
atomic increments, conditional puts and compare-and-set on every target, so this server
runs moto's application behind a lock for DynamoDB requests (recognised by their
``X-Amz-Target`` header); every other service keeps moto's concurrency.

Run it with ``python -m multinode_provisioner.emulator -H 127.0.0.1 -p 4566``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any


class SerializeDynamoDB:
    """WSGI middleware: DynamoDB requests run one at a time, whole responses included."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self._lock = threading.Lock()

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        if not environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB"):
            return self.app(environ, start_response)
        with self._lock:
            return list(self.app(environ, start_response))


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m multinode_provisioner.emulator", description=__doc__.split("\n")[0]
    )
    parser.add_argument("-H", "--host", default="127.0.0.1", help="interface to bind")
    parser.add_argument("-p", "--port", type=int, default=4566, help="port to bind")
    args = parser.parse_args(argv)

    import os

    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    os.environ.setdefault("MOTO_PORT", str(args.port))  # moto builds its own URLs from it
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(
        args.host,
        args.port,
        SerializeDynamoDB(app),
        threaded=True,
        request_handler=MotoRequestHandler,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
