"""VM addresses go round the subnet: a freed one is not given again while others are
free, so a new VM never inherits what the host remembers of an old one."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from multinode_provisioner.vmnet import Bridge
from tests.provisioner.conftest import needs_namespaces

pytestmark = needs_namespaces


@pytest.fixture
def bridge() -> Iterator[Bridge]:
    made = Bridge.choose()
    made.create()
    try:
        yield made
    finally:
        made.delete()


def serve(netns: str, body: str) -> subprocess.Popen[bytes]:
    code = (
        "import http.server as h\n"
        "class H(h.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        f"        self.send_response(200); self.end_headers(); self.wfile.write({body!r}.encode())\n"
        "    def log_message(self, *a): pass\n"
        "h.HTTPServer(('0.0.0.0', 80), H).serve_forever()\n"
    )
    return subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c", code], start_new_session=True
    )


def answer(url: str) -> str | None:
    try:
        return httpx.get(url, timeout=0.5).text
    except httpx.HTTPError:
        return None


def test_addresses_are_not_given_again_while_others_are_free(bridge: Bridge) -> None:
    first = bridge.plan("i-a")
    bridge.release(first)
    second = bridge.plan("i-b")
    assert second.address != first.address
    bridge.release(second)
