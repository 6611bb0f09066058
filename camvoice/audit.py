"""The audit log: who linked, unlinked, viewed or changed which camera, when, from where.

Details must never hold tokens, passwords, stream URLs or tickets.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from camvoice.models import AuditEvent, utcnow


def record(
    session: Session,
    action: str,
    *,
    actor: str,
    account_id: str | None = None,
    camera_id: str | None = None,
    assistant: str | None = None,
    **detail: Any,
) -> None:
    """Insert an audit event in the caller's transaction, so it commits or rolls back with it.

    A plain INSERT on the session's connection, not an ORM object: every directive writes one,
    and the unit of work would cost more than the statement."""
    session.connection().execute(
        INSERT,
        {"action": action, "actor": actor, "account_id": account_id, "camera_id": camera_id,
         "assistant": assistant, "detail": detail, "at": utcnow()},
    )  # fmt: skip


INSERT = AuditEvent.__table__.insert()


def recent(session: Session, account_id: str | None = None, limit: int = 100) -> list[AuditEvent]:
    stmt = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if account_id is not None:
        stmt = stmt.where(AuditEvent.account_id == account_id)
    return list(session.scalars(stmt))
