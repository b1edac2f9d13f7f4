"""How a dict's keys, values and names map onto DynamoDB items (``docs/dicts.md``).

One item per key, in one table shared by every app:

- ``pk`` (string): ``<app>#<dict name>``, so IAM's ``dynamodb:LeadingKeys`` condition
  can confine an app's credentials to partition keys starting with ``<app>#``;
- ``sk`` (string): the key, tagged with its type (``s:`` str, ``i:`` int, ``b:`` base64 of
  bytes), so ``1``, ``"1"`` and ``b"1"`` are three keys and each decodes back exactly;
- ``v``: a plain ``int`` as a DynamoDB Number (so increment is one ``ADD``), anything
  else cloudpickled as Binary with ``f`` (the pickle envelope's format);
- ``o``: instead of ``v``, the S3 object key of a value too large for an item.

The registry of an app's dicts lives in the partition ``<app>#`` (no dict name), one item
per dict (``sk`` = ``d:<name>``), written before the dict's first item.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Any

from multinode import _serialization
from multinode.errors import InvalidRequestError

# Version of the pickled-value envelope, stored in ``f`` (stored values outlive a release).
VALUE_FORMAT = 1
# DynamoDB's item limit is 400 KB including attribute names and keys; the margin leaves
# room for a 1 KB sort key and the other attributes.
MAX_INLINE_BYTES = 350_000
# DynamoDB Numbers hold 38 significant digits; larger ints are pickled instead.
_MAX_NUMBER = 10**38
# A sort key is at most 1024 bytes (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/ServiceQuotas.html).
_MAX_SORT_KEY_BYTES = 1024
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
KEY_TYPES = "str, int or bytes"
REGISTRY_TAG = "d:"


class CounterInt(int):
    """An ``int`` read from a dict that remembers where it came from.

    ``d[k] += n`` runs as ``t = d[k]; t = t.__iadd__(n); d[k] = t``. ``__iadd__`` returns a
    pending increment (still an int, of value ``t + n``) and ``Dict.__setitem__`` turns a
    pending increment of the same dict and key into one atomic ``ADD n``. Arithmetic
    other than ``+=``/``-=`` gives plain ints, and pickling gives a plain int.
    """

    _source: tuple[Any, ...] | None = None  # (store id, dict name, sort key)
    _delta: int | None = None  # set on a pending increment, cleared once it is applied

    def __iadd__(self, other: Any) -> Any:
        if type(other) is not int or self._source is None:
            return NotImplemented  # Python falls back to int.__add__: a plain value
        pending = CounterInt(int(self) + other)
        pending._source = self._source
        pending._delta = (self._delta or 0) + other
        return pending

    def __isub__(self, other: Any) -> Any:
        if type(other) is not int:
            return NotImplemented
        return self.__iadd__(-other)

    def __reduce__(self) -> tuple[Any, ...]:
        return (int, (int(self),))

    def __repr__(self) -> str:
        return int.__repr__(self)


def counter(value: int, source: tuple[Any, ...]) -> CounterInt:
    out = CounterInt(value)
    out._source = source
    return out


def validate_name(name: object) -> str:
    """Return ``name`` if it is a valid dict name; raise InvalidRequestError otherwise."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidRequestError(
            f"dict name {name!r} is not valid: use 1 to 100 letters, digits, '_', '.' or '-'",
            details={"name": repr(name), "pattern": _NAME_RE.pattern},
        )
    return name


def encode_key(key: object) -> str:
    """The sort key of ``key``.

    Raises:
        TypeError: ``key`` is not a str, int or bytes (bool is refused: ``True == 1``
            would make two spellings of one key).
        ValueError: the encoded key is over DynamoDB's 1024-byte sort-key limit.
    """
    if type(key) is str or isinstance(key, str):
        sk = "s:" + str(key)
    elif isinstance(key, int) and not isinstance(key, bool):
        sk = "i:" + str(int(key))
    elif isinstance(key, (bytes, bytearray, memoryview)):
        sk = "b:" + base64.b64encode(bytes(key)).decode("ascii")
    else:
        raise TypeError(f"dict keys must be {KEY_TYPES}, not {type(key).__name__} ({key!r:.60})")
    if len(sk.encode("utf-8")) > _MAX_SORT_KEY_BYTES:
        raise ValueError(
            f"dict key is too long: {len(sk.encode('utf-8'))} bytes once encoded, over "
            f"DynamoDB's limit of {_MAX_SORT_KEY_BYTES}; use a shorter key (e.g. a hash)"
        )
    return sk


def decode_key(sk: str) -> str | int | bytes:
    """The key whose sort key is ``sk`` (inverse of :func:`encode_key`)."""
    tag, body = sk[:2], sk[2:]
    if tag == "s:":
        return body
    if tag == "i:":
        return int(body)
    if tag == "b:":
        return base64.b64decode(body)
    raise ValueError(f"unknown sort key tag in {sk!r:.60}")


@dataclass(frozen=True)
class EncodedValue:
    """A value ready to store: item attributes, or a payload bound for S3."""

    attrs: dict[str, Any] | None  # "v" (and "f"): None when the value goes to S3
    large: bytes | None = None  # the pickled payload of a value over MAX_INLINE_BYTES


def encode_value(value: Any, *, what: str) -> EncodedValue:
    """Encode ``value``: plain ints as Numbers, anything else cloudpickled.

    Raises:
        SerializationError: the value cannot be pickled; the message names its type.
    """
    if (type(value) is int or type(value) is CounterInt) and -_MAX_NUMBER < value < _MAX_NUMBER:
        return EncodedValue({"v": {"N": str(int(value))}})
    data = _serialization.dumps(value, what=what)
    if len(data) > MAX_INLINE_BYTES:
        return EncodedValue(None, large=data)
    return EncodedValue(pickled_attrs(data))


def pickled_attrs(data: bytes) -> dict[str, Any]:
    return {"v": {"B": data}, "f": {"N": str(VALUE_FORMAT)}}


def pointer_attrs(object_key: str) -> dict[str, Any]:
    return {"o": {"S": object_key}, "f": {"N": str(VALUE_FORMAT)}}


def is_number(item: dict[str, Any]) -> bool:
    return "N" in item.get("v", {})


def decode_inline(item: dict[str, Any], *, what: str) -> Any:
    """The value of an item stored inline (callers handle ``o`` pointers first)."""
    attr = item["v"]
    if "N" in attr:
        return int(attr["N"])
    _check_format(item, what=what)
    return _serialization.loads(bytes(attr["B"]), what=what)


def decode_payload(item: dict[str, Any], data: bytes, *, what: str) -> Any:
    """The value of an item whose pickled payload was fetched from S3."""
    _check_format(item, what=what)
    return _serialization.loads(data, what=what)


def _check_format(item: dict[str, Any], *, what: str) -> None:
    fmt = int(item.get("f", {}).get("N", VALUE_FORMAT))
    if fmt != VALUE_FORMAT:
        from multinode.errors import SerializationError

        raise SerializationError(
            f"{what} was stored in value format {fmt}, which this SDK does not read "
            f"(it reads {VALUE_FORMAT}); upgrade multinode",
            details={"format": fmt, "supported": [VALUE_FORMAT]},
        )


def pointer(item: dict[str, Any] | None) -> str | None:
    return item["o"]["S"] if item and "o" in item else None


def same_value_condition(item: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A condition that holds while the item still stores exactly what ``item`` shows."""
    if "o" in item:
        return "o = :old", {":old": item["o"]}
    return "v = :old", {":old": item["v"]}
