"""Bodies of the processes racing on one dict (importable by spawned children)."""

from __future__ import annotations

from typing import Any


def increment(name: str, times: int, barrier: Any, results: Any) -> None:
    import multinode as mn

    d = mn.get_dict(name)
    d.get("warm-up")  # fetch credentials before the race starts
    barrier.wait(timeout=60)
    for _ in range(times):
        d.increment("counter")
    results.put("done")


def augmented(name: str, times: int, barrier: Any, results: Any) -> None:
    import multinode as mn

    d = mn.get_dict(name)
    d.get("warm-up")
    barrier.wait(timeout=60)
    for _ in range(times):
        d["counter"] += 1
    results.put("done")


def put_if_absent(name: str, me: int, barrier: Any, results: Any) -> None:
    import multinode as mn

    d = mn.get_dict(name)
    d.get("warm-up")
    barrier.wait(timeout=60)
    results.put((me, d.put_if_absent("winner", me)))
