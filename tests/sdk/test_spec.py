"""Decorator options become a FunctionSpec, or fail at decoration with the fix in the message."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

import multinode as mn
from multinode._spec import build_spec

GOOD: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({}, {"cpu": 1.0, "memory_mib": None, "gpu_type": None, "gpu_count": 0, "timeout_s": 300.0}),
    ({"cpu": 16}, {"cpu": 16.0}),
    ({"cpu": 0.1}, {"cpu": 0.1}),
    ({"memory": 2048}, {"memory_mib": 2048}),
    ({"memory": "512MiB"}, {"memory_mib": 512}),
    ({"memory": "32GiB"}, {"memory_mib": 32 * 1024}),
    ({"memory": "1.5GiB"}, {"memory_mib": 1536}),
    ({"memory": "2GB"}, {"memory_mib": 2048}),  # GB is read as GiB (see _spec docstring)
    ({"memory": "1 gib"}, {"memory_mib": 1024}),
    ({"gpu": "T4"}, {"gpu_type": "T4", "gpu_count": 1}),
    ({"gpu": "A10G:1"}, {"gpu_type": "A10G", "gpu_count": 1}),
    ({"gpu": "a10g:4"}, {"gpu_type": "A10G", "gpu_count": 4}),
    ({"gpu": "h100:8"}, {"gpu_type": "H100", "gpu_count": 8}),
    ({"timeout": 10}, {"timeout_s": 10.0}),
    ({"timeout": 0.5}, {"timeout_s": 0.5}),
    ({"timeout": timedelta(minutes=2)}, {"timeout_s": 120.0}),
    ({"retries": 3}, {"retries": 3}),
    ({"max_workers": 1}, {"max_workers": 1}),
    ({"cooldown": timedelta(seconds=5)}, {"cooldown_s": 5.0}),
    ({"cooldown": 0}, {"cooldown_s": 0.0}),
]

BAD: list[tuple[dict[str, Any], list[str]]] = [
    ({"cpu": 0}, ["cpu=0", "more than 0", "cpu=2"]),
    ({"cpu": -1}, ["cpu=-1", "more than 0"]),
    ({"cpu": True}, ["cpu=True", "cpu=4"]),
    ({"cpu": "4"}, ["cpu='4'", "cpu=4"]),
    ({"cpu": 1000}, ["cpu=1000", "at most 192"]),
    ({"memory": "lots"}, ["memory='lots'", '"32GiB"']),
    ({"memory": "12 parsecs"}, ["memory='12 parsecs'", '"512MiB"']),
    ({"memory": 0}, ["memory=0", "more than 0"]),
    ({"memory": 1.5}, ["memory=1.5", 'memory="32GiB"']),
    ({"memory": False}, ["memory=False"]),
    ({"gpu": "RTX9090"}, ["gpu='RTX9090'", "T4, A10G, L4, V100, A100, H100"]),
    ({"gpu": "A10G:0"}, ["gpu='A10G:0'", "from 1 to 8", 'gpu="A10G:2"']),
    ({"gpu": "A10G:x"}, ["gpu='A10G:x'", 'gpu="A10G:1"']),
    ({"gpu": 1}, ["gpu=1", '"TYPE:COUNT"']),
    ({"timeout": 0}, ["timeout=0", "more than 0", "timeout=600"]),
    ({"timeout": "5m"}, ["timeout='5m'", "timedelta", "timeout=600"]),
    ({"timeout": timedelta(seconds=-1)}, ["more than 0"]),
    ({"retries": -1}, ["retries=-1", "from 0 to 20", "retries=3"]),
    ({"retries": 1.5}, ["retries=1.5", "whole number"]),
    ({"max_workers": 0}, ["max_workers=0", "from 1 to 1000", "max_workers=50"]),
    ({"cooldown": -5}, ["cooldown=-5", "at least 0", "cooldown=120"]),
]


@pytest.mark.parametrize(("options", "expected"), GOOD)
def test_valid_options_become_the_spec(options: dict[str, Any], expected: dict[str, Any]) -> None:
    spec = build_spec("crunch", **options)
    for field, value in expected.items():
        wanted = pytest.approx(value) if isinstance(value, float) else value
        assert getattr(spec, field) == wanted, field


@pytest.mark.parametrize(("options", "fragments"), BAD)
def test_invalid_options_fail_at_decoration_with_the_fix(
    options: dict[str, Any], fragments: list[str]
) -> None:
    with pytest.raises(mn.InvalidRequestError) as caught:

        @mn.function(**options)
        def crunch(x: int) -> int:
            return x

    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_message_names_the_function_when_known() -> None:
    with pytest.raises(mn.InvalidRequestError, match=r"on crunch: cpu=0"):
        build_spec("crunch", cpu=0)
