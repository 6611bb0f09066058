"""The table an EZVIZ link lives in: one owner's Open Platform keys (sealed) and sync schedule."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Integer, String, Text, delete
from sqlalchemy.orm import Mapped, Session, mapped_column

from camvoice.models import Base, utcnow


class EzvizLink(Base):
    """One owner's Open Platform app: appKey, sealed appSecret and token, sync schedule."""

    __tablename__ = "ezviz_links"

    account_id: Mapped[str] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    app_key: Mapped[str] = mapped_column(String(64))
    app_secret: Mapped[str] = mapped_column(Text)
    access_token: Mapped[str | None] = mapped_column(Text)
    token_expires_at: Mapped[datetime | None] = mapped_column()
    area_domain: Mapped[str | None] = mapped_column(String(255))
    next_sync_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_sync_at: Mapped[datetime | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


def erase(session: Session, account_id: str) -> int:
    """A deleted owner's EZVIZ link: appKey, sealed appSecret and token, gone."""
    result = session.execute(delete(EzvizLink).where(EzvizLink.account_id == account_id))
    return int(result.rowcount)  # type: ignore[attr-defined]


def export(session: Session, account_id: str) -> dict[str, Any] | None:
    """The owner's EZVIZ link for their export: the appKey they entered, never the secret."""
    link = session.get(EzvizLink, account_id)
    if link is None:
        return None
    return {"backend": "ezviz", "app_key": link.app_key, "region": link.area_domain,
            "linked_at": link.created_at, "last_sync_at": link.last_sync_at}  # fmt: skip
