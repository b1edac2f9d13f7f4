"""Who is calling: API keys act for an owner, agent tokens for one instance of one app."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Row, bindparam, select
from sqlalchemy.orm import Session

from multinode.errors import AuthError, ForbiddenError, NotFoundError
from multinode_controlplane import models as m
from multinode_controlplane.domain.tokens import hash_token, new_token, token_kind
from multinode_controlplane.services.context import Context

DEFAULT_OWNER = "default"

_apps = m.apps.c

# Statements every request runs are built once: building one per execution costs more
# than running it.
_APP_BY_NAME = select(_apps.id, _apps.name, _apps.status, _apps.current_version).where(
    _apps.owner == bindparam("_owner"), _apps.name == bindparam("_name")
)
_APP_IDS = select(_apps.id).where(_apps.owner == bindparam("_owner"))
_KEY_OWNER = select(m.api_keys.c.owner).where(
    m.api_keys.c.key_hash == bindparam("_hash"), m.api_keys.c.revoked.is_(False)
)
_AGENT = (
    select(m.instances.c.id, m.instances.c.app_id, _apps.owner)
    .join(m.apps, _apps.id == m.instances.c.app_id)
    .where(
        m.instances.c.agent_token_hash == bindparam("_hash"),
        # An agent's token dies with its instance: once the instance is ending or ended,
        # nothing signed with it is accepted (its agent powers off on the 401).
        m.instances.c.state.not_in(("terminating", "terminated", "failed")),
    )
)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller.

    Attributes:
        kind: ``key`` (a user's API key) or ``agent`` (an instance's agent token).
        owner: the owner whose apps the caller may use.
        app_id: for an agent, the only app it may act on.
        instance_id: for an agent, its instance.
    """

    kind: Literal["key", "agent"]
    owner: str
    app_id: int | None = None
    instance_id: str | None = None


# Resolved tokens, by hash, for a few seconds: every request authenticates, and the
# lookup would otherwise be a query on each hot-path request. Only successes are cached,
# so a revoked key stops working within _CACHE_TTL_S.
_CACHE_TTL_S = 5.0


def authenticate(ctx: Context, authorization: str | None) -> Principal:
    """Resolve an ``Authorization: Bearer <token>`` header.

    Raises:
        AuthError: no header, not a bearer token, or a token nobody issued.
    """
    cached = cached_principal(ctx, authorization)
    if cached is not None:
        return cached
    scheme, _, token = (authorization or "").partition(" ")
    digest = hash_token(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
    cache = ctx.auth_cache
    now = time.monotonic()
    principal = _authenticate(ctx, authorization)
    if digest is not None:
        if len(cache) > 10_000:
            cache.clear()
        cache[digest] = (now + _CACHE_TTL_S, principal)
    return principal


def cached_principal(ctx: Context, authorization: str | None) -> Principal | None:
    """The principal of a token resolved within the last few seconds, or None (no I/O)."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    cached = ctx.auth_cache.get(hash_token(token.strip()))
    if cached is not None and cached[0] > time.monotonic():
        return cached[1]
    return None


def _authenticate(ctx: Context, authorization: str | None) -> Principal:
    if not authorization:
        raise AuthError(
            "missing credentials: send 'Authorization: Bearer <token>' (set MN_API_KEY)"
        )
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthError("credentials must be a bearer token: 'Authorization: Bearer <token>'")
    kind = token_kind(token)
    digest = hash_token(token)
    with ctx.db.read() as session:
        if kind == "key":
            row = session.execute(_KEY_OWNER, {"_hash": digest}).first()
            if row is not None:
                return Principal(kind="key", owner=row.owner)
        elif kind == "agent":
            row = session.execute(_AGENT, {"_hash": digest}).first()
            if row is not None:
                return Principal(
                    kind="agent", owner=row.owner, app_id=row.app_id, instance_id=row.id
                )
    raise AuthError("unknown or revoked token", details={"kind": kind or "unknown"})


def require_key(principal: Principal) -> None:
    """Raise :class:`ForbiddenError` unless the caller uses an API key."""
    if principal.kind != "key":
        raise ForbiddenError("this endpoint needs an API key; agent tokens may not use it")


def require_agent(principal: Principal) -> str:
    """The caller's instance id; :class:`ForbiddenError` unless the caller is an agent."""
    if principal.kind != "agent" or principal.instance_id is None:
        raise ForbiddenError("this endpoint is for agents (an mna_ token)")
    return principal.instance_id


def resolve_app(session: Session, principal: Principal, name: str) -> m.AppRow:
    """The app ``name`` as seen by ``principal``.

    Raises:
        NotFoundError: the owner has no such app (``details["apps"]`` lists those it has).
        ForbiddenError: an agent asked for an app other than its own.
    """
    app = session.execute(
        select(m.AppRow).where(m.AppRow.owner == principal.owner, m.AppRow.name == name)
    ).scalar_one_or_none()
    _check_app(session, principal, name, app)
    return app  # type: ignore[return-value]


def app_columns(session: Session, principal: Principal, name: str) -> Row[Any]:
    """As :func:`resolve_app`, for hot paths: the app's id, name, status and current
    version as a plain row (no ORM entity), read with a statement built once."""
    app = session.execute(_APP_BY_NAME, {"_owner": principal.owner, "_name": name}).first()
    _check_app(session, principal, name, app)
    return app  # type: ignore[return-value]


def _check_app(session: Session, principal: Principal, name: str, app: Any) -> None:
    if principal.kind == "agent" and (app is None or app.id != principal.app_id):
        raise ForbiddenError(f"an agent may act only on its own app, not {name!r}")
    if app is None:
        names = session.execute(
            select(m.AppRow.name).where(m.AppRow.owner == principal.owner).order_by(m.AppRow.name)
        ).scalars()
        existing = list(names)
        raise NotFoundError(
            f"no app named {name!r}; existing apps: {', '.join(existing) or 'none'}",
            details={"app": name, "apps": existing},
        )


def allowed_app_ids(session: Session, principal: Principal) -> list[int]:
    """Ids of the apps ``principal`` may read."""
    if principal.kind == "agent":
        return [principal.app_id] if principal.app_id is not None else []
    return list(session.execute(_APP_IDS, {"_owner": principal.owner}).scalars())


def ensure_owner(session: Session, owner: str, now: float) -> None:
    if session.get(m.OwnerRow, owner) is None:
        session.add(m.OwnerRow(name=owner, created_at=now))
        session.flush()


def ensure_api_key(ctx: Context, key: str, *, owner: str = DEFAULT_OWNER) -> None:
    """Store ``key`` (hashed) for ``owner`` unless it is already stored. Idempotent."""
    if token_kind(key) != "key":
        raise ValueError("an API key must start with mnk_")
    digest = hash_token(key)
    now = ctx.clock()
    with ctx.db.write() as session:
        ensure_owner(session, owner, now)
        exists = session.execute(
            select(m.api_keys.c.id).where(m.api_keys.c.key_hash == digest)
        ).first()
        if exists is None:
            session.add(m.ApiKeyRow(owner=owner, key_hash=digest, created_at=now))


def create_api_key(ctx: Context, *, owner: str = DEFAULT_OWNER) -> str:
    """A new API key for ``owner``; only its hash is kept."""
    key = new_token("key")
    ensure_api_key(ctx, key, owner=owner)
    return key
