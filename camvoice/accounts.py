"""Camera owners: creation, password checks (argon2id), password change and disabling."""

from __future__ import annotations

import re
import threading
from functools import cache
from typing import Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from camvoice.db import Database
from camvoice.models import Account, utcnow
from camvoice.sessions import end_all


class OneAtATimeHasher(PasswordHasher):
    """argon2id (the library's recommended parameters: 64 MiB, 3 passes) that runs one hash or
    verify at a time per process. Each holds its 64 MiB while it runs, so four threads of a web
    worker signing in at once would add 256 MiB to that worker; queued, they add 64 MiB, and
    on a machine with few cores they finish no later, since each one keeps a core busy."""

    def __init__(self) -> None:
        super().__init__()
        self.running = threading.Lock()

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        with self.running:
            return super().hash(password, salt=salt)

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        with self.running:
            return super().verify(hash, password)


_hasher = OneAtATimeHasher()
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MIN_PASSWORD = 8


class AccountError(ValueError):
    """A caller's mistake: bad email, short password, duplicate account."""


@cache
def _dummy_hash() -> str:
    """Verifying against this when the email is unknown keeps both failures equally slow."""
    return _hasher.hash("camvoice-timing-equaliser")


def normalize_email(email: str) -> str:
    return email.strip().lower()


def create_account(session: Session, email: str, password: str) -> Account:
    email = normalize_email(email)
    if not _EMAIL.match(email):
        raise AccountError(f"not an email address: {email!r}")
    check_password(password)
    if find_account(session, email) is not None:
        raise AccountError(f"an account for {email} already exists")
    account = Account(email=email, password_hash=_hasher.hash(password))
    session.add(account)
    session.flush()
    return account


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"password must be at least {MIN_PASSWORD} characters")


def change_password(session: Session, account: Account, password: str) -> int:
    """Set a new password and end every sign-in session, in one transaction: whoever signed in
    with the old one (or copied a session cookie) is out. How many sessions were ended."""
    check_password(password)
    account.password_hash = _hasher.hash(password)
    return end_all(session, account.id)


def disable_account(session: Session, account: Account) -> int:
    """No more sign-ins, and every session ended; how many were."""
    if account.disabled_at is None:
        account.disabled_at = utcnow()
    return end_all(session, account.id)


def find_account(session: Session, email: str) -> Account | None:
    stmt = select(Account).where(func.lower(Account.email) == normalize_email(email))
    return session.scalars(stmt).one_or_none()


def authenticate(db: Database, email: str, password: str) -> str | None:
    """The account's id if the password matches; None for an unknown email, a wrong password or
    a disabled account alike.

    The password is checked with no transaction open: argon2id keeps a core busy for tens of
    milliseconds, and on SQLite a writing transaction around it would hold every other writer
    (each directive's audit row) that long. The caller starts what a sign-in starts in its own
    transaction; an account disabled in between is refused there too (sessions of a disabled
    account are never live)."""
    with db.reading() as session:
        account = find_account(session, email)
        found = (account.id, account.password_hash, account.disabled_at) if account else None
    try:
        _hasher.verify(found[1] if found else _dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        return None
    if found is None or found[2] is not None:
        return None
    account_id, old_hash, _ = found
    if _hasher.check_needs_rehash(old_hash):
        new_hash = _hasher.hash(password)
        with db.session() as session:  # unless the password was changed meanwhile
            session.execute(
                update(Account)
                .where(Account.id == account_id, Account.password_hash == old_hash)
                .values(password_hash=new_hash)
            )
    return account_id
