"""Migrations carry old rows into new rules: every client gets an audience, the simulator's
clients are marked apart, and made-up camera facts become unknown."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from alembic import command
from sqlalchemy import text

from camvoice.db import Database, alembic_config
from tests.conftest import PG_ADMIN, _pg_url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each kind (not the migrated template the other tests clone)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    request.getfixturevalue("pg_template")  # skips, or fails in CI, when PostgreSQL is away
    name = f"camvoice_m_{secrets.token_hex(6)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield _pg_url(name).replace("postgresql://", "postgresql+psycopg://")
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def upgrade(db: Database, revision: str) -> None:
    with db.engine.begin() as conn:
        cfg = alembic_config(db.url)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def test_0007_gives_every_client_an_audience_and_unmakes_camera_facts(empty_url: str) -> None:
    db = Database(empty_url)
    try:
        upgrade(db, "0006")
        clients = [
            ("c1", "Amazon Alexa", '["https://layla.amazon.com/api/skill/link/X"]'),
            ("c2", "Google", '["https://oauth-redirect.googleusercontent.com/r/p"]'),
            ("c3", "Dashboard", '["https://dash.example.com/cb"]'),
            ("c4", "camvoice simulator (Google)", '["http://127.0.0.1/simulator"]'),
        ]
        with db.engine.begin() as conn:
            for client_id, name, uris in clients:
                conn.execute(
                    text(
                        "INSERT INTO oauth_clients (client_id, name, assistant, redirect_uris,"
                        " public, created_at) VALUES (:id, :name, NULL, :uris, false, :now)"
                    ),
                    {"id": client_id, "name": name, "uris": uris, "now": "2026-11-01 00:00:00"},
                )
            conn.execute(
                text(
                    "INSERT INTO accounts (id, email, password_hash, created_at)"
                    " VALUES ('acc1', 'o@example.com', 'x', '2026-11-01 00:00:00')"
                )
            )
            for camera_id, source in (("cam1", "rtsp://10.0.0.9/s"), ("cam2", "demo")):
                conn.execute(
                    text(
                        "INSERT INTO cameras (id, owner_id, backend, name, nicknames, model,"
                        " firmware, online, image_encryption, audio, sleep_mode, status_light,"
                        " source, created_at, updated_at) VALUES (:id, 'acc1', 'local', 'C',"
                        " '[]', 'camvoice virtual camera', '1.0.0', true, false, true, false,"
                        " true, :source, '2026-11-01 00:00:00', '2026-11-01 00:00:00')"
                    ),
                    {"id": camera_id, "source": source},
                )
        db.upgrade()
        with db.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT client_id, assistant, simulator FROM oauth_clients ORDER BY 1")
            ).all()
            facts = conn.execute(text("SELECT id, model, firmware FROM cameras ORDER BY 1")).all()
        assert [tuple(r) for r in rows] == [
            ("c1", "alexa", False),
            ("c2", "google", False),
            ("c3", "other", False),
            ("c4", "other", True),
        ]
        assert [tuple(r) for r in facts] == [
            ("cam1", None, None),  # a real camera: the old defaults named nothing real
            ("cam2", "camvoice virtual camera", "1.0.0"),  # the demo pattern is that camera
        ]
    finally:
        db.dispose()
