"""Provisioning: demand not covered by capacity → instances; idle, lost or unknown
instances → terminated. The only module that knows the provisioner package's sizing,
catalog, user-data and EC2 modules.

Cloud calls are made between transactions, never inside one: an instance row is written
(``launching``, with its launch token) and committed before ``Compute.launch``, so a crash
in between leaves a row the boot timeout and the reconciler clean up, never an instance
nobody knows.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, case, func, select, update

from multinode import wire
from multinode_controlplane import models as m
from multinode_controlplane.domain import capacity, states
from multinode_controlplane.domain.tokens import hash_token, new_token
from multinode_controlplane.services.context import Context
from multinode_controlplane.services.instances import ACTIVE, GONE, end_instances
from multinode_controlplane.settings import ServerSettings
from multinode_provisioner import userdata
from multinode_provisioner.catalog import Catalog, load_catalog
from multinode_provisioner.compute import (
    TAG_APP,
    TAG_CLUSTER,
    TAG_INSTANCE,
    TAG_LAUNCH_TOKEN,
    TAG_LAUNCHED_FOR,
    CapacityError,
    CloudInstance,
    Compute,
    LaunchRequest,
)
from multinode_provisioner.sizing import NoOfferError, Offer, Requirements, rank_offers

log = logging.getLogger(__name__)

# The provisioner package's names the loop needs, re-exported so that this module stays
# the only one that knows where they live.
__all__ = [
    "CapacityError",
    "Catalog",
    "Compute",
    "ComputeConfigError",
    "LaunchPlan",
    "load_catalog",
]


# An instance launched less than this long ago may not be listed yet (EC2's eventual
# consistency), so it is not declared vanished.
VANISH_GRACE_S = 60.0


class ComputeConfigError(RuntimeError):
    """The compute the settings name cannot be built; the message says what to set."""


def build_compute(settings: ServerSettings) -> Compute | None:
    """The cloud the settings name: EC2 (boto3 honours AWS_ENDPOINT_URL) or none.

    Raises:
        ComputeConfigError: EC2 settings (``MN_AWS_*``) are missing or malformed.
    """
    if settings.compute == "none":
        return None
    from pydantic import ValidationError

    from multinode_provisioner.aws import EC2Compute
    from multinode_provisioner.settings import AwsSettings

    try:
        # Our cluster wins over MN_AWS_CLUSTER so that tags and listings always agree.
        aws = AwsSettings(cluster=settings.cluster)  # type: ignore[call-arg]
    except ValidationError as exc:
        fields = ", ".join("MN_AWS_" + str(e["loc"][0]).upper() for e in exc.errors() if e["loc"])
        raise ComputeConfigError(
            f"MN_SERVER_COMPUTE=aws needs valid EC2 settings ({fields or exc}); set them, or "
            "MN_SERVER_COMPUTE=none to never launch instances"
        ) from None
    return EC2Compute(aws)


@dataclass(frozen=True)
class LaunchPlan:
    """Instances to launch for one function whose queued calls nothing can take."""

    app_id: int
    app: str
    function: str
    uncovered: int  # queued calls no active instance can take
    room: int  # instances max_workers still allows
    offers: list[Offer]
    cooldown_s: float
    dedicated: bool = False  # for a service: one replica per instance, nothing else on it
    capacity_timeout_s: float = 1800.0  # queued this long with no capacity anywhere: fail

    def slots(self, offer: Offer) -> int:
        """Queued calls one instance of ``offer``'s type takes."""
        return 1 if self.dedicated else offer.slots

    def wanted(self, offer: Offer) -> int:
        """Instances of ``offer``'s type that cover the demand, within ``max_workers``."""
        return min(self.room, math.ceil(self.uncovered / self.slots(offer)))


def plan(
    ctx: Context, catalog: Catalog, *, blocked: Iterable[tuple[int, str]] = ()
) -> list[LaunchPlan]:
    """Launch plans for the queued demand of deployed apps that the free capacity of
    their active (launching, booting, ready) instances does not cover.

    Calls that no instance type can ever run fail at once with the sizing error's message.
    ``blocked`` lists ``(app_id, function)`` pairs in launch back-off.
    """
    blocked = set(blocked)
    c, i, a = m.calls.c, m.instances.c, m.attempts.c
    with ctx.db.read() as session:
        demand = session.execute(
            select(c.app_id, c.function_id, func.count().label("n"))
            .join(m.apps, m.apps.c.id == c.app_id)
            .where(c.status == states.QUEUED, m.apps.c.status == "deployed")
            .group_by(c.app_id, c.function_id)
            .order_by(c.app_id, c.function_id)
        ).all()
        if not demand:
            return []
        app_ids = sorted({row.app_id for row in demand})
        fns = {
            row.id: row
            for row in session.execute(
                select(m.functions.c.id, m.functions.c.name, m.functions.c.spec).where(
                    m.functions.c.id.in_({row.function_id for row in demand})
                )
            )
        }
        names = dict(
            session.execute(
                select(m.apps.c.id, m.apps.c.name).where(m.apps.c.id.in_(app_ids))
            ).all()
        )
        active = session.execute(
            select(
                i.id, i.app_id, i.vcpus, i.memory_mib, i.gpu_count, i.launched_for, i.dedicated
            ).where(i.app_id.in_(app_ids), i.state.in_(ACTIVE))
        ).all()
        # Instances running each function's calls: they serve it, whatever they were
        # launched for, and count against its max_workers.
        serving = session.execute(
            select(c.app_id, c.function, c.instance_id)
            .where(c.status == states.RUNNING, c.app_id.in_(app_ids))
            .distinct()
        ).all()
        used = {
            row.instance_id: capacity.Resources.of(row.cpu, int(row.mem), int(row.gpus))
            for row in session.execute(
                select(
                    a.instance_id,
                    func.sum(a.cpu).label("cpu"),
                    func.coalesce(func.sum(a.memory_mib), 0).label("mem"),
                    func.coalesce(func.sum(a.gpu_count), 0).label("gpus"),
                )
                .where(a.status == "running", a.instance_id.in_([r.id for r in active]))
                .group_by(a.instance_id)
            )
        }
    free: dict[int, list[capacity.Resources]] = defaultdict(list)
    idle_dedicated: dict[tuple[int, str], int] = defaultdict(int)
    servers: dict[tuple[int, str], set[str]] = defaultdict(set)
    active_ids = {row.id for row in active}
    for row in serving:
        if row.instance_id in active_ids:
            servers[(row.app_id, row.function)].add(row.instance_id)
    for row in active:
        servers[(row.app_id, row.launched_for)].add(row.id)
        if row.dedicated:
            # A service's instance takes one replica of it, and only when it runs nothing.
            if row.id not in used:
                idle_dedicated[(row.app_id, row.launched_for)] += 1
            continue
        total = capacity.Resources.of(row.vcpus, row.memory_mib, row.gpu_count)
        free[row.app_id].append(total - used.get(row.id, capacity.ZERO))
    workers: dict[tuple[int, str], int] = defaultdict(int)
    workers.update((key, len(ids)) for key, ids in servers.items())
    plans: list[LaunchPlan] = []
    for row in demand:
        try:
            launch_plan = _plan_one(
                ctx, catalog, row, fns[row.function_id], names, free, idle_dedicated, workers
            )
        except Exception:  # one bad function must not stop the others
            log.exception("planning for function %s failed", row.function_id)
            continue
        if launch_plan is not None and (launch_plan.app_id, launch_plan.function) not in blocked:
            plans.append(launch_plan)
            if not launch_plan.dedicated:
                # What the planned instances have left over serves the next functions'
                # demand: the plan never launches capacity it already covers.
                free[launch_plan.app_id] += _leftover(launch_plan, fns[row.function_id])
    return plans


def _leftover(launch_plan: LaunchPlan, fn: Any) -> list[capacity.Resources]:
    """Free capacity of the instances ``launch_plan`` will launch (of its first offer),
    once they run the calls they are launched for."""
    spec = wire.FunctionSpec.model_validate_json(fn.spec)
    need = capacity.Resources.of(spec.cpu, spec.memory_mib, spec.gpu_count)
    offer = launch_plan.offers[0]
    kind = offer.instance_type
    whole = capacity.Resources.of(kind.vcpus, kind.memory_mib, kind.gpu_count)
    left, out = launch_plan.uncovered, []
    for _ in range(launch_plan.wanted(offer)):
        n = min(left, offer.slots)
        left -= n
        out.append(whole - capacity.Resources(need.cpu_m * n, need.memory_mib * n, need.gpus * n))
    return out


def _plan_one(ctx, catalog, row, fn, names, free, idle_dedicated, workers) -> LaunchPlan | None:  # type: ignore[no-untyped-def]
    spec = wire.FunctionSpec.model_validate_json(fn.spec)
    dedicated = spec.kind == "service"
    if dedicated:
        missing = max(0, row.n - idle_dedicated[(row.app_id, fn.name)])
        # Room for every replica twice: a redeploy's new replicas start beside the old.
        room = 2 * spec.replicas - workers[(row.app_id, fn.name)]
    else:
        need = capacity.Resources.of(spec.cpu, spec.memory_mib, spec.gpu_count)
        missing = capacity.uncovered(row.n, need, free[row.app_id])
        room = spec.max_workers - workers[(row.app_id, fn.name)]
    if missing == 0 or room <= 0:
        return None
    try:
        offers = rank_offers(
            Requirements(spec.cpu, spec.memory_mib, spec.gpu_type, spec.gpu_count), catalog
        )
    except NoOfferError as exc:
        fail_unplaceable(ctx, row.function_id, exc.message)
        return None
    return LaunchPlan(
        row.app_id,
        names[row.app_id],
        fn.name,
        missing,
        room,
        offers,
        spec.cooldown_s,
        dedicated=dedicated,
        capacity_timeout_s=spec.capacity_timeout_s,
    )


def fail_unplaceable(ctx: Context, function_id: int, reason: str) -> None:
    """Fail the queued calls of a function no instance type can run."""
    with ctx.db.write() as session:
        ids = list(
            session.execute(
                update(m.calls)
                .where(m.calls.c.function_id == function_id, m.calls.c.status == states.QUEUED)
                .values(status=states.FAILED, finished_at=ctx.clock(), failure_reason=reason)
                .returning(m.calls.c.id)
            ).scalars()
        )
    ctx.notifier.calls_finished(ids)


def fail_without_capacity(
    ctx: Context, launch_plan: LaunchPlan, *, tried: Sequence[str], now: float
) -> list[str]:
    """Fail the function's calls queued longer than its ``capacity_timeout_s`` while no
    instance type had capacity (the caller just saw every offer refused). Returns their ids.
    """
    c = m.calls.c
    cutoff = now - launch_plan.capacity_timeout_s
    reason = (
        f"no capacity: no instance of {', '.join(tried)} could be launched, and the call "
        f"waited {launch_plan.capacity_timeout_s:g}s (capacity_timeout)"
    )
    with ctx.db.write() as session:
        ids = list(
            session.execute(
                update(m.calls)
                .where(
                    c.app_id == launch_plan.app_id,
                    c.function == launch_plan.function,
                    c.status == states.QUEUED,
                    c.created_at < cutoff,
                )
                .values(status=states.FAILED, finished_at=now, failure_reason=reason)
                .returning(c.id)
            ).scalars()
        )
    ctx.notifier.calls_finished(ids)
    return ids


def launch(
    ctx: Context, compute: Compute, launch_plan: LaunchPlan, offer: Offer, now: float
) -> str:
    """Launch one instance of ``offer`` for ``launch_plan``; returns its id.

    The row is committed (``launching``) before the cloud is asked; on success it gets its
    cloud id and becomes ``booting`` (unless its agent registered first); on failure it
    becomes ``failed`` with the reason, and the error propagates.
    """
    it = offer.instance_type
    instance_id = "mi-" + uuid.uuid4().hex[:16]
    launch_token = uuid.uuid4().hex
    bootstrap = new_token("bootstrap")
    user_data = userdata.render(
        control_plane_url=ctx.settings.agent_url,
        bootstrap_token=bootstrap,
        install_command=ctx.settings.agent_install_command,
        extra_env=ctx.settings.agent_extra_env,
    )
    with ctx.db.write() as session:
        session.add(
            m.InstanceRow(
                id=instance_id,
                app_id=launch_plan.app_id,
                instance_type=it.name,
                vcpus=it.vcpus,
                memory_mib=it.memory_mib,
                gpu_count=it.gpu_count,
                price_per_hour=it.price_per_hour,
                state="launching",
                launched_for=launch_plan.function,
                dedicated=launch_plan.dedicated,
                launch_token=launch_token,
                bootstrap_token_hash=hash_token(bootstrap),
                cooldown_s=launch_plan.cooldown_s,
                launched_at=now,
            )
        )
    request = LaunchRequest(
        instance_type=it.name,
        launch_token=launch_token,
        user_data=user_data,
        tags={
            TAG_CLUSTER: ctx.settings.cluster,
            TAG_APP: launch_plan.app,
            TAG_INSTANCE: instance_id,
            TAG_LAUNCHED_FOR: launch_plan.function,
            TAG_LAUNCH_TOKEN: launch_token,
        },
    )
    try:
        cloud = compute.launch(request)
    except Exception as exc:
        with ctx.db.write() as session:
            end_instances(
                session,
                [instance_id],
                state="failed",
                reason=f"launch failed: {exc}",
                now=ctx.clock(),
                max_infra=ctx.settings.max_call_attempts,
            )
        raise
    record_cloud_id(ctx, instance_id, cloud.cloud_id)
    return instance_id


def record_cloud_id(ctx: Context, instance_id: str, cloud_id: str) -> None:
    """Note the cloud's id; a ``launching`` row becomes ``booting`` (a later state stays)."""
    i = m.instances.c
    with ctx.db.write() as session:
        session.execute(
            update(m.instances)
            .where(i.id == instance_id)
            .values(
                cloud_id=cloud_id,
                state=case((i.state == "launching", "booting"), else_=i.state),
            )
        )


# Least time a new instance is kept for its first work, whatever its cooldown.
FIRST_WORK_GRACE_S = 10.0


_LAST_FINISH = select(func.max(m.attempts.c.finished_at)).where(
    m.attempts.c.instance_id == bindparam("_instance")
)


def mark_for_termination(ctx: Context, now: float) -> int:
    """Mark ``terminating`` the ready instances idle past their cooldown and the active
    instances of undeployed apps. Keeps ``idle_since`` up to date. Returns how many."""
    i, a = m.instances.c, m.attempts.c
    with ctx.db.write() as session:
        query = select(i.id, i.ready_at, i.cooldown_s, i.idle_since).where(i.state == "ready")
        if not ctx.db.is_sqlite:
            # Serialises with the polls of these instances (they update the row first), so
            # an instance cannot claim work in the instant it is judged idle.
            query = query.with_for_update(of=m.instances)
        ready = session.execute(query).all()
        ids = [r.id for r in ready]
        busy = set(
            session.execute(
                select(a.instance_id)
                .where(a.instance_id.in_(ids), a.status == "running")
                .distinct()
            ).scalars()
        )
        # One probe of (instance_id, finished_at) per idle instance: the cost of this
        # pass follows the instances alive, not the attempts they ever ran.
        last = {
            r.id: session.execute(_LAST_FINISH, {"_instance": r.id}).scalar()
            for r in ready
            if r.id not in busy
        }
        last = {k: v for k, v in last.items() if v is not None}
        idle_updates, idle = [], []
        for r in ready:
            since = None if r.id in busy else max(r.ready_at or 0.0, last.get(r.id) or 0.0)
            if since != r.idle_since:
                idle_updates.append({"_id": r.id, "_since": since})
            # One that has run nothing yet may be between registering and its first
            # poll: a short cooldown (0 for a service's instance) must not end it there.
            cooldown = r.cooldown_s if r.id in last else max(r.cooldown_s, FIRST_WORK_GRACE_S)
            if since is not None and now - since >= cooldown:
                idle.append(r.id)
        if idle_updates:
            session.execute(
                update(m.instances)
                .where(i.id == bindparam("_id"))
                .values(idle_since=bindparam("_since")),
                idle_updates,
            )
        if idle:
            session.execute(
                update(m.instances).where(i.id.in_(idle)).values(state="terminating", reason="idle")
            )
        undeployed = session.execute(
            update(m.instances)
            .where(
                i.state.in_(ACTIVE),
                i.app_id.in_(select(m.apps.c.id).where(m.apps.c.status == "undeployed")),
            )
            .values(state="terminating", reason="app undeployed")
        ).rowcount
    ctx.notifier.instance_changed(idle)
    return len(idle) + (undeployed or 0)


def terminate_marked(ctx: Context, compute: Compute | None) -> list[str]:
    """Terminate the ``terminating`` instances in the cloud, then mark them terminated
    (their remaining attempts are lost; cancelled when cancellation was asked)."""
    i = m.instances.c
    with ctx.db.read() as session:
        rows = session.execute(select(i.id, i.cloud_id).where(i.state == "terminating")).all()
    if not rows:
        return []
    cloud_ids = [r.cloud_id for r in rows if r.cloud_id]
    if cloud_ids and compute is not None:
        compute.terminate(cloud_ids)
    ids = [r.id for r in rows]
    with ctx.db.write() as session:
        ended = end_instances(
            session,
            ids,
            state="terminated",
            reason="terminated",
            now=ctx.clock(),
            max_infra=ctx.settings.max_call_attempts,
        )
    ended.notify(ctx)
    return ids


def fail_unbooted(ctx: Context, now: float) -> list[str]:
    """Fail instances whose agent did not register within ``boot_timeout_s``; returns
    their cloud ids, to terminate."""
    i = m.instances.c
    cutoff = now - ctx.settings.boot_timeout_s
    with ctx.db.write() as session:
        rows = session.execute(
            select(i.id, i.cloud_id).where(
                i.state.in_(("launching", "booting")), i.launched_at < cutoff
            )
        ).all()
        ended = end_instances(
            session,
            [r.id for r in rows],
            state="failed",
            reason=f"boot timeout: no agent registered within {ctx.settings.boot_timeout_s:g}s",
            now=now,
            max_infra=ctx.settings.max_call_attempts,
        )
    ended.notify(ctx)
    return [r.cloud_id for r in rows if r.cloud_id]


def reconcile(ctx: Context, cloud: Sequence[CloudInstance], now: float) -> list[str]:
    """Compare the cloud's instances of this cluster with the database.

    - A cloud instance the database does not know, or knows as terminated or failed, is
      returned for termination.
    - A ``launching`` row whose instance the cloud has gets its cloud id.
    - A row the cloud no longer lists (after a grace period) becomes ``terminated``
      and its attempts are lost.
    """
    i = m.instances.c
    live = [ci for ci in cloud if ci.state not in ("shutting-down", "terminated")]
    by_tag = {ci.tags.get(TAG_INSTANCE): ci for ci in live if ci.tags.get(TAG_INSTANCE)}
    by_cloud_id = {ci.cloud_id: ci for ci in live}
    with ctx.db.read() as session:
        rows = session.execute(
            select(i.id, i.cloud_id, i.state, i.launched_at).where(
                (i.state.not_in(GONE)) | i.id.in_(list(by_tag)) | i.cloud_id.in_(list(by_cloud_id))
            )
        ).all()
    known: dict[str, object] = {}
    adopted: list[tuple[str, str]] = []
    vanished: list[str] = []
    for row in rows:
        ci = by_tag.get(row.id) or (by_cloud_id.get(row.cloud_id) if row.cloud_id else None)
        if ci is not None:
            known[ci.cloud_id] = row
            if row.state == "launching" and not row.cloud_id:
                adopted.append((row.id, ci.cloud_id))
        elif (
            row.state in ("booting", "ready", "terminating")
            and row.launched_at < now - VANISH_GRACE_S
        ):
            vanished.append(row.id)
    orphans = [
        ci.cloud_id
        for ci in live
        if ci.cloud_id not in known or known[ci.cloud_id].state in GONE  # type: ignore[attr-defined]
    ]
    for instance_id, cloud_id in adopted:
        record_cloud_id(ctx, instance_id, cloud_id)
    if vanished:
        with ctx.db.write() as session:
            ended = end_instances(
                session,
                vanished,
                state="terminated",
                reason="vanished from the cloud",
                now=now,
                max_infra=ctx.settings.max_call_attempts,
            )
        ended.notify(ctx)
    return orphans
