"""Camera owners: creation, password checks (argon2id), password change and disabling."""

from __future__ import annotations

import re
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from camvoice.models import Account, utcnow
from camvoice.sessions import end_all

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
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


def authenticate(session: Session, email: str, password: str) -> Account | None:
    """The account if the password matches; None for an unknown email, a wrong password or a
    disabled account alike."""
    account = find_account(session, email)
    try:
        _hasher.verify(account.password_hash if account else _dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        return None
    if account is None or account.disabled_at is not None:
        return None
    if _hasher.check_needs_rehash(account.password_hash):
        account.password_hash = _hasher.hash(password)
    return account
