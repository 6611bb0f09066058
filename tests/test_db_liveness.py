"""PostgreSQL connections are checked before use without a round trip while in steady use
(camvoice/db.py Liveness): a connection the server ended is replaced before anyone gets it, one
idle for a while is pinged, one in steady use is not. And reads open no transaction there."""

from __future__ import annotations

import select
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from camvoice.db import Database, Liveness
from tests.conftest import PG_ADMIN, wait_for

pytestmark = pytest.mark.postgres


@pytest.fixture
def db(pg_db: Database) -> Database:
    return pg_db


@pytest.fixture
def pings(db: Database, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every ping Liveness sends (it calls the engine's dialect)."""
    sent: list[object] = []
    ping = db.engine.dialect.do_ping

    def counted(dbapi_conn: Any) -> bool:
        sent.append(dbapi_conn)
        return ping(dbapi_conn)

    monkeypatch.setattr(db.engine.dialect, "do_ping", counted)
    return sent


def backend_pid(db: Database) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_a_connection_in_steady_use_is_not_pinged(db: Database, pings: list[object]) -> None:
    pid = backend_pid(db)
    for _ in range(5):
        assert backend_pid(db) == pid  # the same pooled connection each time
    assert pings == []


def test_an_idle_connection_is_pinged(
    db: Database, pings: list[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    backend_pid(db)
    monkeypatch.setattr(Liveness, "PING_AFTER_IDLE", 0.0)
    backend_pid(db)
    assert len(pings) == 1


def test_a_connection_the_server_ended_is_replaced_before_use(
    db: Database, pings: list[object]
) -> None:
    with db.engine.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        socket = conn.connection.dbapi_connection.fileno()  # type: ignore[union-attr]
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone() == (True,)
    poller = select.poll()
    poller.register(socket, select.POLLIN)
    wait_for(lambda: poller.poll(0), "the server's goodbye to reach the pooled connection", 10)
    assert backend_pid(db) != pid  # no error: a new connection, found without a ping
    assert pings == []


def test_reads_open_no_transaction_and_writes_do(db: Database) -> None:
    """A reading unit of work sends no BEGIN or ROLLBACK (at READ COMMITTED each statement has
    its own snapshot either way); a writing one is one transaction."""
    idle, in_transaction = psycopg.pq.TransactionStatus.IDLE, psycopg.pq.TransactionStatus.INTRANS
    with db.reading() as session:
        session.execute(text("SELECT 1"))
        status = session.connection().connection.dbapi_connection.info.transaction_status  # type: ignore[union-attr]
        assert status == idle
    with db.session() as session:
        session.execute(text("SELECT 1"))
        status = session.connection().connection.dbapi_connection.info.transaction_status  # type: ignore[union-attr]
        assert status == in_transaction
