"""The start-up check of the AWS target a control plane was given.

It asks whether the dict table, bucket and role exist and the role may be assumed, and
whether the EC2 settings (AMI, subnet, security groups, instance profile, launch template)
exist and a dry-run launch is allowed; then reports every problem in one message. The
server runs it in the background at start (``ServerSettings.aws_check``): the result is
logged and shown by ``GET /v1/health``; ``python -m multinode_controlplane --check`` runs
it alone and exits non-zero when something is missing.
"""

from __future__ import annotations

import logging
import time

from multinode import wire
from multinode_controlplane.services.dict_storage import DictStorage
from multinode_controlplane.services.provisioning import Compute

log = logging.getLogger(__name__)


def run(storage: DictStorage, cloud: Compute | None) -> wire.AwsCheck:
    """Check the dict storage and, when given, the cloud; never raises.

    Args:
        storage: the dict storage whose table, bucket and role are checked.
        cloud: the compute whose launch settings are checked; None: dicts only.
    """
    started = time.monotonic()
    parts: list[wire.AwsCheck] = []
    for name, check in (("dict storage", storage.check), ("compute", cloud and cloud.check)):
        if check is None:
            continue
        try:
            parts.append(check())
        except Exception as exc:  # a bug in one part must not hide the other's findings
            log.exception("the %s check failed", name)
            problem = wire.AwsProblem(item=name, message=f"the check itself failed: {exc!r}")
            parts.append(wire.AwsCheck(status="problems", checked=[name], problems=[problem]))
    problems = [p for part in parts for p in part.problems]
    return wire.AwsCheck(
        status="problems" if problems else "ok",
        checked=[item for part in parts for item in part.checked],
        problems=problems,
        duration_s=round(time.monotonic() - started, 3),
    )


def describe(result: wire.AwsCheck) -> str:
    """The result as one message: a line per problem, each naming its setting."""
    if result.status == "pending":
        return "AWS target: not checked yet"
    if not result.problems:
        return f"AWS target: ok ({', '.join(result.checked)}; {result.duration_s}s)"
    lines = [f"AWS target: {len(result.problems)} problem(s) of {len(result.checked)} checked:"]
    for p in result.problems:
        setting = f" [{p.setting}]" if p.setting else ""
        lines.append(f"  - {p.item}{setting}: {p.message}")
    return "\n".join(lines)


def log_result(result: wire.AwsCheck) -> None:
    """Log the result: one INFO line when all is well, one ERROR message otherwise."""
    if result.problems:
        log.error("%s", describe(result))
    else:
        log.info("%s", describe(result))
