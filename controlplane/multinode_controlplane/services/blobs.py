"""Content-addressed blobs: functions (pickled, or import references), source files and
manifests. Opaque bytes; never unpickled here."""

from __future__ import annotations

import hashlib
import re

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from multinode.errors import InvalidRequestError, NotFoundError
from multinode_controlplane import models as m
from multinode_controlplane.services.context import Context

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def put_blob(ctx: Context, sha256: str, data: bytes) -> bool:
    """Store ``data`` under its sha256. Returns True when it was new. Idempotent.

    Raises:
        InvalidRequestError: ``sha256`` is malformed or is not the hash of ``data``.
    """
    _check_hash(sha256)
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise InvalidRequestError(
            "the blob's content does not match its name", details={"name": sha256, "sha256": actual}
        )
    insert = postgresql.insert if ctx.db.dialect == "postgresql" else sqlite.insert
    stmt = (
        insert(m.blobs)
        .values(sha256=sha256, data=data, size=len(data), created_at=ctx.clock())
        .on_conflict_do_nothing(index_elements=["sha256"])
    )
    with ctx.db.write() as session:
        return session.execute(stmt).rowcount == 1


def has_blob(ctx: Context, sha256: str) -> bool:
    _check_hash(sha256)
    with ctx.db.read() as session:
        return (
            session.execute(select(m.blobs.c.size).where(m.blobs.c.sha256 == sha256)).first()
            is not None
        )


def missing(ctx: Context, hashes: list[str]) -> list[str]:
    """The hashes among ``hashes`` that are not stored, in the order given, once each."""
    for sha256 in hashes:
        _check_hash(sha256)
    wanted = list(dict.fromkeys(hashes))
    with ctx.db.read() as session:
        present = set(
            session.execute(select(m.blobs.c.sha256).where(m.blobs.c.sha256.in_(wanted))).scalars()
        )
    return [h for h in wanted if h not in present]


def get_blob(ctx: Context, sha256: str) -> bytes:
    """The blob's bytes. Raises :class:`NotFoundError` when absent."""
    _check_hash(sha256)
    with ctx.db.read() as session:
        data = session.execute(select(m.blobs.c.data).where(m.blobs.c.sha256 == sha256)).scalar()
    if data is None:
        raise NotFoundError(f"no blob {sha256}; upload it first", details={"sha256": sha256})
    return bytes(data)


def _check_hash(sha256: str) -> None:
    if not _SHA256.match(sha256):
        raise InvalidRequestError(
            "a blob is named by the lowercase hex sha256 of its content",
            details={"name": sha256},
        )
