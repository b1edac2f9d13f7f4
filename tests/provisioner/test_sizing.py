"""Sizing is pure: tables of requests against the shipped catalog."""

from __future__ import annotations

import pytest

from multinode.errors import InvalidRequestError
from multinode_provisioner.catalog import Catalog, InstanceType, load_catalog
from multinode_provisioner.sizing import (
    NoOfferError,
    Requirements,
    parse_gpu,
    rank_offers,
    slots_for,
)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


@pytest.mark.parametrize(
    ("req", "best", "slots"),
    [
        # A whole 16-vCPU machine: the cheapest 16-vCPU type, one call at a time.
        (Requirements(cpu=16), "c6a.4xlarge", 1),
        # A tenth of a CPU shares the cheapest small type twenty ways.
        (Requirements(cpu=0.1), "t3.nano", 20),
        # Fractions round to whole millicores; 0.3 CPU fits six times in 2 vCPUs.
        (Requirements(cpu=0.3), "t3.nano", 6),
        (Requirements(cpu=1), "t3.nano", 2),
        # Memory decides: t3.nano has 512 MiB, so 1 GiB moves to t3.micro, one call at a time.
        (Requirements(cpu=0.1, memory_mib=1024), "t3.micro", 1),
        # 30 GiB with one CPU: the memory-optimised family is cheapest.
        (Requirements(cpu=1, memory_mib=30_000), "r6i.xlarge", 1),
        (Requirements(cpu=2, memory_mib=200_000), "r6i.8xlarge", 1),
        # GPUs: model matched case-insensitively, cheapest carrier of that model.
        (Requirements(cpu=1, gpu_type="A10G", gpu_count=1), "g5.xlarge", 1),
        (Requirements(cpu=1, gpu_type="a10g", gpu_count=1), "g5.xlarge", 1),
        (Requirements(cpu=1, gpu_type="A10G"), "g5.xlarge", 1),  # a named model means one GPU
        (Requirements(cpu=1, gpu_type="T4", gpu_count=1), "g4dn.xlarge", 1),
        (Requirements(cpu=1, gpu_type="l4", gpu_count=2), "g6.12xlarge", 2),
        (Requirements(cpu=1, gpu_type="V100", gpu_count=1), "p3.2xlarge", 1),
        # Any GPU: the cheapest GPU type of all.
        (Requirements(cpu=1, gpu_count=1), "g4dn.xlarge", 1),
    ],
)
def test_cheapest_offer(catalog: Catalog, req: Requirements, best: str, slots: int) -> None:
    offers = rank_offers(req, catalog)
    assert offers[0].instance_type.name == best
    assert offers[0].slots == slots


def test_gpu_spec_string_lands_on_its_family(catalog: Catalog) -> None:
    gpu_type, gpu_count = parse_gpu("T4:1")
    assert rank_offers(Requirements(cpu=1, gpu_type=gpu_type, gpu_count=gpu_count), catalog)[
        0
    ].instance_type.name.startswith("g4dn.")
    gpu_type, gpu_count = parse_gpu("A10G")
    offers = rank_offers(Requirements(cpu=1, gpu_type=gpu_type, gpu_count=gpu_count), catalog)
    assert {o.instance_type.name.split(".")[0] for o in offers} == {"g5"}


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        (None, (None, 0)),
        ("", (None, 0)),
        ("A10G", ("A10G", 1)),
        ("T4:1", ("T4", 1)),
        (" l4:4 ", ("l4", 4)),
    ],
)
def test_parse_gpu(spec: str | None, parsed: tuple[str | None, int]) -> None:
    assert parse_gpu(spec) == parsed


@pytest.mark.parametrize("spec", ["T4:0", "T4:x", ":2", "T4:-1"])
def test_parse_gpu_rejects_bad_counts(spec: str) -> None:
    with pytest.raises(InvalidRequestError, match="MODEL:COUNT"):
        parse_gpu(spec)


def test_offers_are_ranked_cheapest_first_and_all_fit(catalog: Catalog) -> None:
    req = Requirements(cpu=4, memory_mib=8192)
    offers = rank_offers(req, catalog)
    keys = [
        (o.instance_type.price_per_hour, o.instance_type.vcpus, o.instance_type.name)
        for o in offers
    ]
    assert keys == sorted(keys)
    for offer in offers:
        assert offer.instance_type.vcpus >= 4 and offer.instance_type.memory_mib >= 8192
        assert offer.instance_type.gpu_count == 0  # CPU work never pays for GPUs
        assert offer.slots == min(
            offer.instance_type.vcpus // 4, offer.instance_type.memory_mib // 8192
        )


def test_ties_break_on_fewer_vcpus_then_name() -> None:
    same_price = [
        InstanceType("b.big", 8, 8192, None, 0, 1.0),
        InstanceType("z.small", 2, 8192, None, 0, 1.0),
        InstanceType("a.small", 2, 8192, None, 0, 1.0),
    ]
    assert [o.instance_type.name for o in rank_offers(Requirements(cpu=1), same_price)] == [
        "a.small",
        "z.small",
        "b.big",
    ]


def test_slots_never_exceed_any_resource() -> None:
    gpu_box = InstanceType("g.box", 48, 196_608, "A10G", 4, 5.0)
    # GPUs bind first, then CPUs, then memory.
    assert slots_for(Requirements(cpu=2, gpu_type="a10g", gpu_count=1), gpu_box) == 4
    assert slots_for(Requirements(cpu=16, gpu_type="a10g", gpu_count=1), gpu_box) == 3
    assert slots_for(Requirements(cpu=1, memory_mib=65_536, gpu_count=1), gpu_box) == 3
    assert slots_for(Requirements(cpu=1, gpu_type="T4"), gpu_box) == 0


@pytest.mark.parametrize(
    ("req", "fragments"),
    [
        (Requirements(cpu=256), ["cpu=256", "largest available", "64 vCPUs"]),
        (Requirements(cpu=1, memory_mib=1_000_000), ["memory_mib=1000000", "r6i.16xlarge"]),
        (
            Requirements(cpu=1, gpu_type="A10G", gpu_count=16),
            ["gpu=A10G:16", "g5.48xlarge", "8x A10G"],
        ),
        (Requirements(cpu=1, gpu_type="H100"), ["'H100'", "known models", "A10G", "T4"]),
    ],
)
def test_impossible_request_names_the_largest_type(
    catalog: Catalog, req: Requirements, fragments: list[str]
) -> None:
    with pytest.raises(NoOfferError) as caught:
        rank_offers(req, catalog)
    for fragment in fragments:
        assert fragment in caught.value.message
    assert isinstance(caught.value, InvalidRequestError)
    assert caught.value.code == "invalid"  # the SDK re-raises it as InvalidRequestError


@pytest.mark.parametrize(
    "kwargs", [{"cpu": 0}, {"cpu": -1}, {"cpu": 1, "memory_mib": 0}, {"cpu": 1, "gpu_count": -1}]
)
def test_requirements_reject_nonsense(kwargs: dict) -> None:
    with pytest.raises(InvalidRequestError):
        Requirements(**kwargs)
