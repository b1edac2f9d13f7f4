"""Service replicas in the control plane: queued per deploy, placed one per dedicated
instance, tracked from the agent's reports, switched over on redeploy, stopped on undeploy."""

from __future__ import annotations

import time

import pytest

from multinode import wire
from multinode.errors import InvalidRequestError, NotFoundError
from multinode_controlplane.loops.provisioner import Provisioner
from multinode_controlplane.services import agents, deployments, service_replicas
from multinode_controlplane.services.auth import Principal
from multinode_controlplane.services.context import Context
from multinode_provisioner.catalog import parse_catalog
from tests.controlplane.helpers import FakeCompute, ManualClock, add_instance, deploy, submit

CATALOG = parse_catalog(
    "name,vcpus,memory_mib,gpu_type,gpu_count,price_per_hour\n"
    "small.2,2,4096,,0,0.05\n"
    "large.8,8,16384,,0,0.20\n"
)


def web(replicas: int = 1) -> wire.FunctionSpec:
    return wire.FunctionSpec(kind="service", cpu=0.5, port=80, replicas=replicas, cooldown_s=0)


def poll(ctx: Context, agent: Principal) -> wire.PollResponse:
    return agents.poll_once(ctx, agent.instance_id, [])


def event(a: wire.Assignment, state: str, **kw) -> wire.ServiceEvent:  # type: ignore[no-untyped-def]
    return wire.ServiceEvent(
        attempt_id=a.attempt_id, fence=a.fence, state=state, ts=time.time(), **kw
    )


def services(ctx: Context, user: Principal) -> list[wire.ServiceInfo]:
    return service_replicas.list_services(ctx, user, app="demo")


def start_replica(ctx: Context, user: Principal, url: str) -> tuple[Principal, wire.Assignment]:
    """A dedicated instance for ``web`` takes a queued replica and reports it ready."""
    agent = add_instance(ctx, user, launched_for="web", dedicated=True)
    [a] = poll(ctx, agent).assignments
    agents.report(ctx, agent, wire.ReportRequest(services=[event(a, "ready", url=url)]))
    return agent, a


def test_each_replica_gets_an_instance_of_its_own(ctx: Context, user: Principal) -> None:
    deploy(ctx, user, web=web(replicas=2), f=wire.FunctionSpec(cpu=0.5))
    report = service_replicas.reconcile(ctx)
    assert len(report.created) == 2
    assert [(s.name, s.replica, s.state) for s in services(ctx, user)] == [
        ("web", 0, wire.ServiceState.pending),
        ("web", 1, wire.ServiceState.pending),
    ]
    assert service_replicas.reconcile(ctx).created == []  # repeating it changes nothing
    compute = FakeCompute()
    Provisioner(ctx, compute, CATALOG).run_once(reconcile=False)
    # Two half-CPU replicas would fit one small.2, but each gets its own instance.
    assert [r.instance_type for r in compute.launches] == ["small.2", "small.2"]


def test_dedicated_instances_run_only_their_service(ctx: Context, user: Principal) -> None:
    deploy(ctx, user, web=web(), f=wire.FunctionSpec(cpu=0.5))
    service_replicas.reconcile(ctx)
    submit(ctx, user, 3)
    shared = add_instance(ctx, user, vcpus=2)
    taken = poll(ctx, shared).assignments
    assert [a.function for a in taken] == ["f", "f", "f"]  # never the service
    dedicated = add_instance(ctx, user, vcpus=8, launched_for="web", dedicated=True)
    [replica] = poll(ctx, dedicated).assignments
    assert (replica.function, replica.kind, replica.port) == ("web", "service", 80)
    submit(ctx, user, 2)
    assert poll(ctx, dedicated).assignments == []  # 7.5 vCPUs free, but it is the service's
    with pytest.raises(InvalidRequestError, match="is a service"):
        submit(ctx, user, 1, function="web")


def test_agent_reports_make_the_state_url_and_restarts(ctx: Context, user: Principal) -> None:
    deploy(ctx, user, web=web())
    service_replicas.reconcile(ctx)
    agent, a = start_replica(ctx, user, "http://10.0.0.7:80")
    [info] = services(ctx, user)
    assert (info.state, info.url, info.instance_id) == (
        wire.ServiceState.ready,
        "http://10.0.0.7:80",
        agent.instance_id,
    )
    agents.report(
        ctx,
        agent,
        wire.ReportRequest(
            services=[event(a, "crashed", restarts=1, detail="raised KeyError: 'x'")]
        ),
    )
    agents.report(ctx, agent, wire.ReportRequest(services=[event(a, "starting", restarts=1)]))
    [info] = services(ctx, user)
    assert (info.state, info.url, info.restarts, info.last_exit) == (
        wire.ServiceState.starting,
        None,
        1,
        "raised KeyError: 'x'",
    )
    # A stale fence is ignored, as for results.
    stale = event(a, "ready", url="http://elsewhere:80").model_copy(update={"fence": a.fence + 1})
    agents.report(ctx, agent, wire.ReportRequest(services=[stale]))
    assert services(ctx, user)[0].url is None


def test_redeploy_keeps_the_old_version_until_the_new_one_is_ready_and_drained(
    ctx: Context, user: Principal, clock: ManualClock
) -> None:
    deploy(ctx, user, web=web())
    service_replicas.reconcile(ctx)
    old_agent, old = start_replica(ctx, user, "http://10.0.0.1:80")
    deploy(ctx, user, web=web())
    assert len(service_replicas.reconcile(ctx).created) == 1
    assert [(s.version, s.state) for s in services(ctx, user)] == [
        (2, wire.ServiceState.pending),
        (1, wire.ServiceState.ready),
    ]
    assert service_replicas.reconcile(ctx).stopping == []  # v2 not ready: v1 keeps serving
    start_replica(ctx, user, "http://10.0.0.2:80")
    clock.advance(ctx.settings.service_drain_s / 2)
    assert service_replicas.reconcile(ctx).stopping == []  # still draining
    clock.advance(ctx.settings.service_drain_s)
    assert len(service_replicas.reconcile(ctx).stopping) == 1
    assert poll(ctx, old_agent).cancel == [old.attempt_id]
    agents.report(
        ctx,
        old_agent,
        wire.ReportRequest(
            results=[
                wire.AttemptResult(attempt_id=old.attempt_id, fence=old.fence, status="cancelled")
            ]
        ),
    )
    assert len(service_replicas.reconcile(ctx).stopped) == 1
    assert [(s.version, s.state) for s in services(ctx, user)] == [(2, wire.ServiceState.ready)]


def test_undeploy_stops_every_replica(ctx: Context, user: Principal) -> None:
    deploy(ctx, user, web=web(replicas=2))
    service_replicas.reconcile(ctx)
    start_replica(ctx, user, "http://10.0.0.1:80")
    deployments.undeploy(ctx, user, "demo")
    service_replicas.reconcile(ctx)
    # The queued replica is cancelled at once, the running one when its agent stops it.
    assert sorted(
        s.state.value
        for s in service_replicas.list_services(ctx, user, app="demo", include_stopped=True)
    ) == [
        "stopped",
        "stopping",
    ]


def test_a_declared_service_has_no_replicas_until_the_loop_starts_them(
    ctx: Context, user: Principal
) -> None:
    deploy(ctx, user, web=web(), f=wire.FunctionSpec(cpu=0.5))
    # Right after the deploy: known, nothing running yet (not "no such service").
    assert service_replicas.get_service(ctx, user, "demo", "web") == []
    with pytest.raises(NotFoundError, match="has no service 'f'"):
        service_replicas.get_service(ctx, user, "demo", "f")  # a function, not a service
    with pytest.raises(NotFoundError, match="has no service 'other'"):
        service_replicas.get_service(ctx, user, "demo", "other")

    service_replicas.reconcile(ctx)
    [replica] = service_replicas.get_service(ctx, user, "demo", "web")
    assert replica.state == wire.ServiceState.pending
