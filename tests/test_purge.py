"""Nothing kept forever (camvoice/purge.py): on SQLite and PostgreSQL, rows on both sides of
each cutoff; what is still needed stays; deletes go in bounded batches; the worker purges on its
schedule and `camvoice purge` does it once."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select

from camvoice import purge
from camvoice.db import Database
from camvoice.models import AuditEvent, OutboxEvent, utcnow
from camvoice.once import UsedOnce
from camvoice.ratelimit import RateLimit
from camvoice.sessions import SignInSession
from camvoice.settings import Settings
from camvoice.streams import StreamView
from oauth.models import AuthorizationCode, Grant, Token
from service.wiring import build_services
from tests.conftest import VENV_BIN, run_cli
from tests.oauth_support import ALEXA_URIS, make_owner, register

DAY = timedelta(days=1)


def ago(delta: timedelta) -> datetime:
    return utcnow() - delta


def seed(db: Database) -> dict[str, dict[str, Any]]:
    """Rows just past and just short of every cutoff; returns {table: {label: key}} of what must
    stay (label starting "keep") and go ("gone")."""
    account_id = make_owner(db, f"purge-{secrets.token_hex(4)}@example.com")
    client = register(db, "Amazon Alexa", ALEXA_URIS, "alexa")
    rows: dict[str, dict[str, Any]] = {}
    with db.session() as session:
        grant = Grant(account_id=account_id, client_id=client.client_id, scope="cameras")
        session.add(grant)
        session.flush()

        def code(label: str, expires: datetime) -> None:
            session.add(AuthorizationCode(
                code_hash=secrets.token_hex(32), client_id=client.client_id,
                account_id=account_id, scope="cameras", expires_at=expires))  # fmt: skip

        code("gone", ago(timedelta(hours=2)))
        code("keep:expired minutes ago", ago(timedelta(minutes=10)))
        code("keep:live", utcnow() + timedelta(minutes=5))

        def token(label: str, kind: str, **fields: Any) -> Token:
            row = Token(grant_id=grant.id, client_id=client.client_id, account_id=account_id,
                        kind=kind, token_hash=secrets.token_hex(32), scope="cameras",
                        issued_at=ago(400 * DAY), **fields)  # fmt: skip
            session.add(row)
            session.flush()
            rows.setdefault("oauth_tokens", {})[f"{label}:{row.id}"] = row.id
            return row

        token("gone", "access", expires_at=ago(timedelta(hours=2)))
        token("keep:valid access", "access", expires_at=utcnow() + timedelta(minutes=30))
        token("keep:live refresh, a year old", "refresh")
        token("keep:used, its child unused", "refresh", used_at=ago(100 * DAY))
        token("keep:superseded lately (reuse watch)", "refresh", superseded_at=ago(29 * DAY))
        token("gone", "refresh", superseded_at=ago(31 * DAY))
        token("gone", "refresh", revoked_at=ago(31 * DAY))
        token("keep:revoked lately", "refresh", revoked_at=ago(DAY))

        def outbox(label: str, status: str, created: datetime, **fields: Any) -> None:
            row = OutboxEvent(topic="camera.changed", subscriber="alexa.events", payload={},
                              status=status, created_at=created, **fields)  # fmt: skip
            session.add(row)
            session.flush()
            rows.setdefault("outbox", {})[f"{label}:{row.id}"] = row.id

        for _ in range(5):  # more than a batch
            outbox("gone", "delivered", ago(9 * DAY), delivered_at=ago(8 * DAY))
        outbox("keep:delivered lately", "delivered", ago(7 * DAY), delivered_at=ago(6 * DAY))
        outbox("keep:pending, however old", "pending", ago(400 * DAY))
        outbox("keep:leased", "pending", ago(400 * DAY), locked_until=utcnow() + DAY)
        outbox("keep:dead letter, within audit retention", "dead", ago(300 * DAY))
        outbox("gone", "dead", ago(366 * DAY))

        for label, last_seen in (("gone", ago(timedelta(minutes=62))),
                                 ("keep:may still play", ago(timedelta(minutes=58)))):  # fmt: skip
            ticket = secrets.token_hex(8)
            session.add(StreamView(ticket_id=ticket, camera_id="cam_x", account_id=account_id,
                                   audience="alexa", protocol="hls", started_at=last_seen,
                                   last_seen=last_seen))  # fmt: skip
            rows.setdefault("stream_views", {})[f"{label}:{ticket}"] = ticket

        for label, start in (("gone", ago(DAY + timedelta(minutes=1))),
                             ("keep:window may count", ago(timedelta(hours=23))),
                             ("keep:current", utcnow())):  # fmt: skip
            key = f"login:acct:{secrets.token_hex(4)}"
            session.add(RateLimit(key=key, window_start=start, count=3))
            rows.setdefault("rate_limits", {})[f"{label}:{key}"] = key

        for label, seen, created in (
            ("gone", ago(timedelta(minutes=31)), ago(timedelta(hours=1))),  # idle too long
            ("gone", ago(timedelta(minutes=1)), ago(timedelta(hours=12, minutes=1))),  # too old
            ("keep:live", ago(timedelta(minutes=29)), ago(timedelta(hours=11))),
        ):
            row = SignInSession(token_hash=secrets.token_hex(32), account_id=account_id,
                                created_at=created, last_seen=seen)  # fmt: skip
            session.add(row)
            session.flush()
            rows.setdefault("signin_sessions", {})[f"{label}:{row.id}"] = row.id

        for label, expires in (("gone", ago(timedelta(seconds=1))),
                               ("keep:within its window", utcnow() + timedelta(minutes=4))):  # fmt: skip
            key = secrets.token_hex(16)
            session.add(UsedOnce(key=key, expires_at=expires))
            rows.setdefault("used_once", {})[f"{label}:{key}"] = key

        for i in range(7):
            at = ago(366 * DAY) if i < 5 else ago(364 * DAY)
            row = AuditEvent(at=at, actor="test", action="camera.viewed", account_id=account_id)
            session.add(row)
            session.flush()
            rows.setdefault("audit_events", {})[f"{'gone' if i < 5 else 'keep'}:{row.id}"] = row.id
    with db.session() as session:
        rows["oauth_codes"] = {
            f"{'gone' if c.expires_at < ago(timedelta(hours=1)) else 'keep'}:{c.code_hash}":
            c.code_hash for c in session.scalars(select(AuthorizationCode))
        }  # fmt: skip
    return rows


KEYS = {
    "oauth_codes": AuthorizationCode.code_hash,
    "oauth_tokens": Token.id,
    "outbox": OutboxEvent.id,
    "stream_views": StreamView.ticket_id,
    "rate_limits": RateLimit.key,
    "audit_events": AuditEvent.id,
    "signin_sessions": SignInSession.id,
    "used_once": UsedOnce.key,
}


def remaining(db: Database) -> dict[str, set[Any]]:
    with db.reading() as session:
        return {table: set(session.scalars(select(key))) for table, key in KEYS.items()}


def expected(rows: dict[str, dict[str, Any]]) -> dict[str, set[Any]]:
    return {t: {k for label, k in rows[t].items() if label.startswith("keep")} for t in KEYS}


@pytest.fixture
def deletes(db: Database) -> Iterator[list[int]]:
    """The row count of every DELETE statement the engine runs."""
    counts: list[int] = []

    def after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE"):
            counts.append(cursor.rowcount)

    event.listen(db.engine, "after_cursor_execute", after)
    yield counts
    event.remove(db.engine, "after_cursor_execute", after)


def test_purge_removes_what_expired_and_keeps_what_is_needed(
    db: Database, settings: Settings, deletes: list[int]
) -> None:
    rows = seed(db)
    services = build_services(settings, db)
    removed = services.purger.run(db, batch=2)
    assert remaining(db) == expected(rows)
    assert removed == {
        "outbox.delivered": 5, "outbox.dead": 1, "stream_views": 1, "rate_limits": 1,
        "audit_events": 5, "signin_sessions": 2, "used_once": 1,
        "oauth_codes": 1, "oauth_tokens.access": 1, "oauth_tokens.refresh": 2,
    }  # fmt: skip
    # Bounded statements: never more than a batch in one DELETE (5 audit rows took 3).
    assert deletes and max(deletes) <= 2
    assert Counter(deletes)[2] >= 4
    assert purge.BATCH == 1000  # README: 1,000 rows per statement when the worker purges
    # A second run finds nothing.
    assert set(services.purger.run(db).values()) == {0}
    assert remaining(db) == expected(rows)


def test_audit_retention_is_a_setting(db: Database, settings: Settings) -> None:
    with db.session() as session:
        for days in (40, 20):
            session.add(AuditEvent(at=ago(days * DAY), actor="t", action="camera.viewed"))
    short = settings.model_copy(update={"audit_retention_days": 30})
    build_services(short, db).purger.run(db)
    with db.reading() as session:
        left = session.scalars(select(AuditEvent.at)).all()
    assert len(left) == 1 and left[0] > ago(21 * DAY)


def count_audit(db: Database) -> int:
    with db.reading() as session:
        return int(session.scalar(select(func.count()).select_from(AuditEvent)) or 0)


def old_audit_row(db: Database) -> None:
    with db.session() as session:
        session.add(AuditEvent(at=ago(400 * DAY), actor="test", action="camera.viewed"))


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the SQL is held above on both
def test_the_worker_purges_on_schedule_and_the_cli_once(
    db: Database, cli_env: dict[str, str], tmp_path: Path
) -> None:
    old_audit_row(db)
    result = run_cli("purge", "--json", env=cli_env)
    assert '"audit_events": 1' in result.stdout and count_audit(db) == 0

    old_audit_row(db)
    env = {**os.environ, **cli_env, "CAMVOICE_PURGE_INTERVAL": "1",
           "CAMVOICE_WORKER_POLL_INTERVAL": "0.1"}  # fmt: skip
    with open(tmp_path / "worker.log", "wb") as log:
        worker = subprocess.Popen([str(VENV_BIN / "camvoice"), "worker"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=log)  # fmt: skip
    try:
        for _ in range(2):  # at start, and again a purge interval later
            deadline = time.monotonic() + 30
            while count_audit(db):
                assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "the worker did not purge"
                time.sleep(0.1)
            old_audit_row(db)
    finally:
        worker.terminate()
        worker.wait(20)
    assert "purged" in (tmp_path / "worker.log").read_text()
