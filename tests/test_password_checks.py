"""Password checks (argon2id) cost 64 MiB and a core for tens of milliseconds each: one at a
time per process, and never inside a writing transaction."""

from __future__ import annotations

import threading

import pytest
from argon2 import PasswordHasher
from sqlalchemy import update

from camvoice import accounts
from camvoice.accounts import authenticate, create_account
from camvoice.db import Database
from camvoice.models import Account
from tests.conftest import until


def test_hashes_run_one_at_a_time_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Four threads hashing at once: the argon2 work itself never overlaps (each run would
    otherwise hold its own 64 MiB)."""
    running, most, lock = [0], [0], threading.Lock()
    overlap = threading.Event()

    def recording_hash(self: PasswordHasher, password: str | bytes, **_: object) -> str:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            if running[0] > 1:
                overlap.set()
        overlap.wait(0.2)  # long enough for an unqueued second thread to arrive
        with lock:
            running[0] -= 1
        return "$argon2id$fake"

    monkeypatch.setattr(PasswordHasher, "hash", recording_hash)
    threads = [threading.Thread(target=accounts._hasher.hash, args=("pw",)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    assert most[0] == 1


def test_a_password_check_holds_no_write_lock(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a sign-in's password is being checked, another writer commits at once: on SQLite a
    writing transaction around the check would hold every directive's audit row behind it."""
    if not db.is_sqlite:
        pytest.skip("SQLite's single write lock: PostgreSQL locks rows, and this row is unlocked")
    with db.session() as session:
        owner_id = create_account(session, "owner@example.com", "correct horse").id
    checking, release = threading.Event(), threading.Event()
    real_verify = PasswordHasher.verify

    def slow_verify(self: PasswordHasher, hash: str | bytes, password: str | bytes) -> bool:
        checking.set()
        release.wait(30)
        return real_verify(self, hash, password)

    monkeypatch.setattr(PasswordHasher, "verify", slow_verify)
    signed_in: list[str | None] = []
    sign_in = threading.Thread(
        target=lambda: signed_in.append(authenticate(db, "owner@example.com", "correct horse"))
    )
    sign_in.start()
    try:
        assert checking.wait(30)
        wrote = threading.Event()

        def write() -> None:
            with db.session() as session:
                session.execute(
                    update(Account).where(Account.id == owner_id).values(disabled_at=None)
                )
            wrote.set()

        writer = threading.Thread(target=write)
        writer.start()
        # Under a write transaction held by the check, this waits for the whole check (here
        # until `release`, i.e. forever); without one, it commits at once.
        assert until(wrote.is_set, 10), "a writer waited for a password check"
    finally:
        release.set()
        sign_in.join(30)
    assert signed_in == [owner_id]


def test_a_disabled_account_or_wrong_password_signs_in_nobody(db: Database) -> None:
    with db.session() as session:
        owner = create_account(session, "owner@example.com", "correct horse")
        owner_id = owner.id
    assert authenticate(db, "OWNER@example.com ", "correct horse") == owner_id
    assert authenticate(db, "owner@example.com", "wrong horse") is None
    with db.session() as session:
        session.get(Account, owner_id).disabled_at = accounts.utcnow()  # type: ignore[union-attr]
    assert authenticate(db, "owner@example.com", "correct horse") is None
