"""Storage on SQLite and PostgreSQL: migrations, accounts, cameras, audit and outbox atomicity."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, text

from backends.local import LocalBackend
from camvoice.accounts import AccountError, authenticate, create_account
from camvoice.addresses import AddressPolicy, parse_networks
from camvoice.cameras import CameraError, Registry
from camvoice.db import Database
from camvoice.models import Account, AuditEvent, Camera, OutboxEvent
from camvoice.outbox import Outbox
from camvoice.settings import Settings
from tests.conftest import TEST_SOURCE_NETWORKS


@pytest.fixture
def registry(settings: Settings) -> Registry:
    """A registry with the local backend and a bare outbox: no subscriber unless a test adds one."""
    registry = Registry(
        Outbox(), AddressPolicy(parse_networks(TEST_SOURCE_NETWORKS)), settings.sealer()
    )
    registry.register(LocalBackend())
    return registry


def count(db: Database, model: type) -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_migrated_database_is_current(db: Database) -> None:
    assert db.pending_migrations() is False
    db.upgrade()  # idempotent
    assert db.pending_migrations() is False


def test_empty_database_reports_pending(tmp_path) -> None:  # type: ignore[no-untyped-def]
    fresh = Database(f"sqlite:///{tmp_path / 'empty.db'}")
    assert fresh.pending_migrations() is True


def test_sqlite_runs_wal_with_foreign_keys(tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    with db.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_account_password_is_argon2id_and_checks(db: Database) -> None:
    with db.session() as session:
        account = create_account(session, "Owner@Example.com", "correct horse")
        assert account.password_hash.startswith("$argon2id$")
        assert "correct horse" not in account.password_hash
    assert authenticate(db, "owner@example.com", "correct horse") is not None
    assert authenticate(db, "owner@example.com", "wrong password") is None
    assert authenticate(db, "nobody@example.com", "correct horse") is None
    with db.session() as session, pytest.raises(AccountError, match="already exists"):
        create_account(session, "OWNER@example.com", "another password")


def test_deleting_account_cascades_to_cameras(db: Database, registry: Registry) -> None:
    with db.session() as session:
        owner = create_account(session, "a@example.com", "password-a")
        registry.add(session, owner, "Porch", actor="test")
    with db.session() as session:
        session.delete(session.scalars(select(Account)).one())
    assert count(db, Camera) == 0


def test_change_writes_audit_and_outbox_in_same_transaction(
    db: Database, registry: Registry
) -> None:
    delivered: list[dict] = []
    registry.outbox.subscribe("camera.changed", "recorder", lambda topic, p: delivered.append(p))
    with db.session() as session:
        owner = create_account(session, "a@example.com", "password-a")
        camera_id = registry.add(session, owner, "Porch", actor="test").id
    before_audit, before_outbox = count(db, AuditEvent), count(db, OutboxEvent)

    with pytest.raises(RuntimeError), db.session() as session:
        camera = session.get(Camera, camera_id)
        assert registry.record(session, camera, {"image_encryption": True}, actor="test")
        raise RuntimeError("crash before commit")
    assert (count(db, AuditEvent), count(db, OutboxEvent)) == (before_audit, before_outbox)
    with db.session() as session:
        assert session.get(Camera, camera_id).image_encryption is False

    with db.session() as session:
        camera = session.get(Camera, camera_id)
        assert registry.record(session, camera, {"image_encryption": True}, actor="test") == {
            "image_encryption": True
        }
        assert registry.record(session, camera, {"image_encryption": True}, actor="test") == {}
    assert count(db, AuditEvent) == before_audit + 1
    with db.session() as session:
        event = session.scalars(select(OutboxEvent)).one()
        assert event.payload == {
            "account_id": event.payload["account_id"],
            "camera_id": camera_id,
            "changed": ["image_encryption"],
        }
        audit_row = session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc())).first()
        assert audit_row.detail == {
            "before": {"image_encryption": False},
            "after": {"image_encryption": True},
        }


def test_bad_camera_input_is_refused(db: Database, registry: Registry) -> None:
    with db.session() as session:
        owner = create_account(session, "a@example.com", "password-a")
        with pytest.raises(CameraError, match="rtsp"):
            registry.add(session, owner, "Porch", actor="test", source="http://cam/stream")
        with pytest.raises(CameraError, match="empty"):
            registry.add(session, owner, "   ", actor="test")
        camera = registry.add(session, owner, "Porch", actor="test")
        with pytest.raises(CameraError, match="unknown"):
            registry.record(session, camera, {"owner_id": "acc_other"}, actor="test")


def test_rtsp_credentials_never_reach_the_audit_log(db: Database, registry: Registry) -> None:
    with db.session() as session:
        owner = create_account(session, "a@example.com", "password-a")
        camera = registry.add(session, owner, "Porch", actor="test")
        registry.record(
            session, camera, {"source": "rtsp://admin:pa55word@10.0.0.9:554/h264"}, actor="t"
        )
    with db.session() as session:
        details = [str(e.detail) for e in session.scalars(select(AuditEvent))]
    assert not any("pa55word" in d for d in details)
    assert any("rtsp://***@10.0.0.9:554/h264" in d for d in details)


def test_one_owner_never_sees_another_owners_camera(db: Database, registry: Registry) -> None:
    with db.session() as session:
        alice = create_account(session, "alice@example.com", "password-a")
        bob = create_account(session, "bob@example.com", "password-b")
        alice_cam = registry.add(session, alice, "Alice Porch", actor="test")
        registry.add(session, bob, "Bob Garage", actor="test")
        assert registry.owned_camera(session, bob.id, alice_cam.id) is None
        assert registry.owned_camera(session, alice.id, alice_cam.id) is alice_cam
        assert [c.name for c in registry.owned_cameras(session, bob.id)] == ["Bob Garage"]


def test_read_owned_camera_is_a_copy_of_every_column(db: Database, registry: Registry) -> None:
    """The directives' Core read gives what the ORM loads, column for column, or None for
    another owner's camera; the copy is in no session (a reader's: nothing is written)."""
    with db.session() as session:
        alice = create_account(session, "alice@example.com", "password-a")
        bob = create_account(session, "bob@example.com", "password-b")
        camera = registry.add(session, alice, "Porch", actor="test", nicknames=["door"],
                              model="C6", width=640, height=360)  # fmt: skip
        alice_id, bob_id, camera_id = alice.id, bob.id, camera.id
    with db.reading() as session:
        loaded = session.get(Camera, camera_id)
        copy = registry.read_owned_camera(session, alice_id, camera_id)
        assert registry.read_owned_camera(session, bob_id, camera_id) is None
        assert copy is not None and copy not in session
        for column in Camera.__table__.c:
            assert getattr(copy, column.key) == getattr(loaded, column.key), column.key


def test_remove_camera_audits_and_publishes(db: Database, registry: Registry) -> None:
    registry.outbox.subscribe("camera.removed", "recorder", lambda topic, p: None)
    with db.session() as session:
        owner = create_account(session, "a@example.com", "password-a")
        camera = registry.add(session, owner, "Porch", actor="test")
    with db.session() as session:
        registry.remove(session, session.get(Camera, camera.id), actor="test")
    assert count(db, Camera) == 0
    with db.session() as session:
        assert session.scalars(select(OutboxEvent.topic)).all() == ["camera.removed"]
        actions = session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)).all()
        assert actions == ["camera.added", "camera.removed"]
