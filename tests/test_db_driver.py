"""Database.driver runs prepared Core statements on the driver's connection (camvoice/db.py
Driver): the values it reads and writes are exactly SQLAlchemy's, each statement commits by
itself, the pooled connection goes back as the pool's other users expect it, and a failure is
SQLAlchemy's error (a dropped connection is thrown away)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from sqlalchemy import bindparam, func, literal, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError

from camvoice import audit
from camvoice.accounts import create_account
from camvoice.cameras import OWNED_CAMERA, Registry
from camvoice.db import Database, Prepared, unavailable
from camvoice.models import AuditEvent, Camera
from camvoice.outbox import Outbox
from tests.conftest import PG_ADMIN, statements
from tests.transactions import open_transactions


def a_camera(db: Database) -> Camera:
    """A camera whose columns hold every kind of value: JSON, booleans, None, timestamps."""
    with db.session() as session:
        owner = create_account(session, "driver@example.com", "driver-password")
        camera = Registry(Outbox()).add(session, owner, "Front Door", actor="test")
        camera.nicknames = ["porch", "Entrée ☃"]
        camera.image_encryption = True
        camera.width = 1280
    return camera


def test_a_row_read_through_the_driver_is_sqlalchemys_row(db: Database) -> None:
    camera = a_camera(db)
    values = {"camera_id": camera.id, "account_id": camera.owner_id}
    with db.reading() as session:
        expected = session.connection().execute(OWNED_CAMERA, values).one()
    with db.driver() as driver:
        row = driver.execute(OWNED_CAMERA, values).first()
        assert driver.execute(OWNED_CAMERA, {**values, "account_id": "acc_other"}).first() is None
    assert tuple(row) == tuple(expected)
    assert [type(v) for v in row] == [type(v) for v in expected]
    assert row.nicknames == ["porch", "Entrée ☃"] and row.image_encryption is True
    assert row.created_at.tzinfo is not None and row.room is None


def test_a_write_through_the_driver_stores_what_a_session_stores(db: Database) -> None:
    detail: dict[str, Any] = {"protocol": "rtsps", "n": 3, "text": "é\u2028</script>"}
    with db.driver() as driver:
        audit.record(driver, "stream.requested", actor="alexa", camera_id="cam_1", **detail)
    with db.session() as session:
        audit.record(session, "stream.requested", actor="alexa", camera_id="cam_1", **detail)
    assert open_transactions(db.url) == 0  # committed by itself, nothing left open
    with db.reading() as session:
        rows = session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
    assert len(rows) == 2
    by_driver, by_session = rows
    assert by_driver.detail == by_session.detail == detail
    assert (by_driver.action, by_driver.actor, by_driver.camera_id) == (
        by_session.action, by_session.actor, by_session.camera_id,
    )  # fmt: skip
    assert by_driver.account_id is None and by_driver.at <= by_session.at <= datetime.now(UTC)


def test_a_failed_statement_is_sqlalchemys_error_and_writes_nothing(db: Database) -> None:
    with db.driver() as driver:
        with pytest.raises(IntegrityError):
            # No such account: the foreign key refuses the camera's owner.
            driver.execute(Camera.__table__.insert().values(
                id="cam_x", owner_id="acc_missing", name="x", backend="local",
                nicknames=[], online=True, image_encryption=False, audio=True,
                sleep_mode=False, status_light=True,
                created_at=datetime.now(UTC), updated_at=datetime.now(UTC),
            ).inline(), {})  # fmt: skip
        # The same connection goes on working.
        missing = {"camera_id": "cam_x", "account_id": "acc_missing"}
        assert driver.execute(OWNED_CAMERA, missing).first() is None
    assert open_transactions(db.url) == 0
    with db.reading() as session:
        assert session.get(Camera, "cam_x") is None


def test_statement_listeners_hear_the_drivers_statements(db: Database) -> None:
    with statements(db) as heard, db.driver() as driver:
        driver.execute(OWNED_CAMERA, {"camera_id": "c", "account_id": "a"})
    assert heard == [db.prepare(OWNED_CAMERA).sql]


def test_an_insert_that_would_return_its_key_unasked_is_refused() -> None:
    """On PostgreSQL it would RETURNING the key, and the driver would read a row nobody asked
    for: such a statement must say .inline()."""
    dialect = postgresql.psycopg.dialect()  # type: ignore[attr-defined]
    values = {name: bindparam(name) for name in audit.COLUMNS}
    with pytest.raises(ValueError, match="inline"):
        Prepared(AuditEvent.__table__.insert().values(values), dialect)
    assert "RETURNING" not in Prepared(audit.INSERT, dialect).sql


@pytest.mark.postgres
def test_the_connection_goes_back_to_the_pool_as_the_pool_expects_it(pg_db: Database) -> None:
    db = pg_db
    with db.driver() as driver:
        assert driver.connection.autocommit is True
        pid = driver.execute(select(func.pg_backend_pid()), {}).rows[0][0]
    with db.engine.connect() as conn:  # the same pooled connection, in transactions again
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() == pid
        assert conn.connection.dbapi_connection.autocommit is False  # type: ignore[union-attr]


@pytest.mark.postgres
def test_a_connection_dropped_mid_use_is_unavailable_and_thrown_away(pg_db: Database) -> None:
    db = pg_db
    with db.driver() as driver:
        pid = driver.execute(select(func.pg_backend_pid()), {}).rows[0][0]
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        with pytest.raises(OperationalError) as raised:
            driver.execute(OWNED_CAMERA, {"camera_id": "c", "account_id": "a"})
    assert raised.value.connection_invalidated and unavailable(raised.value)
    with db.driver() as driver:  # a new connection, working
        assert driver.execute(select(func.pg_backend_pid()), {}).rows[0][0] != pid  # type: ignore[index]


def test_a_transaction_commits_together_or_not_at_all(db: Database) -> None:
    row = {"action": "a", "actor": "test", "account_id": None, "camera_id": None,
           "assistant": None, "detail": {}, "at": datetime.now(UTC)}  # fmt: skip
    with db.driver() as driver:
        with pytest.raises(RuntimeError), driver.transaction():
            driver.execute(audit.INSERT, row)
            assert open_transactions(db.url) == 1  # held open, the write lock with it (SQLite)
            raise RuntimeError("the caller fails before the end of its transaction")
        assert open_transactions(db.url) == 0
        with driver.transaction():
            driver.execute(audit.INSERT, [row, {**row, "action": "b"}])  # executemany
    with db.session() as session:  # the write queue was left: a writer gets through at once
        actions = session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)).all()
    assert actions == ["a", "b"]


def test_a_missing_parameter_is_an_error_not_a_null(db: Database) -> None:
    """SQLAlchemy refuses a bindparam() left without a value; so does the driver, rather than
    bind NULL (which would read nothing, or write a row missing a value)."""
    with db.driver() as driver, pytest.raises(ArgumentError, match="account_id"):
        driver.execute(OWNED_CAMERA, {"camera_id": "c"})


def test_rows_are_read_whether_or_not_the_statement_declares_them(db: Database) -> None:
    """A Core SELECT is known to return rows when compiled; a text() one is asked of the
    cursor, and its rows are the driver's tuples."""
    plain = text("SELECT 7 AS seven")
    with db.driver() as driver:
        assert driver.execute(select(literal(7).label("seven")), {}).rows == [(7,)]
        assert driver.execute(plain, {}).rows == [(7,)]
        assert driver.execute(text("SELECT 1 WHERE 1 = 0"), {}).rows == []
