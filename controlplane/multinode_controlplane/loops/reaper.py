"""The reaper: instances that stopped heart-beating, and attempts long past their timeout."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from multinode_controlplane.services import instances
from multinode_controlplane.services.context import Context
from multinode_provisioner.compute import Compute

log = logging.getLogger(__name__)


@dataclass
class ReapReport:
    lost_cloud_ids: list[str] = field(default_factory=list)
    overdue_attempts: int = 0


class Reaper:
    """Fails lost instances (their calls are requeued without spending user retries, and
    fail once ``max_call_attempts`` were lost) and times out attempts that never reported."""

    def __init__(self, ctx: Context, compute: Compute | None) -> None:
        self.ctx = ctx
        self.compute = compute

    def run_once(self, now: float | None = None) -> ReapReport:
        """One pass; each step is independent, and a failing one is logged and skipped."""
        now = self.ctx.clock() if now is None else now
        report = ReapReport()
        try:
            report.lost_cloud_ids = instances.reap_lost(self.ctx, now)
            if report.lost_cloud_ids and self.compute is not None:
                self.compute.terminate(report.lost_cloud_ids)
        except Exception:
            log.exception("reaping lost instances failed")
        try:
            report.overdue_attempts = instances.reap_overdue(self.ctx, now)
        except Exception:
            log.exception("reaping overdue attempts failed")
        return report
