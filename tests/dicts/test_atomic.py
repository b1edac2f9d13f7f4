"""Atomic operations: increment, put_if_absent, compare_and_set and ``d[k] += n``."""

from __future__ import annotations

import pickle

import pytest

import multinode as mn


def test_increment_returns_the_new_value(as_app, fresh_name: str) -> None:
    d = mn.get_dict(fresh_name)
    assert d.increment("hits") == 1
    assert d.increment("hits", by=10) == 11
    assert d.increment("hits", by=-20) == -9
    assert d["hits"] == -9


def test_increment_refuses_non_ints(as_app, fresh_name: str) -> None:
    d = mn.get_dict(fresh_name)
    d["text"] = "hello"
    with pytest.raises(TypeError, match="not an int"):
        d.increment("text")
    assert d["text"] == "hello"
    with pytest.raises(TypeError, match="takes an int"):
        d.increment("n", by=1.5)  # type: ignore[arg-type]


def test_augmented_assignment_is_one_atomic_add(as_app, fresh_name: str) -> None:
    d = mn.get_dict(fresh_name)
    d["n"] = 5
    stale = d["n"]
    d.increment("n", by=100)  # another writer, between our read and our write
    d["n"] += 1  # an ADD: the other writer's 100 is kept
    assert d["n"] == 106
    d["n"] -= 6
    assert d["n"] == 100
    # A value read earlier and incremented locally is no write at all...
    stale += 1
    assert d["n"] == 100 and stale == 6
    # ...and plain arithmetic gives plain ints that pickle as plain ints.
    assert type(d["n"] + 1) is int
    assert type(pickle.loads(pickle.dumps(d["n"]))) is int


def test_augmented_assignment_on_missing_key_raises_like_a_dict(as_app, fresh_name: str) -> None:
    d = mn.get_dict(fresh_name)
    with pytest.raises(KeyError):
        d["missing"] += 1


def test_put_if_absent_reports_whether_it_wrote(as_app, fresh_name: str) -> None:
    d = mn.get_dict(fresh_name)
    assert d.put_if_absent("k", "first") is True
    assert d.put_if_absent("k", "second") is False
    assert d["k"] == "first"


def test_compare_and_set_swaps_only_on_equal(as_app, fresh_name: str) -> None:
    d = mn.get_dict(fresh_name)
    assert d.compare_and_set("k", "x", "y") is False  # absent
    d["k"] = {"state": "new"}
    assert d.compare_and_set("k", {"state": "other"}, {"state": "done"}) is False
    assert d.compare_and_set("k", {"state": "new"}, {"state": "done"}) is True
    assert d["k"] == {"state": "done"}
    d["n"] = 3
    assert d.compare_and_set("n", 3, 4) is True and d["n"] == 4
