"""Instance sizing: a pure function from call requirements and a catalog to ranked offers.

Nothing here touches the network or the clock, so the rules are tested with tables.

Rules:
- A type satisfies a request when one call fits on it: enough vCPUs, enough memory (if
  asked), and enough GPUs of the asked model (if asked; matched case-insensitively).
- A request without GPUs is never placed on a GPU type: it would pay for idle accelerators.
- Offers are ranked cheapest first; ties go to fewer vCPUs, then to the name.
- ``slots`` is how many calls of this shape run at once on the type, limited by CPU,
  memory and GPUs alike, and at least 1.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from multinode.errors import InvalidRequestError
from multinode_provisioner.catalog import InstanceType

# CPU is counted in whole millicores (as Kubernetes does) so that slot counts are exact
# integer division and never hinge on how a fractional request rounds in binary floats.
_MILLI = 1000


class NoOfferError(InvalidRequestError):
    """No instance type in the catalog can run one call of the requested shape.

    ``details`` holds the request (``cpu``, ``memory_mib``, ``gpu_type``, ``gpu_count``)
    and the largest type considered (``largest``).
    """


@dataclass(frozen=True)
class Requirements:
    """What one call needs.

    Attributes:
        cpu: vCPUs, fractional allowed (``0.1`` shares a vCPU ten ways). Must be > 0.
        memory_mib: memory in MiB, or ``None`` to let CPU alone decide.
        gpu_type: GPU model (``"A10G"``, ``"t4"``; case-insensitive), or ``None`` for any
            model when ``gpu_count`` > 0.
        gpu_count: GPUs per call. A ``gpu_type`` with ``gpu_count`` 0 means one GPU.
    """

    cpu: float = 1.0
    memory_mib: int | None = None
    gpu_type: str | None = None
    gpu_count: int = 0

    def __post_init__(self) -> None:
        if not self.cpu > 0:
            raise InvalidRequestError(
                f"cpu must be greater than 0, got {self.cpu!r}", details={"cpu": self.cpu}
            )
        if self.memory_mib is not None and self.memory_mib <= 0:
            raise InvalidRequestError(
                f"memory_mib must be positive or None, got {self.memory_mib!r}",
                details={"memory_mib": self.memory_mib},
            )
        if self.gpu_count < 0:
            raise InvalidRequestError(
                f"gpu_count must be 0 or more, got {self.gpu_count!r}",
                details={"gpu_count": self.gpu_count},
            )

    @property
    def gpus(self) -> int:
        """GPUs one call needs, after applying the "a named model means one" rule."""
        if self.gpu_count:
            return self.gpu_count
        return 1 if self.gpu_type else 0


class Offer(NamedTuple):
    """An instance type that satisfies a request, and how many such calls fit on it."""

    instance_type: InstanceType
    slots: int


def parse_gpu(spec: str | None) -> tuple[str | None, int]:
    """Parse a GPU spec such as ``"A10G"``, ``"T4:1"`` or ``"a10g:4"``.

    Returns:
        ``(gpu_type, gpu_count)``; ``(None, 0)`` for ``None`` or an empty string.

    Raises:
        InvalidRequestError: the count is not a positive integer.
    """
    if spec is None or not spec.strip():
        return None, 0
    name, sep, count = spec.strip().partition(":")
    if not sep:
        return name.strip(), 1
    try:
        n = int(count)
    except ValueError:
        n = 0
    if n <= 0 or not name.strip():
        raise InvalidRequestError(
            f"bad GPU spec {spec!r}: write MODEL or MODEL:COUNT, e.g. 'A10G' or 'T4:2'",
            details={"gpu": spec},
        )
    return name.strip(), n


def slots_for(req: Requirements, it: InstanceType) -> int:
    """How many calls shaped like ``req`` fit on ``it`` at once; 0 when not even one fits."""
    need_milli = max(1, round(req.cpu * _MILLI))
    fits = (it.vcpus * _MILLI) // need_milli
    if req.memory_mib is not None:
        fits = min(fits, it.memory_mib // req.memory_mib)
    if req.gpus:
        if not _gpu_matches(req.gpu_type, it) or it.gpu_count < req.gpus:
            return 0
        fits = min(fits, it.gpu_count // req.gpus)
    elif it.gpu_count:
        return 0
    return max(0, fits)


def rank_offers(req: Requirements, catalog: Iterable[InstanceType]) -> list[Offer]:
    """Every type that can run at least one call of ``req``, cheapest first.

    Ties break on fewer vCPUs, then on the name, so the order is fully deterministic.

    Raises:
        NoOfferError: no type satisfies ``req``; the message names the largest type that
            was a candidate and what was asked.
    """
    types = list(catalog)
    offers = [Offer(it, n) for it in types if (n := slots_for(req, it)) > 0]
    if not offers:
        raise _no_offer(req, types)
    offers.sort(
        key=lambda o: (o.instance_type.price_per_hour, o.instance_type.vcpus, o.instance_type.name)
    )
    return offers


def _gpu_matches(gpu_type: str | None, it: InstanceType) -> bool:
    if it.gpu_type is None:
        return False
    return gpu_type is None or gpu_type.strip().casefold() == it.gpu_type.casefold()


def _describe_request(req: Requirements) -> str:
    parts = [f"cpu={req.cpu:g}"]
    if req.memory_mib is not None:
        parts.append(f"memory_mib={req.memory_mib}")
    if req.gpus:
        parts.append(f"gpu={req.gpu_type or 'any'}:{req.gpus}")
    return ", ".join(parts)


def _describe_type(it: InstanceType) -> str:
    text = f"{it.name} ({it.vcpus} vCPUs, {it.memory_mib} MiB"
    if it.gpu_count:
        text += f", {it.gpu_count}x {it.gpu_type}"
    return text + ")"


def _no_offer(req: Requirements, types: list[InstanceType]) -> NoOfferError:
    details: dict[str, object] = {
        "cpu": req.cpu,
        "memory_mib": req.memory_mib,
        "gpu_type": req.gpu_type,
        "gpu_count": req.gpus,
        "largest": None,
    }
    asked = _describe_request(req)
    if req.gpus:
        candidates = [it for it in types if _gpu_matches(req.gpu_type, it)]
        if not candidates:
            models = sorted({it.gpu_type for it in types if it.gpu_type})
            details["gpu_types"] = models
            return NoOfferError(
                f"no instance type has GPU model {req.gpu_type!r} (asked {asked}); "
                f"known models: {', '.join(models) or 'none'}",
                details=details,
            )
    else:
        candidates = [it for it in types if not it.gpu_count]
    if not candidates:
        return NoOfferError(f"the instance catalog is empty (asked {asked})", details=details)
    largest = max(candidates, key=lambda it: (it.gpu_count, it.vcpus, it.memory_mib))
    details["largest"] = largest.name
    return NoOfferError(
        f"no instance type fits one call of {asked}; the largest available is "
        f"{_describe_type(largest)}. Ask for less, or split the work across calls.",
        details=details,
    )
