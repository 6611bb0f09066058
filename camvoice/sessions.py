"""Sign-in sessions kept on the server, so that signing out, a password change or a disabled
account ends them on every instance at once.

The browser's cookie holds only a random token; the database keeps its SHA-256, never the token,
so a copy of the table opens nothing. A session ends when its owner signs out, changes password
or is disabled, after CAMVOICE_SESSION_IDLE_MINUTES without a request, and in any case
CAMVOICE_SESSION_MAX_HOURS after sign-in. Each session also has a public reference (its id),
which console stream tickets carry: a ticket of an ended session is refused at its next fetch.

The database, not Redis, holds them even when Redis is configured: every instance shares it, a
password change ends the sessions in the same transaction as the new hash, and stream admission
checks the session in the transaction it already has open.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, ForeignKey, String, delete, or_, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from camvoice.db import Database
from camvoice.models import Account, Base, new_id, utcnow
from camvoice.settings import Settings

COOKIE = "camvoice_session"  # the cookie's name; its value is the token
# last_seen is written at most this often: the idle limit is minutes, one write a minute is ample.
TOUCH_EVERY = timedelta(seconds=60)

Clock = Callable[[], datetime]


class SignInSession(Base):
    __tablename__ = "signin_sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("ses"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    account_id: Mapped[str] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column()
    last_seen: Mapped[datetime] = mapped_column()


@dataclass(frozen=True)
class SignIn:
    """A live session: whose it is, and the reference stream tickets carry."""

    ref: str
    account_id: str


def token_hash(token: str) -> str:
    """What is stored of a token: 256 random bits need no slow hash."""
    return hashlib.sha256(token.encode()).hexdigest()


def end_all(session: Session, account_id: str) -> int:
    """End every session of an account (sign-out, password change, disable); how many."""
    result = session.execute(delete(SignInSession).where(SignInSession.account_id == account_id))
    return int(result.rowcount)  # type: ignore[attr-defined]


class SessionStore:
    """Starts, finds and ends sign-in sessions under the idle and absolute lifetimes.

    `clock` is the wiring's time source, so tests can move time instead of waiting for it.
    """

    def __init__(self, idle: timedelta, lifetime: timedelta, clock: Clock = utcnow) -> None:
        self.idle = idle
        self.lifetime = lifetime
        self.clock = clock

    @classmethod
    def from_settings(cls, settings: Settings) -> SessionStore:
        return cls(
            timedelta(minutes=settings.session_idle_minutes),
            timedelta(hours=settings.session_max_hours),
        )

    def start(self, session: Session, account_id: str) -> str:
        """A new session for a signed-in account; the token for its cookie.

        Sessions that have run out are deleted here, so the table stays small without a worker.
        """
        now = self.clock()
        session.execute(delete(SignInSession).where(self.over(now)))
        token = secrets.token_urlsafe(32)
        session.add(SignInSession(token_hash=token_hash(token), account_id=account_id,
                                  created_at=now, last_seen=now))  # fmt: skip
        return token

    def signed_in(self, db: Database, token: str | None) -> SignIn | None:
        """The live session a cookie names, or None. A request is activity: it keeps the
        session from going idle (written at most once per TOUCH_EVERY)."""
        if not token:
            return None
        with db.reading() as session:
            found = self._live(session, self._by_token(session, token))
        if found is not None and self.clock() - found.last_seen >= TOUCH_EVERY:
            with db.session() as session:
                self.touch(session, found.id)
        return SignIn(found.id, found.account_id) if found is not None else None

    def is_live(self, session: Session, ref: str, touch: bool = False) -> bool:
        """Whether the session a stream ticket names is still on. With `touch` (a player's
        fetch: watching is activity), it is kept from going idle too."""
        row = self._live(session, session.get(SignInSession, ref))
        if touch and row is not None and self.clock() - row.last_seen >= TOUCH_EVERY:
            self.touch(session, row.id)
        return row is not None

    def touch(self, session: Session, ref: str) -> None:
        session.execute(
            update(SignInSession).where(SignInSession.id == ref).values(last_seen=self.clock())
        )

    def end(self, session: Session, token: str | None, everywhere: bool) -> None:
        """End the session a cookie names and, `everywhere`, every session of its account."""
        row = self._by_token(session, token) if token else None
        if row is not None and everywhere:
            end_all(session, row.account_id)
        elif row is not None:
            session.delete(row)

    @staticmethod
    def _by_token(session: Session, token: str) -> SignInSession | None:
        stmt = select(SignInSession).where(SignInSession.token_hash == token_hash(token))
        return session.scalars(stmt).one_or_none()

    def _live(self, session: Session, row: SignInSession | None) -> SignInSession | None:
        """The row if neither lifetime has run out and its account is not disabled."""
        if row is None:
            return None
        now = self.clock()
        if now - row.last_seen >= self.idle or now - row.created_at >= self.lifetime:
            return None
        account = session.get(Account, row.account_id)
        return row if account is not None and account.disabled_at is None else None

    def over(self, now: datetime) -> ColumnElement[bool]:
        """The SQL condition of a session past either lifetime."""
        return or_(
            SignInSession.last_seen <= now - self.idle,
            SignInSession.created_at <= now - self.lifetime,
        )
