"""Placement: a call is claimed only where its cpu, memory and GPUs fit what is free,
prefetching included, over random mixes of instance and call sizes (SQLite and
PostgreSQL)."""

from __future__ import annotations

import random

import pytest

from multinode import wire
from multinode_controlplane.domain.capacity import Resources
from multinode_controlplane.services import agents
from multinode_controlplane.services.auth import Principal
from multinode_controlplane.services.context import Context
from tests.controlplane.helpers import add_instance, deploy, submit

CPUS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32)
MEMORY = (None, 256, 1024, 4096, 16384, 65536)
INSTANCES = ((0.5, 512), (2, 512), (2, 4096), (4, 16384), (16, 65536), (64, 262144))


@pytest.mark.parametrize("seed", range(12))
def test_no_call_is_claimed_by_an_instance_it_does_not_fit(
    ctx: Context, user: Principal, seed: int
) -> None:
    rng = random.Random(seed)
    specs = {
        f"f{i}": wire.FunctionSpec(cpu=rng.choice(CPUS), memory_mib=rng.choice(MEMORY))
        for i in range(4)
    }
    deploy(ctx, user, "demo", **specs)
    for name in specs:
        submit(ctx, user, rng.randint(1, 30), function=name)
    vcpus, memory = rng.choice(INSTANCES)
    agent = add_instance(ctx, user, vcpus=vcpus, memory_mib=memory)
    whole = Resources.of(vcpus, memory, 0)
    running: list[str] = []
    used = Resources.of(0, 0, 0)
    for _ in range(3):
        prefetch = rng.choice((0, 0, 1, 4, 16))
        answer = agents.poll_once(ctx, agent.instance_id, running, prefetch=prefetch)
        claimed = Resources.of(0, 0, 0)
        for a in answer.assignments:
            spec = specs[a.function]
            need = Resources.of(spec.cpu, spec.memory_mib, 0)
            # Each call fits the instance on its own: it can run there.
            assert need.fits_in(whole), (a.function, spec, vcpus, memory)
            claimed = claimed + need
        if prefetch == 0 and answer.assignments:
            # Without prefetching, what is claimed fits what was free (calls held for
            # an earlier prefetch count as used).
            assert (used + claimed).fits_in(whole)
        used = used + claimed
        running += [a.attempt_id for a in answer.assignments]


def test_max_workers_caps_the_instances_serving_a_function(ctx: Context, user: Principal) -> None:
    deploy(
        ctx,
        user,
        "demo",
        f=wire.FunctionSpec(cpu=0.5, max_workers=1),
        g=wire.FunctionSpec(cpu=0.5),
    )
    first = add_instance(ctx, user, launched_for="f")
    other = add_instance(ctx, user, launched_for="g")
    submit(ctx, user, 1, function="f")
    [a] = agents.poll_once(ctx, first.instance_id, []).assignments  # f's own instance
    submit(ctx, user, 3, function="f")
    submit(ctx, user, 1, function="g")
    # The g instance takes g's call, but no call of f: f's one worker is the first.
    taken = agents.poll_once(ctx, other.instance_id, []).assignments
    assert [t.function for t in taken] == ["g"]
    more = agents.poll_once(ctx, first.instance_id, [a.attempt_id]).assignments
    assert [t.function for t in more] == ["f", "f", "f"]


def test_an_instance_launched_for_another_function_helps_while_the_cap_allows(
    ctx: Context, user: Principal
) -> None:
    deploy(ctx, user, "demo", f=wire.FunctionSpec(cpu=0.5, max_workers=2), g=wire.FunctionSpec())
    first = add_instance(ctx, user, launched_for="f")
    helper = add_instance(ctx, user, launched_for="g")
    submit(ctx, user, 8, function="f")
    assert len(agents.poll_once(ctx, first.instance_id, []).assignments) == 4
    assert len(agents.poll_once(ctx, helper.instance_id, []).assignments) == 4
