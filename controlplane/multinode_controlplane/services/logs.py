"""Log lines of calls, kept after their instance is gone."""

from __future__ import annotations

from sqlalchemy import select

from multinode import wire
from multinode.errors import InvalidRequestError
from multinode_controlplane import models as m
from multinode_controlplane.clock import to_datetime
from multinode_controlplane.services.auth import Principal, allowed_app_ids, resolve_app
from multinode_controlplane.services.context import Context


def list_logs(
    ctx: Context,
    principal: Principal,
    *,
    app: str | None = None,
    function: str | None = None,
    call_id: str | None = None,
    after: int = 0,
    limit: int = 1000,
) -> wire.LogsPage:
    """Lines with id greater than ``after``, oldest first, at most ``limit``.

    ``next_after`` is the id of the last line returned (or ``after`` when none), so a
    follower passes it back to get only newer lines.
    """
    if not 1 <= limit <= 10_000:
        raise InvalidRequestError("limit must be between 1 and 10000", details={"limit": limit})
    lg = m.logs.c
    with ctx.db.read() as session:
        if app is not None:
            app_ids = [resolve_app(session, principal, app).id]
        else:
            app_ids = allowed_app_ids(session, principal)
        query = (
            select(lg.id, lg.ts, lg.function, lg.call_id, lg.stream, lg.text, m.apps.c.name)
            .join(m.apps, m.apps.c.id == lg.app_id)
            .where(lg.app_id.in_(app_ids), lg.id > after)
        )
        if function is not None:
            query = query.where(lg.function == function)
        if call_id is not None:
            query = query.where(lg.call_id == call_id)
        rows = session.execute(query.order_by(lg.id).limit(limit)).all()
    lines = [
        wire.LogEntry(
            id=r.id,
            ts=to_datetime(r.ts),
            app=r.name,
            function=r.function,
            call_id=r.call_id,
            stream=r.stream,
            text=r.text,
        )
        for r in rows
    ]
    return wire.LogsPage(lines=lines, next_after=lines[-1].id if lines else after)
