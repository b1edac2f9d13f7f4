"""The services loop: keeps every deployed service's replicas running (see
:mod:`multinode_controlplane.services.service_replicas`)."""

from __future__ import annotations

from multinode_controlplane.services import service_replicas
from multinode_controlplane.services.context import Context


class ServicesLoop:
    """Runs :func:`service_replicas.reconcile`; woken by deploys and replicas' news."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def run_once(self, now: float | None = None) -> service_replicas.ReconcileReport:
        return service_replicas.reconcile(self.ctx, now)
