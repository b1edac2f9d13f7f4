"""Concurrent writers in separate processes, each with its own vended credentials."""

from __future__ import annotations

import multiprocessing

import pytest

import multinode as mn
from tests.dicts import racers

PROCESSES = 10


def _race(target, args_for, *, expect: int) -> list:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=target, args=(*args_for(i), barrier, results)) for i in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    assert [proc.exitcode for proc in procs] == [0] * PROCESSES
    return [results.get(timeout=10) for _ in range(expect)]


@pytest.mark.parametrize("body", [racers.increment, racers.augmented], ids=["increment", "+="])
def test_ten_processes_incrementing_100_times_reach_exactly_1000(
    as_app, fresh_name: str, body
) -> None:
    mn.get_dict(fresh_name)["counter"] = 0
    _race(body, lambda _i: (fresh_name, 100), expect=PROCESSES)
    assert mn.get_dict(fresh_name)["counter"] == 1000


def test_put_if_absent_has_exactly_one_winner_among_ten(as_app, fresh_name: str) -> None:
    outcomes = _race(racers.put_if_absent, lambda i: (fresh_name, i), expect=PROCESSES)
    winners = [me for me, won in outcomes if won]
    assert len(winners) == 1
    assert mn.get_dict(fresh_name)["winner"] == winners[0]
