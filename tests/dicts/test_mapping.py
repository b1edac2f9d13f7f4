"""The dict behaves like a Python dict, against DynamoDB and S3 on the emulator server."""

from __future__ import annotations

import pickle
import threading

import pytest

import multinode as mn
from multinode import _dict_codec
from tests.dicts.conftest import DictPlane


def test_get_dict_makes_no_network_call(monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing listens here: any request would fail with ControlPlaneUnreachableError.
    monkeypatch.setenv("MN_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("MN_APP", raising=False)
    d = mn.get_dict(name="tweet_summaries")
    assert d.name == "tweet_summaries"
    assert "tweet_summaries" in repr(d)


@pytest.mark.parametrize("name", ["", "a b", "x/y", "é", "a" * 101, None, 5])
def test_bad_names_are_refused_with_the_rule(name: object) -> None:
    with pytest.raises(mn.InvalidRequestError, match="1 to 100 letters, digits"):
        mn.get_dict(name)  # type: ignore[arg-type]


def test_unknown_app_says_how_to_name_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MN_APP", raising=False)
    with pytest.raises(mn.InvalidRequestError, match="app='my-app'"):
        mn.get_dict("counts")["k"]


def test_mutable_mapping_contract(as_app, fresh_name: str) -> None:
    d = mn.get_dict(fresh_name)
    assert len(d) == 0 and list(d) == [] and "a" not in d
    with pytest.raises(KeyError):
        d["a"]
    d["a"] = {"text": "hello"}
    d["b"] = 2
    assert d["a"] == {"text": "hello"} and d["b"] == 2
    assert "a" in d and len(d) == 2
    assert set(d) == {"a", "b"} and set(d.keys()) == {"a", "b"}
    assert sorted(d.values(), key=repr) == sorted([{"text": "hello"}, 2], key=repr)
    assert dict(d.items()) == {"a": {"text": "hello"}, "b": 2}
    assert d.get("a") == {"text": "hello"} and d.get("zz") is None and d.get("zz", 7) == 7
    d["a"] = "replaced"
    assert d["a"] == "replaced" and len(d) == 2
    assert d.pop("a") == "replaced" and "a" not in d
    assert d.pop("a", "gone") == "gone"
    with pytest.raises(KeyError):
        d.pop("a")
    assert d.setdefault("c", [1]) == [1] and d.setdefault("c", [2]) == [1]
    d.update({"x": 1}, y=2)
    d.update([("z", 3)])
    assert {k: d[k] for k in ("x", "y", "z")} == {"x": 1, "y": 2, "z": 3}
    del d["x"]
    with pytest.raises(KeyError):
        del d["x"]
    assert d == {"b": 2, "c": [1], "y": 2, "z": 3}
    d.clear()
    assert len(d) == 0 and list(d.items()) == []


def test_two_handles_see_the_same_data(as_app, fresh_name: str) -> None:
    mn.get_dict(fresh_name)["k"] = "v"
    assert mn.get_dict(fresh_name)["k"] == "v"
    assert mn.get_dict(fresh_name + "-other").get("k") is None


def test_keys_are_kept_apart_by_type(as_app, fresh_name: str) -> None:
    d = mn.get_dict(fresh_name)
    d[1] = "int"
    d["1"] = "str"
    d[b"1"] = "bytes"
    assert (d[1], d["1"], d[b"1"]) == ("int", "str", "bytes")
    assert len(d) == 3
    keys = list(d)
    assert sorted((type(k).__name__, k) for k in keys) == [
        ("bytes", b"1"),
        ("int", 1),
        ("str", "1"),
    ]
    d[-(10**30)] = "big negative"
    d["é/#:x"] = "unicode"
    d[b"\x00\xff"] = "binary"
    assert d[-(10**30)] == "big negative" and d["é/#:x"] == "unicode"
    assert d[b"\x00\xff"] == "binary"


@pytest.mark.parametrize("key", [1.5, None, (1, 2), True, ["a"]])
def test_unsupported_key_types_say_which_work(as_app, fresh_name: str, key: object) -> None:
    d = mn.get_dict(fresh_name)
    with pytest.raises(TypeError, match="str, int or bytes"):
        d[key] = 1


def test_values_round_trip_with_their_types(as_app, fresh_name: str) -> None:
    d = mn.get_dict(fresh_name)
    values = {
        "int": 42,
        "huge int": 10**50,
        "bool": True,
        "float": 1.5,
        "none": None,
        "bytes": b"\x00raw",
        "nested": {"a": [1, (2, 3)], "b": {4}},
        "lambda": lambda x: x + 1,
    }
    d.update(values)
    got = d.get_many(values)
    assert got["bool"] is True and got["none"] is None and got["huge int"] == 10**50
    assert got["lambda"](1) == 2
    assert {k: v for k, v in got.items() if k != "lambda"} == {
        k: v for k, v in values.items() if k != "lambda"
    }
    assert d["int"] == 42 and type(d["int"] + 0) is int


def test_unpicklable_value_names_its_type_and_writes_nothing(as_app, fresh_name: str) -> None:
    d = mn.get_dict(fresh_name)
    with pytest.raises(mn.SerializationError, match="lock"):
        d["k"] = threading.Lock()
    with pytest.raises(mn.SerializationError, match="lock"):
        d.update({"a": 1, "b": threading.Lock()})
    assert len(d) == 0


def test_large_values_go_through_s3_and_are_cleaned_up(
    as_app, fresh_name: str, dict_plane: DictPlane
) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=dict_plane.aws_endpoint)
    bucket = dict_plane.settings.dict_bucket

    def objects() -> list[str]:
        prefix = f"alpha/{fresh_name}/"
        listing = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
        return [o["Key"] for o in listing.get("Contents", [])]

    d = mn.get_dict(fresh_name)
    big = b"x" * (_dict_codec.MAX_INLINE_BYTES + 1)
    d["big"] = big
    assert d["big"] == big and len(objects()) == 1
    d["big"] = bytes(reversed(big[:10])) + big  # overwritten by another large value
    assert d["big"][:10] == big[:10] and len(objects()) == 1
    d["big"] = "small now"
    assert d["big"] == "small now" and objects() == []
    d.update({"b1": big, "b2": big + b"2"})
    assert d.get_many(["b1", "b2"]) == {"b1": big, "b2": big + b"2"}
    assert len(objects()) == 2
    d.update({"b1": 1})  # a batch overwrite still finds the replaced S3 value
    assert len(objects()) == 1
    assert d.pop("b2") == big + b"2" and objects() == []
    d["b3"] = big
    assert d.put_if_absent("b3", big) is False and len(objects()) == 1
    assert d.compare_and_set("b3", big, "swapped") and objects() == []
    d["b4"] = big
    d.clear()
    assert objects() == [] and len(d) == 0


def test_handles_pickle_by_name_and_app(as_app, fresh_name: str) -> None:
    d = mn.get_dict(fresh_name, app="alpha")
    d["k"] = 1
    copy = pickle.loads(pickle.dumps(d))
    assert copy.name == fresh_name and copy.app == "alpha" and copy["k"] == 1
