"""The provisioner loop: launch for uncovered demand, terminate what is idle, unbooted,
undeployed or unknown, and reconcile the database with the cloud."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from multinode_controlplane.services import provisioning
from multinode_controlplane.services.context import Context

log = logging.getLogger(__name__)


@dataclass
class TickReport:
    """What one pass did (for logs and tests)."""

    launched: list[str] = field(default_factory=list)
    capacity_errors: list[str] = field(default_factory=list)
    failed_launches: list[str] = field(default_factory=list)
    terminated: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    reconciled: bool = False


class Provisioner:
    """Owns the launch back-off state; everything else lives in the database.

    Args:
        ctx: the services' context.
        compute: the cloud.
        catalog: instance types to size from (default: the shipped catalog).
    """

    def __init__(
        self,
        ctx: Context,
        compute: provisioning.Compute,
        catalog: provisioning.Catalog | None = None,
    ) -> None:
        self.ctx = ctx
        self.compute = compute
        self.catalog = catalog if catalog is not None else provisioning.load_catalog()
        self._backoff: dict[tuple[int, str], float] = {}
        self._last_reconcile: float | None = None

    def run_once(self, now: float | None = None, *, reconcile: bool | None = None) -> TickReport:
        """One pass. ``reconcile`` forces (True) or skips (False) the cloud comparison,
        which otherwise runs every ``reconcile_interval_s``. One failing step, app or
        instance is logged and does not stop the others."""
        now = self.ctx.clock() if now is None else now
        report = TickReport()
        self._housekeeping(now, report)
        self.launch_for_demand(now, report)
        due = (
            self._last_reconcile is None
            or now - self._last_reconcile >= self.ctx.settings.reconcile_interval_s
        )
        if reconcile or (reconcile is None and due):
            self._last_reconcile = now
            report.reconciled = True
            self._step("reconcile", lambda: self._reconcile(now, report))
        return report

    def launch_for_demand(
        self, now: float | None = None, report: TickReport | None = None
    ) -> TickReport:
        """Only the launch step: what new calls need. Read-only unless it launches, so
        running it on every burst of new calls does not contend with the hot path."""
        now = self.ctx.clock() if now is None else now
        report = report or TickReport()
        plans = self._step(
            "planning",
            lambda: provisioning.plan(
                self.ctx, self.catalog, blocked=[k for k, t in self._backoff.items() if t > now]
            ),
        )
        for launch_plan in plans or []:
            self._step(
                f"launch for {launch_plan.app}.{launch_plan.function}",
                lambda p=launch_plan: self._launch(p, now, report),
            )
        return report

    def _housekeeping(self, now: float, report: TickReport) -> None:
        """Boot timeouts, idle instances and pending terminations (timer-driven)."""
        self._step(
            "boot timeouts", lambda: self._terminate(provisioning.fail_unbooted(self.ctx, now))
        )
        self._step("idle instances", lambda: provisioning.mark_for_termination(self.ctx, now))
        self._step(
            "termination",
            lambda: report.terminated.extend(provisioning.terminate_marked(self.ctx, self.compute)),
        )

    def _launch(self, launch_plan: provisioning.LaunchPlan, now: float, report: TickReport) -> None:
        key = (launch_plan.app_id, launch_plan.function)
        remaining, room = launch_plan.uncovered, launch_plan.room
        launched = 0
        for offer in launch_plan.offers:
            while remaining > 0 and room > 0:
                try:
                    report.launched.append(
                        provisioning.launch(self.ctx, self.compute, launch_plan, offer, now)
                    )
                except provisioning.CapacityError as exc:
                    # Never retried in place: the next offer may have capacity.
                    log.info("no capacity for %s: %s", offer.instance_type.name, exc)
                    report.capacity_errors.append(offer.instance_type.name)
                    break
                except Exception as exc:
                    log.warning(
                        "launch for %s.%s failed: %s", launch_plan.app, launch_plan.function, exc
                    )
                    report.failed_launches.append(offer.instance_type.name)
                    self._backoff[key] = now + self.ctx.settings.launch_backoff_s
                    return
                remaining -= launch_plan.slots(offer)
                room -= 1
                launched += 1
            if remaining <= 0 or room <= 0:
                self._backoff.pop(key, None)
                return
        # Every offer was out of capacity: wait before asking again, and end the calls
        # that have waited past their capacity_timeout.
        self._backoff[key] = now + self.ctx.settings.launch_backoff_s
        if launched:
            return  # some capacity was found: the calls wait for it
        tried = [offer.instance_type.name for offer in launch_plan.offers]
        ended = provisioning.fail_without_capacity(self.ctx, launch_plan, tried=tried, now=now)
        if ended:
            log.warning(
                "%s.%s: %d calls failed after waiting %gs with no capacity (tried %s)",
                launch_plan.app,
                launch_plan.function,
                len(ended),
                launch_plan.capacity_timeout_s,
                ", ".join(tried),
            )

    def _reconcile(self, now: float, report: TickReport) -> None:
        orphans = provisioning.reconcile(self.ctx, self.compute.list_instances(), now)
        if orphans:
            log.warning(
                "terminating %d instances this cluster does not own: %s", len(orphans), orphans
            )
            self.compute.terminate(orphans)
        report.orphans = orphans

    def _terminate(self, cloud_ids: list[str]) -> None:
        if cloud_ids:
            self.compute.terminate(cloud_ids)

    @staticmethod
    def _step(what, fn):  # type: ignore[no-untyped-def]
        try:
            return fn()
        except Exception:
            log.exception("provisioner: %s failed", what)
            return None
