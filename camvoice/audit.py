"""The audit log: who linked, unlinked, viewed or changed which camera, when, from where.

Details must never hold tokens, passwords, stream URLs or tickets.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, bindparam, func, select
from sqlalchemy.orm import Session

from camvoice.db import Driver, connection_of
from camvoice.models import AuditEvent, utcnow


def record(
    session: Session | Connection | Driver,
    action: str,
    *,
    actor: str,
    account_id: str | None = None,
    camera_id: str | None = None,
    assistant: str | None = None,
    **detail: Any,
) -> None:
    """Insert an audit event in the caller's transaction, so it commits or rolls back with it
    (given a Database.driver connection, it is committed by itself as it returns).

    A plain INSERT, not an ORM object: every directive writes one, and the unit of work would
    cost more than the statement."""
    values = {"action": action, "actor": actor, "account_id": account_id, "camera_id": camera_id,
              "assistant": assistant, "detail": detail, "at": utcnow()}  # fmt: skip
    connection_of(session).execute(INSERT, values)


COLUMNS = ("action", "actor", "account_id", "camera_id", "assistant", "detail", "at")
# inline(): the new row's id is not asked for (no RETURNING on PostgreSQL).
INSERT = AuditEvent.__table__.insert().values({name: bindparam(name) for name in COLUMNS}).inline()


def recent(session: Session, account_id: str | None = None, limit: int = 100) -> list[AuditEvent]:
    stmt = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if account_id is not None:
        stmt = stmt.where(AuditEvent.account_id == account_id)
    return list(session.scalars(stmt))


VIEWED = "stream.requested"  # one row per stream handed out: a view, whoever asked for it


def views_per_day(
    session: Session, account_id: str, since: datetime
) -> dict[tuple[str, date], int]:
    """How many streams of each of an owner's cameras were handed out per UTC day since
    `since`, in one GROUP BY query (camera, day): (camera id, day) -> views. Days without a
    view are absent."""
    day = utc_day(session)
    rows = session.execute(
        select(AuditEvent.camera_id, day, func.count())
        .where(AuditEvent.account_id == account_id, AuditEvent.action == VIEWED)
        .where(AuditEvent.at >= since, AuditEvent.camera_id.is_not(None))
        .group_by(AuditEvent.camera_id, day)
    ).all()
    return {(camera, date.fromisoformat(str(when)[:10])): n for camera, when, n in rows}


def utc_day(session: Session) -> ColumnElement[Any]:
    """The UTC calendar day of an audit row: SQLite keeps UTC text already; PostgreSQL's
    date() would use the connection's time zone, so the timestamp is put in UTC first."""
    if session.get_bind().dialect.name == "sqlite":
        return func.date(AuditEvent.at)
    return func.date(func.timezone("UTC", AuditEvent.at))
