"""The registry of an app's dicts: one item per dict in the partition ``<app>#``.

It lets ``mn dict ls`` and app deletion find every dict without a table scan, and records
whether a dict ever held a value in S3 (``Dict.update`` then looks for replaced ones).
Each process writes a dict's entry once, before its first write to the dict.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from multinode._dict_codec import REGISTRY_TAG
from multinode._dict_store import DictStore, store_for

_lock = threading.Lock()
# (id of the store, dict name, "" or "large"): entries this process has written.
_written: set[tuple[int, str, str]] = set()


def register(store: DictStore, name: str, *, large: bool = False) -> None:
    """Record dict ``name`` (and, with ``large``, that it holds S3 values); once per process."""
    marker = (id(store), name, "large" if large else "")
    if marker in _written:
        return
    expression = "SET created = if_not_exists(created, :now)"
    values: dict[str, Any] = {":now": {"N": str(int(time.time()))}}
    if large:
        expression += ", large_values = :t"
        values[":t"] = {"BOOL": True}
    store.call(
        "dynamodb",
        "update_item",
        TableName=store.credentials.table,
        Key=_key(store, name),
        UpdateExpression=expression,
        ExpressionAttributeValues=values,
    )
    with _lock:
        _written.add(marker)
        if large:
            _written.add((id(store), name, ""))


def has_large_values(store: DictStore, name: str) -> bool:
    """Whether dict ``name`` ever held a value in S3 (remembered once true)."""
    if (id(store), name, "large") in _written:
        return True
    response = store.call(
        "dynamodb",
        "get_item",
        TableName=store.credentials.table,
        Key=_key(store, name),
        ConsistentRead=True,
        ProjectionExpression="large_values",
    )
    large = bool(response.get("Item", {}).get("large_values", {}).get("BOOL"))
    if large:
        with _lock:
            _written.add((id(store), name, "large"))
    return large


def list_dicts(app: str) -> list[str]:
    """Names of the dicts ``app`` has written to, sorted."""
    store = store_for(app)
    items = store.query(store.credentials.key_prefix, projection="sk")
    return sorted(item["sk"]["S"][len(REGISTRY_TAG) :] for item in items)


def _key(store: DictStore, name: str) -> dict[str, Any]:
    return {"pk": {"S": store.credentials.key_prefix}, "sk": {"S": REGISTRY_TAG + name}}
