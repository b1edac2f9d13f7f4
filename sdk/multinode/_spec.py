"""Turn decorator arguments into a validated :class:`multinode.wire.FunctionSpec`.

Every check runs at decoration time on the user's machine, so a mistake is reported at
import, before anything is sent, with the corrected call in the message.

Memory units: ``MiB``/``GiB``/``TiB`` are binary. ``MB``/``GB``/``TB`` (and bare ``M``/``G``/``T``)
are read as their binary counterparts too, because instance catalogs (EC2 among them)
quote memory in GiB while labelling it "GB"; asking for "32GB" should fit a 32 GiB
machine, not fail to. Fractions round up to a whole MiB.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Any, Literal

from multinode import wire
from multinode.errors import InvalidRequestError

KNOWN_GPUS: tuple[str, ...] = ("T4", "A10G", "L4", "V100", "A100", "H100")
MAX_GPUS_PER_FUNCTION = 8

_MIB_PER_UNIT = {
    "m": 1,
    "mb": 1,
    "mi": 1,
    "mib": 1,
    "g": 1024,
    "gb": 1024,
    "gi": 1024,
    "gib": 1024,
    "t": 1024 * 1024,
    "tb": 1024 * 1024,
    "ti": 1024 * 1024,
    "tib": 1024 * 1024,
}
_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*$")
_GPU_RE = re.compile(r"^\s*([A-Za-z0-9]+)\s*(?::\s*(\d+)\s*)?$")

_FIELD_LIMITS = wire.FunctionSpec.model_fields


def build_spec(
    func_name: str,
    *,
    cpu: Any = 1,
    memory: Any = None,
    gpu: Any = None,
    timeout: Any = 300,
    retries: Any = 0,
    max_workers: Any = 10,
    cooldown: Any = 60,
    env: Any = None,
    secrets: Any = None,
    pip: Any = None,
    python: Any = None,
    capacity_timeout: Any = 1800,
    kind: Literal["function", "job", "service"] = "function",
) -> wire.FunctionSpec:
    """Validate decorator arguments for ``func_name`` and return its spec.

    ``kind`` is recorded in the spec and names the decorator (``@mn.job``) in messages.

    Raises:
        InvalidRequestError: an argument is of the wrong type or out of range; the message
            names the argument and shows a correct form.
    """
    where = f"@mn.{kind}(...) on {func_name}"
    gpu_type, gpu_count = parse_gpu(gpu, where=where)
    return wire.FunctionSpec(
        kind=kind,
        cpu=parse_cpu(cpu, where=where),
        memory_mib=parse_memory(memory, where=where),
        gpu_type=gpu_type,
        gpu_count=gpu_count,
        timeout_s=parse_seconds(timeout, arg="timeout", where=where, example="timeout=600"),
        retries=_parse_int(
            retries, arg="retries", where=where, low=0, high=20, example="retries=3"
        ),
        max_workers=_parse_int(
            max_workers, arg="max_workers", where=where, low=1, high=1000, example="max_workers=50"
        ),
        cooldown_s=parse_seconds(
            cooldown, arg="cooldown", where=where, example="cooldown=120", allow_zero=True
        ),
        env=parse_env(env, where=where),
        secrets=parse_secrets(secrets, where=where),
        pip=parse_pip(pip, where=where),
        python=parse_python(python, where=where),
        capacity_timeout_s=parse_capacity_timeout(capacity_timeout, where=where),
    )


def parse_capacity_timeout(value: Any, *, where: str) -> float:
    """How long a call may wait for capacity: seconds or a timedelta, up to 7 days."""
    example = "capacity_timeout=timedelta(hours=1)"
    seconds = parse_seconds(value, arg="capacity_timeout", where=where, example=example)
    if seconds > _upper_limit("capacity_timeout_s"):
        raise _invalid(where, "capacity_timeout", value, f"at most 7 days, e.g. {example}")
    return seconds


def parse_pip(value: Any, *, where: str) -> list[str]:
    """Requirements of the function (added to the app's requirements.txt), e.g.
    ``["humanize==4.17.0"]``."""
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise _invalid(where, "pip", value, 'a list of requirements, e.g. pip=["pandas==2.2.3"]')
    if len(value) > wire.MAX_REQUIREMENTS:
        raise _invalid(where, "pip", f"<{len(value)} items>", f"at most {wire.MAX_REQUIREMENTS}")
    for requirement in value:
        problem = wire.requirement_problem(requirement)
        if problem:
            raise InvalidRequestError(
                f"{where}: pip: {problem}", details={"argument": "pip", "value": repr(requirement)}
            )
    return [r.strip() for r in value]


def parse_python(value: Any, *, where: str) -> str | None:
    """A Python minor version such as ``"3.12"``; None for the deployer's."""
    if value is None:
        return None
    if not isinstance(value, str) or not re.match(wire.PYTHON_MINOR_PATTERN, value):
        raise _invalid(where, "python", value, 'a minor version as a string, e.g. python="3.12"')
    return value


def parse_env(value: Any, *, where: str) -> dict[str, str]:
    """Variables for the function's processes: a dict of names to strings (None: none)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _invalid(
            where, "env", value, 'a dict of names to strings, e.g. env={"LEVEL": "debug"}'
        )
    if len(value) > wire.MAX_ENV_VARS:
        raise _invalid(
            where, "env", f"<{len(value)} variables>", f"at most {wire.MAX_ENV_VARS} variables"
        )
    for key, item in value.items():
        problem = wire.env_problem(key, item)
        if problem:
            raise InvalidRequestError(
                f"{where}: env: {problem}", details={"argument": "env", "key": repr(key)}
            )
    return dict(value)


def parse_secrets(value: Any, *, where: str) -> list[str]:
    """Names of secrets (``mn secret set NAME ...``) whose keys the function gets as variables."""
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise _invalid(where, "secrets", value, 'a list of secret names, e.g. secrets=["twitter"]')
    names: list[str] = []
    for name in value:
        if not isinstance(name, str) or not re.match(wire.SECRET_NAME_PATTERN, name):
            raise InvalidRequestError(
                f"{where}: secret name {name!r} is not valid; {wire.SECRET_NAME_RULE}",
                details={"argument": "secrets", "value": repr(name)},
            )
        if name not in names:
            names.append(name)
    if len(names) > wire.MAX_SECRETS_PER_FUNCTION:
        raise _invalid(
            where, "secrets", value, f"at most {wire.MAX_SECRETS_PER_FUNCTION} secret names"
        )
    return names


def parse_cpu(value: Any, *, where: str) -> float:
    """Number of vCPUs: a positive int or float (``0.25`` shares a core), at most 192."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _invalid(where, "cpu", value, "a number of vCPUs, e.g. cpu=4 or cpu=0.5")
    high = _upper_limit("cpu")
    if not (value > 0 and math.isfinite(value)) or value > high:
        raise _invalid(where, "cpu", value, f"more than 0 and at most {high:g}, e.g. cpu=2")
    return float(value)


def parse_memory(value: Any, *, where: str) -> int | None:
    """Memory in MiB: ``None`` (sized from cpu), an int of MiB, or a string like ``"32GiB"``."""
    if value is None:
        return None
    fix = 'an int of MiB or a string with a unit, e.g. memory=2048 or memory="32GiB"'
    if isinstance(value, bool):
        raise _invalid(where, "memory", value, fix)
    if isinstance(value, int):
        if value <= 0:
            raise _invalid(where, "memory", value, "more than 0 MiB, e.g. memory=2048")
        return value
    if not isinstance(value, str):
        raise _invalid(where, "memory", value, fix)
    match = _MEMORY_RE.match(value)
    unit = match and _MIB_PER_UNIT.get(match.group(2).lower())
    if not match or unit is None:
        raise _invalid(
            where, "memory", value, 'a size with a unit, e.g. "512MiB", "1.5GiB" or "32GiB"'
        )
    mib = math.ceil(float(match.group(1)) * unit)
    if mib <= 0:
        raise _invalid(where, "memory", value, 'more than 0, e.g. memory="1GiB"')
    return mib


def parse_gpu(value: Any, *, where: str) -> tuple[str | None, int]:
    """``None``, ``"T4"`` (one GPU) or ``"A10G:4"``; the type is case-insensitive.

    Returns:
        ``(canonical type, count)``, or ``(None, 0)`` for no GPU.
    """
    if value is None:
        return None, 0
    known = ", ".join(KNOWN_GPUS)
    match = _GPU_RE.match(value) if isinstance(value, str) else None
    if not match:
        raise _invalid(
            where, "gpu", value, f'"TYPE" or "TYPE:COUNT", e.g. gpu="A10G:1"; types: {known}'
        )
    gpu_type = match.group(1).upper()
    if gpu_type not in KNOWN_GPUS:
        raise _invalid(where, "gpu", value, f"one of the known GPU types: {known}")
    count = int(match.group(2)) if match.group(2) is not None else 1
    if not 1 <= count <= MAX_GPUS_PER_FUNCTION:
        raise _invalid(
            where,
            "gpu",
            value,
            f'a count from 1 to {MAX_GPUS_PER_FUNCTION}, e.g. gpu="{gpu_type}:2"',
        )
    return gpu_type, count


def parse_seconds(
    value: Any, *, arg: str, where: str, example: str, allow_zero: bool = False
) -> float:
    """A duration as a number of seconds or a ``timedelta``; positive (or zero if allowed)."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise _invalid(where, arg, value, f"seconds or a timedelta, e.g. {example}")
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        bound = "at least 0" if allow_zero else "more than 0"
        raise _invalid(where, arg, value, f"{bound} seconds, e.g. {example}")
    return seconds


def _parse_int(value: Any, *, arg: str, where: str, low: int, high: int, example: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(where, arg, value, f"a whole number, e.g. {example}")
    if not low <= value <= high:
        raise _invalid(where, arg, value, f"from {low} to {high}, e.g. {example}")
    return value


def _upper_limit(field: str) -> float:
    for item in _FIELD_LIMITS[field].metadata:
        high = getattr(item, "le", None)
        if high is not None:
            return float(high)
    return math.inf


def _invalid(where: str, arg: str, value: Any, expected: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"{where}: {arg}={value!r} is not valid; {arg} must be {expected}",
        details={"argument": arg, "value": repr(value)},
    )
