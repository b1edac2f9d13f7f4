"""The provisioner loop against a fake cloud (capacity errors on demand) and real EC2 (moto)."""

from __future__ import annotations

import platform

import pytest
from sqlalchemy import select

from multinode import wire
from multinode_controlplane import models as m
from multinode_controlplane.loops.provisioner import Provisioner
from multinode_controlplane.services import agents, deployments
from multinode_controlplane.services.auth import Principal, authenticate
from multinode_controlplane.services.context import Context
from multinode_provisioner.catalog import parse_catalog
from multinode_provisioner.compute import (
    TAG_APP,
    TAG_CLUSTER,
    TAG_INSTANCE,
    CloudConfigError,
    LaunchRequest,
)
from tests.controlplane.helpers import FakeCompute, ManualClock, call_row, deploy, result, submit

CATALOG = parse_catalog(
    "name,vcpus,memory_mib,gpu_type,gpu_count,price_per_hour\n"
    "large.8,8,16384,,0,0.20\n"
    "small.2,2,4096,,0,0.05\n"
    "medium.4,4,8192,,0,0.09\n"
)


def instances(ctx: Context) -> list[m.InstanceRow]:
    with ctx.db.read() as session:
        return list(
            session.execute(select(m.InstanceRow).order_by(m.InstanceRow.launched_at)).scalars()
        )


def register(ctx: Context, compute: FakeCompute, cloud_id: str) -> Principal:
    reply = agents.register(
        ctx,
        wire.RegisterRequest(
            bootstrap_token=compute.user_data_token(cloud_id),
            python_version=platform.python_version(),
            cloudpickle_version="3.1.2",
            hostname="vm",
            agent_version="test",
        ),
    )
    return authenticate(ctx, f"Bearer {reply.agent_token}")


def test_demand_launches_the_cheapest_type_once(ctx: Context, user: Principal) -> None:
    deploy(ctx, user, f=wire.FunctionSpec(cpu=1))
    submit(ctx, user, 3)
    compute = FakeCompute()
    provisioner = Provisioner(ctx, compute, CATALOG)
    report = provisioner.run_once(reconcile=False)
    assert [r.instance_type for r in compute.launches] == ["small.2", "small.2"]
    rows = instances(ctx)
    assert {r.state for r in rows} == {"booting"} and all(r.cloud_id for r in rows)
    assert sorted(report.launched) == sorted(r.id for r in rows)
    request = compute.launches[0]
    assert request.tags[TAG_CLUSTER] == "local" and request.tags[TAG_APP] == "demo"
    assert "MN_AGENT_BOOTSTRAP_TOKEN=mnb_" in request.user_data
    assert provisioner.run_once(reconcile=False).launched == []  # booting capacity covers it


def test_a_capacity_error_moves_to_the_next_offer(ctx: Context, user: Principal) -> None:
    deploy(ctx, user, f=wire.FunctionSpec(cpu=1))
    submit(ctx, user, 3)
    compute = FakeCompute(no_capacity=["small.2"])
    report = Provisioner(ctx, compute, CATALOG).run_once(reconcile=False)
    assert report.capacity_errors == ["small.2"]
    assert [r.instance_type for r in compute.launches] == ["small.2", "medium.4"]
    states = {r.instance_type: (r.state, r.reason or "") for r in instances(ctx)}
    assert states["medium.4"][0] == "booting"
    assert (
        states["small.2"][0] == "failed" and "InsufficientInstanceCapacity" in states["small.2"][1]
    )


def test_max_workers_bounds_the_instances(ctx: Context, user: Principal) -> None:
    deploy(ctx, user, f=wire.FunctionSpec(cpu=2, max_workers=2))
    submit(ctx, user, 100)
    compute = FakeCompute()
    provisioner = Provisioner(ctx, compute, CATALOG)
    provisioner.run_once(reconcile=False)
    provisioner.run_once(reconcile=False)
    assert len(compute.launches) == 2


def test_other_launch_errors_back_off(ctx: Context, user: Principal, clock: ManualClock) -> None:
    class Broken(FakeCompute):
        def launch(self, request: LaunchRequest):  # type: ignore[no-untyped-def]
            self.launches.append(request)
            raise CloudConfigError("InvalidAMIID.NotFound")

    deploy(ctx, user)
    submit(ctx, user, 1)
    compute = Broken()
    provisioner = Provisioner(ctx, compute, CATALOG)
    assert provisioner.run_once(reconcile=False).failed_launches == ["small.2"]
    provisioner.run_once(reconcile=False)
    assert len(compute.launches) == 1  # backing off
    clock.advance(ctx.settings.launch_backoff_s + 1)
    provisioner.run_once(reconcile=False)
    assert len(compute.launches) == 2
    assert {r.state for r in instances(ctx)} == {"failed"}


def test_idle_past_cooldown_terminates(ctx: Context, user: Principal, clock: ManualClock) -> None:
    deploy(ctx, user, f=wire.FunctionSpec(cooldown_s=60))
    [call_id] = submit(ctx, user, 1)
    compute = FakeCompute()
    provisioner = Provisioner(ctx, compute, CATALOG)
    provisioner.run_once(reconcile=False)
    [cloud_id] = compute.instances
    agent = register(ctx, compute, cloud_id)
    [a] = agents.poll_once(ctx, agent.instance_id, []).assignments
    clock.advance(100)  # busy: never idle while running
    provisioner.run_once(reconcile=False)
    agents.report(ctx, agent, wire.ReportRequest(results=[result(a)]))
    assert call_row(ctx, call_id).status == "succeeded"
    clock.advance(59)
    assert provisioner.run_once(reconcile=False).terminated == []
    clock.advance(1)
    assert provisioner.run_once(reconcile=False).terminated == [agent.instance_id]
    assert compute.terminated == [cloud_id]
    [row] = instances(ctx)
    assert (row.state, row.reason) == ("terminated", "idle")
    assert agents.poll_once(ctx, agent.instance_id, []).shutdown


def test_boot_timeout_fails_and_terminates(
    ctx: Context, user: Principal, clock: ManualClock
) -> None:
    deploy(ctx, user)
    submit(ctx, user, 1)
    compute = FakeCompute()
    provisioner = Provisioner(ctx, compute, CATALOG)
    provisioner.run_once(reconcile=False)
    [cloud_id] = compute.instances
    clock.advance(ctx.settings.boot_timeout_s + 1)
    provisioner.run_once(reconcile=False)
    assert compute.terminated[0] == cloud_id
    states = [(r.state, (r.reason or "")[:12]) for r in instances(ctx)]
    assert states[0] == ("failed", "boot timeout")
    assert len(states) == 2  # demand is still there, so a replacement was launched


def test_reconcile_terminates_strangers_and_forgets_the_vanished(
    ctx: Context, user: Principal, clock: ManualClock
) -> None:
    deploy(ctx, user)
    [call_id] = submit(ctx, user, 1)
    compute = FakeCompute()
    provisioner = Provisioner(ctx, compute, CATALOG)
    provisioner.run_once(reconcile=False)
    [cloud_id] = compute.instances
    agent = register(ctx, compute, cloud_id)
    agents.poll_once(ctx, agent.instance_id, [])
    stranger = compute.launch(
        LaunchRequest(
            "small.2", "t-stranger", "", {TAG_CLUSTER: "local", TAG_INSTANCE: "mi-unknown"}
        )
    )
    compute.instances.pop(cloud_id)  # vanished behind our back
    clock.advance(120)
    agents.poll_once(
        ctx, agent.instance_id, []
    )  # still heart-beating: only the cloud says it is gone
    report = provisioner.run_once(reconcile=True)
    assert report.orphans == [stranger.cloud_id] and stranger.cloud_id in compute.terminated
    assert instances(ctx)[0].state == "terminated"
    row = call_row(ctx, call_id)
    assert (row.infra_failures, row.user_failures) == (1, 0)


def test_undeploy_terminates_the_apps_instances(ctx: Context, user: Principal) -> None:
    deploy(ctx, user)
    submit(ctx, user, 1)
    compute = FakeCompute()
    provisioner = Provisioner(ctx, compute, CATALOG)
    provisioner.run_once(reconcile=False)
    deployments.undeploy(ctx, user, "demo")
    provisioner.run_once(reconcile=False)
    assert not compute.instances
    assert {r.state for r in instances(ctx)} == {"terminated"}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_against_real_ec2_api(ctx: Context, user: Principal, aws_endpoint: str) -> None:
    from multinode_provisioner.aws import EC2Compute
    from multinode_provisioner.catalog import load_catalog
    from multinode_provisioner.settings import LOCAL_AMI, AwsSettings

    cluster = f"test-{id(ctx):x}"
    ctx.settings = ctx.settings.model_copy(update={"cluster": cluster})
    compute = EC2Compute(AwsSettings(ami_id=LOCAL_AMI, endpoint_url=aws_endpoint, cluster=cluster))
    deploy(ctx, user, f=wire.FunctionSpec(cpu=1, memory_mib=256))
    submit(ctx, user, 1)
    provisioner = Provisioner(ctx, compute, load_catalog())
    [instance_id] = provisioner.run_once(reconcile=False).launched
    [cloud] = compute.list_instances()
    [row] = instances(ctx)
    assert (row.id, row.cloud_id, row.state) == (instance_id, cloud.cloud_id, "booting")
    assert cloud.tags[TAG_INSTANCE] == instance_id and cloud.instance_type == row.instance_type
    assert provisioner.run_once(reconcile=True).orphans == []
    deployments.undeploy(ctx, user, "demo")
    provisioner.run_once(reconcile=False)
    assert compute.list_instances() == [] or all(
        c.state in ("shutting-down", "terminated") for c in compute.list_instances()
    )


def test_max_workers_counts_instances_running_the_function_whatever_they_were_for(
    ctx: Context, user: Principal
) -> None:
    deploy(ctx, user, f=wire.FunctionSpec(cpu=1, max_workers=1), g=wire.FunctionSpec(cpu=1))
    compute = FakeCompute()
    provisioner = Provisioner(ctx, compute, CATALOG)
    submit(ctx, user, 1, function="g")
    provisioner.run_once(reconcile=False)
    assert len(compute.launches) == 1
    agent = register(ctx, compute, next(iter(compute.instances)))
    submit(ctx, user, 1, function="f")
    # f runs on g's instance (its slot is free): that instance now serves f...
    taken = agents.poll_once(ctx, agent.instance_id, []).assignments
    assert sorted(a.function for a in taken) == ["f", "g"]
    submit(ctx, user, 5, function="f")
    provisioner.run_once(reconcile=False)
    assert len(compute.launches) == 1  # ...so f's max_workers=1 allows no launch for it


def test_a_plan_counts_the_room_left_on_the_instances_it_launches(
    ctx: Context, user: Principal
) -> None:
    deploy(ctx, user, f=wire.FunctionSpec(cpu=1), g=wire.FunctionSpec(cpu=1))
    submit(ctx, user, 1, function="f")
    submit(ctx, user, 1, function="g")
    compute = FakeCompute()
    Provisioner(ctx, compute, CATALOG).run_once(reconcile=False)
    # One small.2 has two slots: one for f's call, one for g's.
    assert [r.instance_type for r in compute.launches] == ["small.2"]


def test_with_no_capacity_anywhere_a_call_fails_after_its_capacity_timeout(
    ctx: Context, user: Principal, clock: ManualClock
) -> None:
    deploy(ctx, user, f=wire.FunctionSpec(cpu=1, capacity_timeout_s=600))
    [call_id] = submit(ctx, user, 1)
    compute = FakeCompute(no_capacity=["small.2", "medium.4", "large.8"])
    provisioner = Provisioner(ctx, compute, CATALOG)
    provisioner.run_once(reconcile=False)
    clock.advance(599)
    provisioner.run_once(reconcile=False)
    assert call_row(ctx, call_id).status == "queued"  # still within its timeout
    clock.advance(ctx.settings.launch_backoff_s + 2)  # past the timeout and the back-off
    provisioner.run_once(reconcile=False)
    row = call_row(ctx, call_id)
    assert row.status == "failed" and row.failure_reason.startswith("no capacity:")
    assert "small.2, medium.4, large.8" in row.failure_reason  # the types tried
    [later] = submit(ctx, user, 1)  # a new call waits its own timeout
    clock.advance(ctx.settings.launch_backoff_s + 1)
    provisioner.run_once(reconcile=False)
    assert call_row(ctx, later).status == "queued"


def test_a_call_waits_while_some_capacity_was_found(
    ctx: Context, user: Principal, clock: ManualClock
) -> None:
    deploy(ctx, user, f=wire.FunctionSpec(cpu=1, capacity_timeout_s=60))
    submit(ctx, user, 3)
    clock.advance(120)
    compute = FakeCompute(no_capacity=["small.2"])
    Provisioner(ctx, compute, CATALOG).run_once(reconcile=False)
    with ctx.db.read() as session:
        statuses = {row.status for row in session.execute(select(m.CallRow)).scalars()}
    assert statuses == {"queued"}  # medium.4 launched: they wait for it
