"""Deployments and calls, against SQLite and PostgreSQL."""

from __future__ import annotations

import platform

import pytest

from multinode import wire
from multinode.errors import ForbiddenError, InvalidRequestError, NotFoundError
from multinode_controlplane.services import agents, calls, deployments
from multinode_controlplane.services.auth import Principal
from multinode_controlplane.services.context import Context
from multinode_controlplane.services.instances import end_instances
from tests.controlplane.helpers import (
    ManualClock,
    add_instance,
    call_row,
    deploy,
    result,
    submit,
)


def test_each_deploy_makes_a_new_immutable_version(ctx: Context, user: Principal) -> None:
    first = deploy(ctx, user, f=wire.FunctionSpec(cpu=1))
    second = deploy(ctx, user, f=wire.FunctionSpec(cpu=2), g=wire.FunctionSpec())
    assert (first.version, second.version) == (1, 2)
    app = deployments.get_app(ctx, user, "demo")
    assert app.version == 2 and app.functions == ["f", "g"] and app.status == "deployed"
    assert deployments.get_function(ctx, user, "demo", "f").spec.cpu == 2
    old = calls.create_calls(
        ctx, user, wire.CallsCreate(app="demo", function="f", version=1, inputs=[b"aW4="])
    )
    assert old.version == 1 and call_row(ctx, old.call_ids[0]).cpu == 1


def test_unknown_function_lists_the_existing_ones(ctx: Context, user: Principal) -> None:
    deploy(ctx, user, f=wire.FunctionSpec(), g=wire.FunctionSpec())
    with pytest.raises(NotFoundError) as info:
        calls.create_calls(ctx, user, wire.CallsCreate(app="demo", function="h", inputs=[b"aW4="]))
    assert info.value.details["functions"] == ["f", "g"]
    assert "f, g" in info.value.message


def test_calls_follow_a_redeploy_once_the_old_version_was_called(
    ctx: Context, user: Principal
) -> None:
    deploy(ctx, user, f=wire.FunctionSpec(cpu=1), g=wire.FunctionSpec())
    first = calls.create_calls(
        ctx, user, wire.CallsCreate(app="demo", function="f", inputs=[b"aW4="])
    )
    deploy(ctx, user, f=wire.FunctionSpec(cpu=2))
    second = calls.create_calls(
        ctx, user, wire.CallsCreate(app="demo", function="f", inputs=[b"aW4="])
    )
    assert (first.version, second.version) == (1, 2)
    assert call_row(ctx, second.call_ids[0]).cpu == 2
    with pytest.raises(NotFoundError) as info:  # g was called through v1 only
        calls.create_calls(ctx, user, wire.CallsCreate(app="demo", function="g", inputs=[b"aW4="]))
    assert info.value.details["functions"] == ["f"] and info.value.details["version"] == 2
    with pytest.raises(NotFoundError) as info:
        calls.create_calls(
            ctx, user, wire.CallsCreate(app="demo", function="f", version=3, inputs=[b"aW4="])
        )
    assert info.value.details["versions"] == [1, 2]
    again = calls.create_calls(
        ctx, user, wire.CallsCreate(app="demo", function="g", version=1, inputs=[b"aW4="])
    )
    assert again.version == 1
    deployments.undeploy(ctx, user, "demo")
    with pytest.raises(NotFoundError, match="is not deployed"):
        calls.create_calls(ctx, user, wire.CallsCreate(app="demo", function="f", inputs=[b"aW4="]))


def test_unknown_app_lists_the_existing_ones(ctx: Context, user: Principal) -> None:
    deploy(ctx, user, "alpha")
    with pytest.raises(NotFoundError) as info:
        deployments.get_app(ctx, user, "beta")
    assert info.value.details["apps"] == ["alpha"]


def test_deploy_refuses_blobs_never_uploaded(ctx: Context, user: Principal) -> None:
    req = wire.DeployRequest(
        functions=[wire.FunctionUpload(name="f", spec=wire.FunctionSpec(), blob_hash="0" * 64)],
        python_version=platform.python_version(),
        cloudpickle_version="3.1.2",
    )
    with pytest.raises(InvalidRequestError) as info:
        deployments.deploy(ctx, user, "demo", req)
    assert info.value.details["missing_blobs"] == ["0" * 64]


def test_create_a_thousand_calls_in_bulk(ctx: Context, user: Principal) -> None:
    deploy(ctx, user, f=wire.FunctionSpec(cpu=0.5, timeout_s=10, retries=2))
    ids = submit(ctx, user, 1000)
    assert len(set(ids)) == 1000
    listed = calls.list_calls(ctx, user, app="demo", status=wire.CallStatus.queued, limit=10_000)
    assert len(listed) == 1000
    row = call_row(ctx, ids[-1])
    assert (row.input, row.cpu, row.timeout_s, row.retries) == (b"in-999", 0.5, 10, 2)


def test_undeploy_cancels_queued_calls_and_marks_instances(ctx: Context, user: Principal) -> None:
    deploy(ctx, user)
    ids = submit(ctx, user, 3)
    add_instance(ctx, user)
    info = deployments.undeploy(ctx, user, "demo")
    assert info.status == "undeployed"
    assert {call_row(ctx, i).status for i in ids} == {"cancelled"}
    with pytest.raises(NotFoundError, match="not deployed"):
        submit(ctx, user, 1)


def test_cancel_of_a_queued_call_is_immediate(ctx: Context, user: Principal) -> None:
    deploy(ctx, user)
    [call_id] = submit(ctx, user, 1)
    assert calls.cancel_call(ctx, user, call_id).status == wire.CallStatus.cancelled
    [out] = calls.terminal_outputs(ctx, user, [call_id])
    assert out.status == wire.CallStatus.cancelled


def test_an_agent_acts_only_on_its_own_app(ctx: Context, user: Principal) -> None:
    deploy(ctx, user, "alpha")
    deploy(ctx, user, "beta")
    [beta_call] = submit(ctx, user, 1, app="beta")
    agent = add_instance(ctx, user, app="alpha")
    submit(ctx, agent, 1, app="alpha")  # nested calls within its app are fine
    with pytest.raises(ForbiddenError):
        submit(ctx, agent, 1, app="beta")
    with pytest.raises(NotFoundError):
        calls.get_call(ctx, agent, beta_call)
    with pytest.raises(NotFoundError):
        calls.terminal_outputs(ctx, agent, [beta_call], check_exist=True)


def test_running_calls_of_an_undeployed_app_end_saying_so(
    ctx: Context, user: Principal, clock: ManualClock
) -> None:
    deploy(ctx, user)
    reported, lost = submit(ctx, user, 2)
    agent = add_instance(ctx, user, vcpus=2)
    work = agents.poll_once(ctx, agent.instance_id, []).assignments
    assert {a.call_id for a in work} == {reported, lost}

    deployments.undeploy(ctx, user, "demo")
    # One attempt its agent stops and reports; the other ends with the instance, which
    # the provisioner terminates.
    first = next(a for a in work if a.call_id == reported)
    stopped = result(first, "cancelled", reason="cancelled on request")
    agents.report(ctx, agent, wire.ReportRequest(results=[stopped]))
    with ctx.db.write() as session:
        end_instances(
            session,
            [agent.instance_id],
            state="terminated",
            reason="app undeployed",
            now=clock(),
            max_infra=ctx.settings.max_call_attempts,
        )

    for call_id in (reported, lost):
        row = call_row(ctx, call_id)
        assert (row.status, row.failure_reason) == ("cancelled", "app undeployed")
