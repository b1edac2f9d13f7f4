"""Named secrets: stored encrypted, listed by key name only, given only to the functions
that name them.

A secret belongs to an owner and holds string values by key. Its values are encrypted as
one JSON document with Fernet (AES-128-CBC and HMAC-SHA256, from ``cryptography``) under
``MN_SERVER_SECRETS_KEY``, or, on the embedded SQLite default, under a key made once beside
the database file. Key names are kept in clear so ``GET /v1/secrets`` never decrypts. No
API answer, log line or error message of the control plane carries a value: the only
reader is :func:`values`, used by :mod:`.function_env` to answer an agent for a function
of its own app that names the secret.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import threading
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import select
from sqlalchemy.orm import Session

from multinode import wire
from multinode.errors import InvalidRequestError, NotFoundError, SecretsUnavailableError
from multinode_controlplane import models as m
from multinode_controlplane.clock import to_datetime
from multinode_controlplane.services.auth import Principal, ensure_owner, require_key
from multinode_controlplane.services.context import Context

_box_lock = threading.Lock()


def set_secret(
    ctx: Context, principal: Principal, name: str, values: dict[str, str]
) -> wire.SecretInfo:
    """Create secret ``name`` or replace all its values.

    Raises:
        InvalidRequestError: a bad name, key or value (the message never repeats a value).
        SecretsUnavailableError: no encryption key is configured.
    """
    require_key(principal)
    check_name(name)
    for key, value in values.items():
        problem = wire.env_problem(key, value)
        if problem:
            # env_problem names keys, never values.
            raise InvalidRequestError(f"secret {name}: {problem}", details={"key": key})
    ciphertext = _box(ctx).encrypt(json.dumps(values, sort_keys=True).encode())
    keys = json.dumps(sorted(values))
    now = ctx.clock()
    with ctx.db.write() as session:
        ensure_owner(session, principal.owner, now)
        row = _row(session, principal.owner, name)
        if row is None:
            row = m.SecretRow(
                owner=principal.owner,
                name=name,
                keys=keys,
                ciphertext=ciphertext,
                created_at=now,
                updated_at=now,
            )
            session.add(row)
        else:
            row.keys, row.ciphertext, row.updated_at = keys, ciphertext, now
        session.flush()
        return _info(row)


def list_secrets(ctx: Context, principal: Principal) -> list[wire.SecretInfo]:
    """The owner's secrets by name, with their key names and never their values."""
    require_key(principal)
    with ctx.db.read() as session:
        rows = session.execute(
            select(m.SecretRow)
            .where(m.SecretRow.owner == principal.owner)
            .order_by(m.SecretRow.name)
        ).scalars()
        return [_info(row) for row in rows]


def delete_secret(ctx: Context, principal: Principal, name: str) -> wire.SecretInfo:
    """Remove secret ``name``. Functions naming it fail their next start, saying so.

    Raises:
        NotFoundError: no such secret.
    """
    require_key(principal)
    check_name(name)
    with ctx.db.write() as session:
        row = _row(session, principal.owner, name)
        if row is None:
            raise _missing(session, principal.owner, name)
        info = _info(row)
        session.delete(row)
        return info


def check_named(session: Session, owner: str, specs: dict[str, wire.FunctionSpec]) -> None:
    """Refuse a deployment whose functions name secrets the owner does not have.

    Raises:
        InvalidRequestError: the first function naming a missing secret, with the command
            that creates it.
    """
    wanted = {name for spec in specs.values() for name in spec.secrets}
    if not wanted:
        return
    have = set(
        session.execute(
            select(m.SecretRow.name).where(
                m.SecretRow.owner == owner, m.SecretRow.name.in_(sorted(wanted))
            )
        ).scalars()
    )
    for function, spec in specs.items():
        missing = [name for name in spec.secrets if name not in have]
        if missing:
            raise InvalidRequestError(
                f"function {function} names secret {missing[0]!r}, which does not exist; "
                f"create it first with `mn secret set {missing[0]} KEY=VALUE` "
                "(`mn secret ls` lists the secrets there are)",
                details={"function": function, "missing_secrets": missing},
            )


def values(ctx: Context, session: Session, owner: str, name: str) -> dict[str, str] | None:
    """The decrypted values of ``owner``'s secret ``name``, or None if there is none.

    Raises:
        SecretsUnavailableError: it cannot be decrypted with this control plane's keys.
    """
    row = _row(session, owner, name)
    return None if row is None else _decrypt(ctx, row)


def check_name(name: str) -> None:
    if not re.match(wire.SECRET_NAME_PATTERN, name):
        raise InvalidRequestError(
            f"secret name {name!r} is not valid; {wire.SECRET_NAME_RULE}",
            details={"name": name},
        )


def _decrypt(ctx: Context, row: m.SecretRow) -> dict[str, str]:
    try:
        return json.loads(_box(ctx).decrypt(row.ciphertext))
    except InvalidToken:
        raise SecretsUnavailableError(
            f"secret {row.name!r} cannot be decrypted with this control plane's key; it was "
            "written under another MN_SERVER_SECRETS_KEY (keep old keys after the new one "
            "when rotating) or must be set again",
            details={"secret": row.name},
        ) from None


def _box(ctx: Context) -> MultiFernet:
    if ctx.secret_box is None:
        with _box_lock:
            if ctx.secret_box is None:
                ctx.secret_box = MultiFernet([Fernet(k) for k in _keys(ctx)])
    return ctx.secret_box


def _keys(ctx: Context) -> list[bytes]:
    configured = ctx.settings.secrets_key
    if configured:
        return [_fernet_key(k.strip()) for k in configured.split(",") if k.strip()]
    if ctx.db.path is None:
        raise SecretsUnavailableError(
            "secrets need MN_SERVER_SECRETS_KEY on a control plane backed by PostgreSQL (every "
            "replica must share it); set it to a Fernet key and restart"
        )
    return [_local_key(Path(ctx.db.path).parent / "secrets.key")]


def _fernet_key(value: str) -> bytes:
    """A Fernet key as given, or one derived (SHA-256) from any other random string, such
    as the one the stack's secret generates."""
    try:
        Fernet(value.encode())
        return value.encode()
    except ValueError:
        return base64.urlsafe_b64encode(hashlib.sha256(value.encode()).digest())


def _local_key(path: Path) -> bytes:
    """The embedded control plane's key: made once, readable by its owner only."""
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    key = Fernet.generate_key()
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key)
    try:
        os.link(tmp, path)  # never replaces a key another process made meanwhile
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_bytes().strip()


def _row(session: Session, owner: str, name: str) -> m.SecretRow | None:
    return session.execute(
        select(m.SecretRow).where(m.SecretRow.owner == owner, m.SecretRow.name == name)
    ).scalar_one_or_none()


def _missing(session: Session, owner: str, name: str) -> NotFoundError:
    names = list(
        session.execute(select(m.SecretRow.name).where(m.SecretRow.owner == owner)).scalars()
    )
    return NotFoundError(
        f"no secret named {name!r} (secrets: {', '.join(sorted(names)) or 'none'})",
        details={"secret": name, "secrets": sorted(names)},
    )


def _info(row: m.SecretRow) -> wire.SecretInfo:
    return wire.SecretInfo(
        name=row.name,
        keys=json.loads(row.keys),
        created_at=to_datetime(row.created_at),
        updated_at=to_datetime(row.updated_at),
    )
