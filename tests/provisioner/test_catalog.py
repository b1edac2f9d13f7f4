"""The shipped catalog is sane, and refreshing it from EC2 corrects figures without failing."""

from __future__ import annotations

from typing import Any

import pytest

from multinode_provisioner.aws import make_ec2_client
from multinode_provisioner.catalog import Catalog, InstanceType, load_catalog, parse_catalog
from tests.support.procs import free_port


def test_shipped_rows_are_positive_unique_and_consistent() -> None:
    catalog = load_catalog()
    names = [it.name for it in catalog]
    assert len(names) == len(set(names)) == len(catalog) >= 60
    for it in catalog:
        assert it.vcpus > 0 and it.memory_mib > 0 and it.price_per_hour > 0, it
        assert (it.gpu_type is None) == (it.gpu_count == 0), it
    families = {name.split(".")[0] for name in names}
    assert {"t3", "m6i", "c6i", "c6a", "r6i", "m7i", "c7i", "g4dn", "g5", "p3", "g6"} <= families
    assert {it.gpu_type for it in catalog if it.gpu_type} == {"T4", "A10G", "V100", "L4"}
    # Within a family a bigger size never costs less for the same GPU count.
    by_family: dict[tuple[str, int], list[InstanceType]] = {}
    for it in catalog:
        by_family.setdefault((it.name.split(".")[0], it.gpu_count), []).append(it)
    for group in by_family.values():
        group.sort(key=lambda it: it.vcpus)
        assert [it.price_per_hour for it in group] == sorted(it.price_per_hour for it in group)


def test_shipped_figures_agree_with_the_ec2_api(ec2: Any) -> None:
    catalog = load_catalog()
    assert catalog.refresh_from_api(ec2) == 0  # nothing to correct
    api = {
        info["InstanceType"]: info
        for page in ec2.get_paginator("describe_instance_types").paginate(
            Filters=[
                {"Name": "instance-type", "Values": [it.name for it in catalog if it.gpu_count]}
            ]
        )
        for info in page["InstanceTypes"]
    }
    assert api, "the API knows none of the GPU types"
    for it in catalog:
        if it.name in api:  # older families (p3) may be missing from an emulator's data
            gpus = api[it.name]["GpuInfo"]["Gpus"]
            assert (gpus[0]["Name"], sum(g["Count"] for g in gpus)) == (
                it.gpu_type,
                it.gpu_count,
            ), it.name


def test_refresh_corrects_known_types_and_keeps_prices(ec2: Any) -> None:
    catalog = Catalog(
        [
            InstanceType("t3.nano", 99, 1, None, 0, 0.0052),
            InstanceType("c6a.4xlarge", 16, 32768, None, 0, 0.612),
            InstanceType("zz.unknown", 3, 3000, None, 0, 1.5),
        ]
    )
    assert catalog.refresh_from_api(ec2) == 1
    assert catalog.get("t3.nano") == InstanceType("t3.nano", 2, 512, None, 0, 0.0052)
    assert catalog.get("c6a.4xlarge") == InstanceType("c6a.4xlarge", 16, 32768, None, 0, 0.612)
    assert catalog.get("zz.unknown") == InstanceType("zz.unknown", 3, 3000, None, 0, 1.5)


def test_refresh_never_fails_the_caller(aws_endpoint: str) -> None:
    dead = make_ec2_client(region="us-east-1", endpoint_url=f"http://127.0.0.1:{free_port()}")
    catalog = load_catalog()
    before = list(catalog)
    assert catalog.refresh_from_api(dead) == 0
    assert list(catalog) == before


@pytest.mark.parametrize(
    "text",
    [
        "name,vcpus,memory_mib,gpu_type,gpu_count,price_per_hour\na.b,2,1024,,0,0.1\na.b,2,1024,,0,0.1\n",
        "name,vcpus,memory_mib,gpu_type,gpu_count,price_per_hour\na.b,0,1024,,0,0.1\n",
        "name,vcpus,memory_mib,gpu_type,gpu_count,price_per_hour\na.b,2,1024,T4,0,0.1\n",
        "name,vcpus,memory_mib,gpu_type,gpu_count,price_per_hour\na.b,two,1024,,0,0.1\n",
    ],
)
def test_malformed_catalog_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_catalog(text)
