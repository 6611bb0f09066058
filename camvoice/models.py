"""The core's tables: accounts, cameras, audit events and the outbox.

Schema changes go through Alembic (camvoice/migrations); these classes are the ORM's view of it.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    event,
    inspect,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    """Timezone-aware now; every timestamp is stored in UTC."""
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    """A stable, opaque identifier that reveals nothing about order or count."""
    return f"{prefix}_{secrets.token_hex(8)}"


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that comes back timezone-aware on SQLite too, so comparisons never mix kinds."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON}


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("acc"))
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Set by `camvoice accounts disable`: no sign-in, and every session ended.
    disabled_at: Mapped[datetime | None] = mapped_column(default=None)
    # Counts changes to this owner's cameras, in their own transactions (`_count_camera_changes`):
    # the key under which Discovery and SYNC answers are cached (camvoice/discovery.py).
    registry_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    cameras: Mapped[list[Camera]] = relationship(
        back_populates="owner", cascade="all, delete-orphan", order_by="Camera.name"
    )


class Camera(Base):
    __tablename__ = "cameras"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("cam"))
    owner_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    backend: Mapped[str] = mapped_column(String(32), default="local")
    name: Mapped[str] = mapped_column(String(128))
    nicknames: Mapped[list[str]] = mapped_column(JSON, default=list)
    room: Mapped[str | None] = mapped_column(String(128))
    model: Mapped[str | None] = mapped_column(String(128))  # None: not known, never made up
    firmware: Mapped[str | None] = mapped_column(String(64))
    width: Mapped[int | None] = mapped_column(Integer)  # what the stream really sends, probed
    height: Mapped[int | None] = mapped_column(Integer)
    serial: Mapped[str | None] = mapped_column(String(64))
    online: Mapped[bool] = mapped_column(Boolean, default=True)
    image_encryption: Mapped[bool] = mapped_column(Boolean, default=False)
    audio: Mapped[bool] = mapped_column(Boolean, default=True)
    sleep_mode: Mapped[bool] = mapped_column(Boolean, default=False)
    status_light: Mapped[bool] = mapped_column(Boolean, default=True)
    source: Mapped[str | None] = mapped_column(Text)  # without credentials (camvoice.sealing)
    source_secret: Mapped[str | None] = mapped_column(Text)  # the whole URL, sealed
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    owner: Mapped[Account] = relationship(back_populates="cameras")


def changed_owners(session: Session) -> set[str]:
    """The accounts whose cameras this flush adds, changes (really: not a value set to itself)
    or deletes; a camera moved to another owner changes both."""
    owners: set[str | None] = set()
    for camera in session.new | session.deleted:
        if isinstance(camera, Camera):
            owners.add(camera.owner_id or (camera.owner.id if camera.owner else None))
    for camera in session.dirty:
        if isinstance(camera, Camera) and session.is_modified(camera):
            owners.add(camera.owner_id)
            owners.update(inspect(camera).attrs.owner_id.history.deleted or ())
    return {owner for owner in owners if owner}


@event.listens_for(Session, "before_flush")
def _count_camera_changes(session: Session, _context: object, _instances: object) -> None:
    """Bump registry_version of every owner whose cameras this flush changes, in the same
    transaction: no write path (registry, CLI, console, a camera-cloud sync, a test) can change
    what Discovery answers without changing the key its cached answer is kept under."""
    for owner_id in sorted(changed_owners(session)):
        session.execute(
            update(Account)
            .where(Account.id == owner_id)
            .values(registry_version=Account.registry_version + 1)
            .execution_options(synchronize_session=False)
        )


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    account_id: Mapped[str | None] = mapped_column(String(32), index=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    camera_id: Mapped[str | None] = mapped_column(String(32))
    assistant: Mapped[str | None] = mapped_column(String(16))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class OutboxEvent(Base):
    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_due", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    topic: Mapped[str] = mapped_column(String(64))
    subscriber: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    locked_until: Mapped[datetime | None] = mapped_column()
    # Who holds the lease, and a token new at every claim: the write-back of an outcome names
    # both, so a worker whose lease passed to another cannot record over it (camvoice/outbox.py).
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_token: Mapped[str | None] = mapped_column(String(32))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column()
