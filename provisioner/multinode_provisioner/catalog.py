"""The instance-type catalog: what each EC2 type offers and what it costs.

The catalog ships as a data file (``data/instance_types.csv``) so that sizing is a pure
function of it and works with no network. Prices come only from the file (published
us-east-1 on-demand Linux list prices); vCPU and memory figures may be corrected from the
EC2 API with :meth:`Catalog.refresh_from_api`, which never fails its caller.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any

log = logging.getLogger(__name__)

_DATA_FILE = "instance_types.csv"
# DescribeInstanceTypes accepts at most 100 results per page; asking for the names in
# chunks of that size keeps each request small on real AWS and on emulators alike.
_API_CHUNK = 100


@dataclass(frozen=True)
class InstanceType:
    """One EC2 instance type.

    Attributes:
        name: EC2 name, e.g. ``"c6a.4xlarge"``.
        vcpus: virtual CPUs (hyperthreads), always positive.
        memory_mib: memory in MiB, always positive.
        gpu_type: accelerator model as EC2 names it (``"A10G"``, ``"T4"``), or ``None``.
        gpu_count: number of GPUs; ``0`` exactly when ``gpu_type`` is ``None``.
        price_per_hour: on-demand USD per hour, always positive.
    """

    name: str
    vcpus: int
    memory_mib: int
    gpu_type: str | None
    gpu_count: int
    price_per_hour: float


class Catalog:
    """An ordered, name-unique collection of :class:`InstanceType`.

    Iterating yields the types in file order. The only mutation is
    :meth:`refresh_from_api`, which replaces entries with corrected copies.
    """

    def __init__(self, types: list[InstanceType] | tuple[InstanceType, ...]) -> None:
        """Build a catalog.

        Raises:
            ValueError: two entries share a name, or an entry has a non-positive figure.
        """
        by_name: dict[str, InstanceType] = {}
        for it in types:
            _validate(it)
            if it.name in by_name:
                raise ValueError(f"instance type {it.name!r} appears twice in the catalog")
            by_name[it.name] = it
        self._by_name = by_name

    def __iter__(self) -> Iterator[InstanceType]:
        return iter(list(self._by_name.values()))

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def get(self, name: str) -> InstanceType | None:
        """The type called ``name``, or ``None`` if the catalog does not list it."""
        return self._by_name.get(name)

    def refresh_from_api(self, ec2_client: Any) -> int:
        """Correct vCPU and memory figures from EC2 ``DescribeInstanceTypes``.

        Only types already in the catalog are touched, and only their ``vcpus`` and
        ``memory_mib``; prices and GPU columns stay as the file has them. Types the API
        does not know keep their file data.

        Args:
            ec2_client: a boto3 EC2 client (or anything with the same paginator).

        Returns:
            How many entries changed. ``0`` also when the API could not be reached: any
            failure is logged and the file data kept, because a stale figure is far less
            harmful than a control plane that cannot size anything.
        """
        try:
            found = _describe(ec2_client, list(self._by_name))
        except Exception:  # never fail the caller; see the docstring
            log.warning(
                "could not refresh the instance catalog from EC2; using file data", exc_info=True
            )
            return 0
        changed = 0
        for name, (vcpus, memory_mib) in found.items():
            current = self._by_name.get(name)
            if current is None or vcpus <= 0 or memory_mib <= 0:
                continue
            if (current.vcpus, current.memory_mib) != (vcpus, memory_mib):
                self._by_name[name] = replace(current, vcpus=vcpus, memory_mib=memory_mib)
                changed += 1
        log.info(
            "instance catalog refreshed from EC2: %d of %d types known, %d corrected",
            len(found),
            len(self),
            changed,
        )
        return changed


def load_catalog() -> Catalog:
    """Load the catalog shipped with the package.

    Raises:
        ValueError: the data file is malformed (a packaging bug, never a user error).
    """
    text = resources.files(__package__).joinpath("data", _DATA_FILE).read_text(encoding="utf-8")
    return parse_catalog(text)


def parse_catalog(text: str) -> Catalog:
    """Parse catalog CSV text (header ``name,vcpus,memory_mib,gpu_type,gpu_count,price_per_hour``).

    Lines starting with ``#`` are comments. An empty ``gpu_type`` means no GPU.

    Raises:
        ValueError: a row is missing a column, has a non-numeric figure, or repeats a name.
    """
    lines = [
        line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]
    types: list[InstanceType] = []
    for row in csv.DictReader(io.StringIO("\n".join(lines))):
        try:
            gpu_type = (row["gpu_type"] or "").strip() or None
            types.append(
                InstanceType(
                    name=row["name"].strip(),
                    vcpus=int(row["vcpus"]),
                    memory_mib=int(row["memory_mib"]),
                    gpu_type=gpu_type,
                    gpu_count=int(row["gpu_count"] or 0),
                    price_per_hour=float(row["price_per_hour"]),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed catalog row {row!r}: {exc}") from exc
    return Catalog(types)


def _validate(it: InstanceType) -> None:
    if not it.name or it.vcpus <= 0 or it.memory_mib <= 0 or it.price_per_hour <= 0:
        raise ValueError(f"catalog entry {it!r} needs a name and positive vcpus, memory and price")
    if (it.gpu_type is None) != (it.gpu_count == 0) or it.gpu_count < 0:
        raise ValueError(f"catalog entry {it.name!r}: gpu_type and gpu_count must agree")


def _describe(ec2_client: Any, names: list[str]) -> dict[str, tuple[int, int]]:
    """``{name: (vcpus, memory_mib)}`` for those of ``names`` the API knows."""
    found: dict[str, tuple[int, int]] = {}
    paginator = ec2_client.get_paginator("describe_instance_types")
    for start in range(0, len(names), _API_CHUNK):
        # A filter rather than InstanceTypes=[...]: the latter fails the whole request
        # when one name is unknown in the region, the filter just leaves it out.
        chunk = names[start : start + _API_CHUNK]
        pages = paginator.paginate(Filters=[{"Name": "instance-type", "Values": chunk}])
        for page in pages:
            for info in page.get("InstanceTypes", []):
                vcpus = int(info.get("VCpuInfo", {}).get("DefaultVCpus", 0))
                memory = int(info.get("MemoryInfo", {}).get("SizeInMiB", 0))
                found[info["InstanceType"]] = (vcpus, memory)
    return found
