"""``mn.get_dict``: a dict shared by every process of an app, stored in DynamoDB.

    d = mn.get_dict(name="tweet_summaries")     # no network call yet
    d["latest"] = summary
    d.increment("hits")                          # one atomic UpdateItem ADD

Processes talk to DynamoDB (and S3, for values too large for an item) directly, with
short-lived credentials the control plane vends for the app (``_dict_store``); the item
layout is in ``_dict_codec``; the user-facing contract is ``docs/dicts.md``.

Which app a handle belongs to, in order: ``app=`` given to :func:`get_dict`; else
``MN_APP``, which the agent sets inside every VM. It is resolved at the first operation,
so creating a handle at import time never fails and never touches the network.
"""

from __future__ import annotations

import uuid
from collections.abc import ItemsView, Iterable, Iterator, Mapping, MutableMapping, ValuesView
from typing import Any

from multinode import _dict_codec as codec
from multinode import _dict_registry
from multinode._dict_registry import list_dicts
from multinode._dict_store import DictStore, error_code, store_for
from multinode.errors import InvalidRequestError

__all__ = ["Dict", "get_dict", "list_dicts"]
_MISSING: Any = object()
# How often a read retries when the S3 object it points to was replaced meanwhile.
_POINTER_RACE_RETRIES = 5


def get_dict(name: str, *, app: str | None = None) -> Dict:
    """A handle on the dict ``name`` of an app; makes no network call.

    Args:
        name: 1 to 100 letters, digits, ``_``, ``.`` or ``-``.
        app: the app owning the dict; default ``MN_APP`` (set inside the app's VMs).
            Scripts outside the app pass it explicitly.

    Raises:
        InvalidRequestError: ``name`` is not a valid dict name.
    """
    return Dict(name, app=app)


class Dict(MutableMapping[Any, Any]):
    """A persistent mapping shared by every process of one app.

    Keys are ``str``, ``int`` or ``bytes``, kept apart by type (``1``, ``"1"`` and
    ``b"1"`` are three keys). Values are plain ints (stored as DynamoDB Numbers) or any
    picklable object. Every read is strongly consistent. Single-key operations are atomic;
    ``increment``, ``put_if_absent``, ``compare_and_set`` and ``d[k] += n`` are safe under
    concurrent writers. Pickling a handle keeps its name and explicit app only.
    """

    def __init__(self, name: str, *, app: str | None = None) -> None:
        self.name = codec.validate_name(name)
        self._app = app
        self._store: DictStore | None = None

    def __repr__(self) -> str:
        return f"<mn.Dict {self.name!r} app={self._app or '(MN_APP)'}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Dict, (self.name,), {"_app": self._app, "_store": None})

    @property
    def app(self) -> str:
        """The app owning this dict.

        Raises:
            InvalidRequestError: none was given and ``MN_APP`` is not set.
        """
        if self._app:
            return self._app
        from multinode.config import load_settings

        app = load_settings().app
        if not app:
            raise InvalidRequestError(
                f"mn.get_dict({self.name!r}) does not know which app it belongs to: inside "
                "the app's functions MN_APP says so; elsewhere pass it, e.g. "
                f"mn.get_dict({self.name!r}, app='my-app'), or set MN_APP",
                details={"dict": self.name},
            )
        return app

    # ---------------------------------------------------------------- mapping protocol

    def __getitem__(self, key: Any) -> Any:
        item = self._get_item(codec.encode_key(key))
        if item is None:
            raise KeyError(key)
        value = self._decode(item, key)
        if type(value) is int:
            return codec.counter(value, self._source(key))
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        sk = codec.encode_key(key)
        if (
            isinstance(value, codec.CounterInt)
            and value._delta is not None
            and value._source == self._source(key)
        ):
            # The last step of `d[k] += n`: apply n atomically, once.
            delta, value._delta = value._delta, None
            self._add(sk, delta)
            return
        self._register()
        attrs, object_key = self._encode(key, value)
        try:
            old = self._put_replacing(sk, attrs)
        except BaseException:
            self._discard_objects([object_key])
            raise
        self._discard_objects([codec.pointer(old)])

    def __delitem__(self, key: Any) -> None:
        if self._delete(codec.encode_key(key)) is None:
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return self._get_item(codec.encode_key(key), projection="sk") is not None

    def __iter__(self) -> Iterator[Any]:
        for item in self._query(projection="sk"):
            yield codec.decode_key(item["sk"]["S"])

    def __len__(self) -> int:
        return sum(page["Count"] for page in self._store_().query(self._pk, count=True))

    def values(self) -> ValuesView[Any]:  # type: ignore[override]
        """The values, read with one paginated query (not one request per key)."""
        return _Values(self)

    def items(self) -> ItemsView[Any, Any]:  # type: ignore[override]
        """The (key, value) pairs, read with one paginated query."""
        return _Items(self)

    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        """Remove ``key`` and return its value, atomically (one DeleteItem).

        Raises:
            KeyError: ``key`` is absent and no ``default`` was given.
        """
        old = self._delete(codec.encode_key(key), keep_payload=True)
        if old is None:
            if default is _MISSING:
                raise KeyError(key)
            return default
        return old

    def setdefault(self, key: Any, default: Any = None) -> Any:
        """``d[key]`` if present, else store ``default`` (atomically: one writer wins)."""
        while True:
            try:
                return self[key]
            except KeyError:
                if self.put_if_absent(key, default):
                    return default

    def update(self, other: Any = (), /, **kwargs: Any) -> None:  # type: ignore[override]
        """Store many pairs with BatchWriteItem (25 per request, requests in parallel).

        Every value is encoded before anything is sent, so an unpicklable one raises
        SerializationError and nothing is written. Not atomic as a whole: each key is.
        """
        pairs = other.items() if isinstance(other, Mapping) else other
        encoded: dict[str, dict[str, Any]] = {}
        new_objects: list[str] = []
        large: list[tuple[str, bytes]] = []
        for key, value in [*pairs, *kwargs.items()]:
            sk = codec.encode_key(key)
            enc = codec.encode_value(value, what=self._what(key))
            if enc.large is not None:
                object_key = self._object_key()
                large.append((object_key, enc.large))
                encoded[sk] = codec.pointer_attrs(object_key)
            else:
                encoded[sk] = enc.attrs or {}
        if not encoded:
            return
        store = self._store_()
        self._register(large=bool(large))
        old_objects: list[str | None] = []
        try:
            if large:
                store.map(lambda pair: store.put_object(*pair), large)
                new_objects = [object_key for object_key, _ in large]
            if self._has_large_values():
                # BatchWriteItem returns no old items: find the S3 values being replaced.
                old = store.batch_get([self._key(sk) for sk in encoded], projection="sk, o")
                old_objects = [codec.pointer(item) for item in old]
            store.batch_write(
                [{"PutRequest": {"Item": {**self._key(sk), **a}}} for sk, a in encoded.items()]
            )
        except BaseException:
            self._discard_objects(new_objects)
            raise
        self._discard_objects(old_objects)

    def clear(self) -> None:
        """Delete every key (queried, then deleted 25 per request in parallel)."""
        items = list(self._query(projection="sk, o"))
        self._store_().batch_write(
            [{"DeleteRequest": {"Key": self._key(item["sk"]["S"])}} for item in items]
        )
        self._discard_objects([codec.pointer(item) for item in items])

    # ---------------------------------------------------------------- atomic operations

    def increment(self, key: Any, by: int = 1) -> int:
        """Add ``by`` to the integer at ``key`` (absent counts as 0); return the new value.

        One UpdateItem ``ADD``: concurrent increments never lose an update.

        Raises:
            TypeError: ``by`` is not an int, or ``key`` holds a value that is not an int.
        """
        if type(by) is not int:
            raise TypeError(f"increment takes an int, not {type(by).__name__}")
        return self._add(codec.encode_key(key), by)

    def put_if_absent(self, key: Any, value: Any) -> bool:
        """Store ``value`` only if ``key`` is absent; return whether this call wrote it.

        Among concurrent callers exactly one gets True.
        """
        from botocore.exceptions import ClientError

        sk = codec.encode_key(key)
        self._register()
        attrs, object_key = self._encode(key, value)
        try:
            self._store_().call(
                "dynamodb",
                "put_item",
                TableName=self._table,
                Item={**self._key(sk), **attrs},
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as exc:
            self._discard_objects([object_key])
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        except BaseException:
            self._discard_objects([object_key])
            raise
        return True

    def compare_and_set(self, key: Any, expected: Any, new: Any) -> bool:
        """Replace the value at ``key`` with ``new`` if it equals ``expected``.

        The stored value is read, compared with ``==``, and replaced by a write that is
        conditional on the exact stored representation still being there. If another
        writer got in between, the fresh value is compared again; returns False as soon
        as the value present does not equal ``expected`` (or the key is absent).
        """
        from botocore.exceptions import ClientError

        sk = codec.encode_key(key)
        attrs, object_key = self._encode(key, new)
        try:
            while True:
                item = self._get_item(sk)
                if item is None or self._decode(item, key) != expected:
                    self._discard_objects([object_key])
                    return False
                condition, values = codec.same_value_condition(item)
                try:
                    self._store_().call(
                        "dynamodb",
                        "put_item",
                        TableName=self._table,
                        Item={**self._key(sk), **attrs},
                        ConditionExpression=condition,
                        ExpressionAttributeValues=values,
                    )
                except ClientError as exc:
                    if error_code(exc) == "ConditionalCheckFailedException":
                        continue  # changed since read: decide again on the fresh value
                    raise
                self._discard_objects([codec.pointer(item)])
                return True
        except BaseException:
            self._discard_objects([object_key])
            raise

    def get_many(self, keys: Iterable[Any]) -> dict[Any, Any]:
        """The values of ``keys`` that are present, with BatchGetItem (100 per request,
        requests in parallel, strongly consistent). Absent keys are left out."""
        wanted = {codec.encode_key(key): key for key in keys}
        store = self._store_()
        items = store.batch_get([self._key(sk) for sk in wanted])
        found: dict[Any, Any] = {}
        pointed = [item for item in items if "o" in item]
        for item in items:
            if "o" not in item:
                key = wanted[item["sk"]["S"]]
                found[key] = codec.decode_inline(item, what=self._what(key))
        for key, value in store.map(self._load_pointed, pointed):
            if value is not _MISSING:
                found[key] = value
        return found

    # ---------------------------------------------------------------- internals

    @property
    def _pk(self) -> str:
        return self._store_().credentials.key_prefix + self.name

    @property
    def _table(self) -> str:
        return self._store_().credentials.table

    def _store_(self) -> DictStore:
        if self._store is None:
            self._store = store_for(self.app)
        return self._store

    def _key(self, sk: str) -> dict[str, Any]:
        return {"pk": {"S": self._pk}, "sk": {"S": sk}}

    def _source(self, key: Any) -> tuple[Any, ...]:
        return (id(self._store_()), self.name, codec.encode_key(key))

    def _what(self, key: Any) -> str:
        return f"value of key {key!r:.60} in dict {self.name!r}"

    def _object_key(self) -> str:
        return f"{self._store_().credentials.object_prefix}{self.name}/{uuid.uuid4().hex}"

    def _get_item(self, sk: str, *, projection: str | None = None) -> dict[str, Any] | None:
        kwargs: dict[str, Any] = {"ProjectionExpression": projection} if projection else {}
        response = self._store_().call(
            "dynamodb",
            "get_item",
            TableName=self._table,
            Key=self._key(sk),
            ConsistentRead=True,
            **kwargs,
        )
        return response.get("Item")

    def _query(self, *, projection: str | None = None) -> Iterator[dict[str, Any]]:
        return self._store_().query(self._pk, projection=projection)

    def _decode(self, item: dict[str, Any], key: Any) -> Any:
        """The item's value, following an S3 pointer; KeyError if it vanished meanwhile."""
        for _ in range(_POINTER_RACE_RETRIES):
            if "o" not in item:
                return codec.decode_inline(item, what=self._what(key))
            data = self._store_().get_object(item["o"]["S"])
            if data is not None:
                return codec.decode_payload(item, data, what=self._what(key))
            # Overwritten or deleted between our two reads: read the item again.
            fresh = self._get_item(codec.encode_key(key))
            if fresh is None:
                raise KeyError(key)
            item = fresh
        raise KeyError(key)

    def _load_pointed(self, item: dict[str, Any]) -> tuple[Any, Any]:
        key = codec.decode_key(item["sk"]["S"])
        try:
            return key, self._decode(item, key)
        except KeyError:
            return key, _MISSING

    def _encode(self, key: Any, value: Any) -> tuple[dict[str, Any], str | None]:
        """Item attributes for ``value``; a large value is uploaded to S3 first."""
        enc = codec.encode_value(value, what=self._what(key))
        if enc.large is None:
            return enc.attrs or {}, None
        self._register(large=True)
        object_key = self._object_key()
        self._store_().put_object(object_key, enc.large)
        return codec.pointer_attrs(object_key), object_key

    def _put_replacing(self, sk: str, attrs: dict[str, Any]) -> dict[str, Any] | None:
        """Put the item; return the replaced item when it pointed to S3 (else None).

        The common case is one PutItem that fails only if the old item points to S3, so
        no old payload travels back; only then is it put again returning the old item,
        whose S3 object the caller deletes.
        """
        from botocore.exceptions import ClientError

        item = {**self._key(sk), **attrs}
        store = self._store_()
        try:
            store.call(
                "dynamodb",
                "put_item",
                TableName=self._table,
                Item=item,
                ConditionExpression="attribute_not_exists(o)",
            )
            return None
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
        response = store.call(
            "dynamodb", "put_item", TableName=self._table, Item=item, ReturnValues="ALL_OLD"
        )
        return response.get("Attributes")

    def _add(self, sk: str, delta: int) -> int:
        from botocore.exceptions import ClientError

        self._register()
        try:
            response = self._store_().call(
                "dynamodb",
                "update_item",
                TableName=self._table,
                Key=self._key(sk),
                UpdateExpression="ADD v :d",
                # Only a missing key or a Number may be added to; never a pickled value.
                ConditionExpression="attribute_not_exists(pk) OR attribute_type(v, :n)",
                ExpressionAttributeValues={":d": {"N": str(delta)}, ":n": {"S": "N"}},
                ReturnValues="UPDATED_NEW",
            )
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                raise TypeError(
                    f"cannot increment key {codec.decode_key(sk)!r:.60} of dict {self.name!r}: "
                    "it holds a value that is not an int"
                ) from None
            raise
        return int(response["Attributes"]["v"]["N"])

    def _delete(self, sk: str, *, keep_payload: bool = False) -> Any:
        """Delete one key; its old value (None when absent), its S3 object cleaned up."""
        response = self._store_().call(
            "dynamodb",
            "delete_item",
            TableName=self._table,
            Key=self._key(sk),
            ReturnValues="ALL_OLD",
        )
        old = response.get("Attributes")
        if old is None:
            return None
        key = codec.decode_key(sk)
        value: Any = True
        if keep_payload:
            if "o" in old:
                data = self._store_().get_object(old["o"]["S"])
                value = (
                    None if data is None else codec.decode_payload(old, data, what=self._what(key))
                )
            else:
                value = codec.decode_inline(old, what=self._what(key))
        self._discard_objects([codec.pointer(old)])
        return value

    def _discard_objects(self, keys: Iterable[str | None]) -> None:
        present = [key for key in keys if key]
        if present:
            self._store_().delete_objects(present)

    def _register(self, *, large: bool = False) -> None:
        _dict_registry.register(self._store_(), self.name, large=large)

    def _has_large_values(self) -> bool:
        return _dict_registry.has_large_values(self._store_(), self.name)


class _Values(ValuesView[Any]):
    _mapping: Dict

    def __iter__(self) -> Iterator[Any]:
        for _key, value in _Items(self._mapping):
            yield value


class _Items(ItemsView[Any, Any]):
    _mapping: Dict

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        d = self._mapping
        for item in d._query():
            key = codec.decode_key(item["sk"]["S"])
            try:
                yield key, d._decode(item, key)
            except KeyError:
                continue  # deleted while we iterated
