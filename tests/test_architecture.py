"""The floors of the design hold: layering, wiring passed in (never shared through module
globals), a grant check that fails closed, reads that never queue behind writers, a quick CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select, text

from camvoice.cameras import Registry
from camvoice.db import Database
from camvoice.models import Account, OutboxEvent
from camvoice.outbox import Outbox
from camvoice.services import Services
from camvoice.settings import Settings
from camvoice.streams import Streams
from camvoice.tickets import Audience, Protocol, TicketError
from service.app import create_app
from tests.conftest import VENV_BIN, wiring, write_held
from tests.oauth_support import make_owner

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept() -> None:
    """Core <- adapters <- composition root, adapters apart but for oauth.tokens (pyproject)."""
    result = subprocess.run(
        [str(VENV_BIN / "lint-imports")], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_help_loads_no_database_or_web_stack() -> None:
    """`camvoice --help` imports the commands, not SQLAlchemy, Alembic, Flask or an adapter's
    protocol code: those load when a command runs."""
    probe = (
        "import sys\n"
        "from service.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('MODULES=' + __import__('json').dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert "accounts" in result.stdout and "clients" in result.stdout  # adapters' commands too
    loaded = json.loads(result.stdout.split("MODULES=", 1)[1])
    heavy = {"sqlalchemy", "alembic", "flask", "authlib", "ask_sdk_core", "google", "requests"}
    assert sorted(heavy & {name.split(".")[0] for name in loaded}) == []


def test_web_worker_loads_no_webrtc_engine_or_redis_it_does_not_use(tmp_path: Path) -> None:
    """A web worker of `camvoice serve` (its WebRTC sessions on a media node, no Redis
    configured) never imports aiortc, PyAV or redis: 32 MB of every worker's RSS. The
    master's preloaded WORKER_IMPORTS keep to that too."""
    probe = (
        "import json, sys, importlib\n"
        "from service.app import WORKER_IMPORTS, create_app\n"
        "for name in WORKER_IMPORTS:\n    importlib.import_module(name)\n"
        "client = create_app().test_client()\n"
        "assert client.get('/healthz').status_code == 200\n"
        "client.get('/readyz')\n"
        "print('MODULES=' + json.dumps(sorted(sys.modules)))\n"
    )
    env = {**os.environ, "CAMVOICE_DATA_DIR": str(tmp_path), "CAMVOICE_SECRET_KEY": "k" * 48,
           "CAMVOICE_DATABASE_URL": f"sqlite:///{tmp_path / 'web.db'}",
           "CAMVOICE_MEDIA_URLS": "http://127.0.0.1:9"}  # fmt: skip
    env.pop("CAMVOICE_REDIS_URL", None)
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert "MODULES=" in result.stdout, result.stderr[-2000:]
    loaded = set(json.loads(result.stdout.split("MODULES=", 1)[1]))
    packages = {name.split(".")[0] for name in loaded}
    assert sorted({"aiortc", "av", "redis"} & packages) == []
    assert sorted({"media.webrtc", "media.feeds"} & loaded) == []
    assert "media.views" in loaded  # the players' endpoints are there; only the engine is not


def test_web_app_without_media_node_holds_its_own_webrtc_sessions(settings: Settings) -> None:
    """Without CAMVOICE_MEDIA_URLS the app builds this process's aiortc engine."""
    from media.webrtc import WebRTCEngine

    assert not settings.media_urls
    assert isinstance(Services.of(create_app(settings)).webrtc, WebRTCEngine)


def test_grant_check_fails_closed_until_one_is_wired(settings: Settings, db: Database) -> None:
    """A Streams built without the OAuth server's grant check refuses every linked ticket."""
    make_owner(db, "owner@example.com", {"Door": {}})
    registry = Registry(Outbox())
    with db.session() as session:
        camera = session.scalars(select(Account)).one().cameras[0]
    unwired = Streams(settings, registry)
    token = unwired.mint(camera, Protocol.HLS, Audience.GOOGLE, "grant-that-is-live").split("/")[-2]
    with pytest.raises(TicketError, match="link_revoked"), db.session() as session:
        unwired.admit(session, token, camera.id, Protocol.HLS)
    unlinked = unwired.mint(camera, Protocol.HLS, Audience.WEB).split("/")[-2]  # the console's
    with db.session() as session:
        assert unwired.admit(session, unlinked, camera.id, Protocol.HLS)[0].id == camera.id


def test_two_apps_in_one_process_share_no_wiring(
    settings: Settings, db: Database, tmp_path: Path
) -> None:
    """Subscribers and backends live on each app's own Services, not in module globals: an app
    without Alexa credentials writes no Alexa events, whatever another app subscribed."""
    with_alexa = create_app(
        settings.model_copy(update={
            "alexa_client_id": "amzn1.application-oa2-client.x", "alexa_client_secret": "s",
            "media_dir": tmp_path / "a"}),
        db,
    )  # fmt: skip
    without = create_app(settings.model_copy(update={"media_dir": tmp_path / "b"}), db)
    assert wiring(with_alexa).outbox.handler_for("alexa.events") is not None
    assert wiring(without).outbox.handler_for("alexa.events") is None
    make_owner(db, "owner@example.com")
    with db.session() as session:
        owner = session.scalars(select(Account)).one()
        wiring(without).registry.add(session, owner, "Porch", actor="test")
        subscribers = session.scalars(select(OutboxEvent.subscriber)).all()
    assert "alexa.events" not in subscribers
    for app in (with_alexa, without):
        app.extensions["camvoice.relays"].shutdown()


def test_reads_do_not_queue_behind_a_writer(tmp_path: Path) -> None:
    """On SQLite a reading() unit of work takes no lock: it answers while a writer holds the
    write lock (every write transaction takes it at BEGIN). And it cannot write."""
    db = Database(f"sqlite:///{tmp_path / 'camvoice.db'}")
    db.upgrade()
    with write_held(db) as writer:
        with db.reading() as session:  # would wait out busy_timeout (15 s) behind the writer
            assert session.execute(text("SELECT count(*) FROM accounts")).scalar() == 0
        assert writer.is_alive()  # the writer still held its lock while we read
        with pytest.raises(RuntimeError, match="must not write"), db.reading() as session:
            session.add(Account(email="a@example.com", password_hash="x"))
    db.dispose()
