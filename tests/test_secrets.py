"""Secrets at rest: camera source credentials sealed (and resealed on key rotation), shown to
nobody but the relay, and every file under the data dir private to the service's user."""

from __future__ import annotations

import hashlib
import json
import stat
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner
from cryptography.fernet import InvalidToken
from pydantic import SecretStr
from sqlalchemy import select, text

from backends.ezviz.models import EzvizLink
from camvoice.db import Database
from camvoice.models import Account, AuditEvent, Camera
from camvoice.sealing import Unsealable
from camvoice.settings import Settings, load_settings
from camvoice.tickets import Audience, Protocol
from media.rtsps import self_signed
from media.views import RELAY_SECRET_HEADER
from service.app import create_app
from skills.events import AlexaLink
from tests.conftest import LiveServer
from tests.media_support import bare_registry, mint
from tests.oauth_support import make_owner
from tests.test_migrations import empty_url, upgrade  # noqa: F401 - empty_url is a fixture

PASSWORD = "Pa ss@W0rd%21"
SOURCE = f"rtsp://admin:{PASSWORD}@10.0.0.5:554/h264"
OLD_RING = "old:" + "o" * 32
NEW_RING = "new:" + "n" * 32


def every_value(db: Database, table: str) -> str:
    """Every column of every row of a table, as text."""
    with db.engine.connect() as conn:
        return repr([tuple(row) for row in conn.execute(text(f"SELECT * FROM {table}"))])  # noqa: S608


def cli(*args: str, env: Mapping[str, str | None]) -> str:
    """The operator's command line, run in this process (the console script costs seconds)."""
    from service.cli import main

    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def add_camera(settings: Settings, db: Database, source: str = SOURCE) -> Camera:
    make_owner(db, "owner@example.com")
    with db.session() as session:
        owner = session.scalars(select(Account)).one()
        return bare_registry(settings).add(session, owner, "Porch", actor="t", source=source)


def test_source_credentials_are_sealed_and_only_the_relay_reads_them(
    settings: Settings, db: Database, cli_env: dict[str, str]
) -> None:
    camera = add_camera(settings, db)
    stored = every_value(db, "cameras") + every_value(db, "audit_events")
    assert "admin" not in stored and "W0rd" not in stored and "Pa ss" not in stored
    with db.reading() as session:
        row = session.get(Camera, camera.id)
        assert row is not None and row.source == "rtsp://10.0.0.5:554/h264"
    listed = json.loads(cli("cameras", "list", "--json", env=cli_env))
    assert listed[0]["source"] == "rtsp://***@10.0.0.5:554/h264"
    app = create_app(settings, db)
    ticket = mint(settings, camera, Protocol.HLS, Audience.GOOGLE).split("/")[-2]
    hook = {"action": "read", "path": f"cam/{camera.id}", "protocol": "hls", "password": ticket}
    with LiveServer(app) as live:
        player = requests.post(live.url + "/media/auth", json=hook, timeout=10)
        relay = requests.post(
            live.url + "/media/auth",
            json={**hook, "want": "source"},
            headers={RELAY_SECRET_HEADER: settings.relay_secret()},
            timeout=10,
        )
    app.extensions["camvoice.relays"].shutdown()
    assert player.status_code == 200 and "W0rd" not in player.text
    assert relay.json()["source"] == SOURCE  # the relay's launch path, and it alone


def test_db_upgrade_seals_sources_kept_in_the_clear(empty_url: str, tmp_path: Path) -> None:  # noqa: F811
    db = Database(empty_url)
    try:
        upgrade(db, "0008")
        with db.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO accounts (id, email, password_hash, created_at) VALUES"
                    " ('acc1', 'o@example.com', 'x', '2026-11-01 00:00:00')"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO cameras (id, owner_id, backend, name, nicknames, online,"
                    " image_encryption, audio, sleep_mode, status_light, source, created_at,"
                    " updated_at) VALUES ('cam1', 'acc1', 'local', 'C', '[]', true, false, true,"
                    " false, true, :source, '2026-11-01 00:00:00', '2026-11-01 00:00:00')"
                ),
                {"source": SOURCE},
            )
        env = {"CAMVOICE_DATA_DIR": str(tmp_path / "data"), "CAMVOICE_DATABASE_URL": empty_url,
               "CAMVOICE_SECRET_KEY": "k" * 40}  # fmt: skip
        assert "sealed 1 camera sources" in cli("db", "upgrade", env=env)
        assert "W0rd" not in every_value(db, "cameras")
        settings = load_settings(data_dir=tmp_path / "data", secret_key="k" * 40)
        with db.reading() as session:
            camera = session.get(Camera, "cam1")
            assert camera is not None and camera.source == "rtsp://10.0.0.5:554/h264"
            assert bare_registry(settings).source_url(camera) == SOURCE
    finally:
        db.dispose()


def test_keys_reseal_moves_every_sealed_secret_to_the_new_key(
    settings: Settings, db: Database, cli_env: dict[str, str]
) -> None:
    old = settings.model_copy(update={"seal_keys": SecretStr(OLD_RING)})
    sealed = old.sealer().encrypt(b"event-token").decode()
    camera = add_camera(old, db)
    with db.session() as session:
        owner = session.scalars(select(Account)).one()
        session.add(AlexaLink(account_id=owner.id, access_token=sealed, refresh_token=sealed,
                              expires_at=datetime.now(UTC)))  # fmt: skip
        session.add(EzvizLink(account_id=owner.id, app_key="k", app_secret=sealed))
    new_only = load_settings(data_dir=settings.data_dir, secret_key="other-" + "z" * 40,
                             seal_keys=NEW_RING)  # fmt: skip
    with db.reading() as session:  # before the reseal, the new key alone opens nothing
        with pytest.raises(InvalidToken):
            new_only.sealer().decrypt(
                session.scalars(select(AlexaLink)).one().access_token.encode()
            )
        with pytest.raises(Unsealable):
            bare_registry(new_only).source_url(session.get(Camera, camera.id))  # type: ignore[arg-type]

    ring = {**cli_env, "CAMVOICE_SEAL_KEYS": f"{NEW_RING},{OLD_RING}"}
    counts = json.loads(cli("keys", "reseal", "--json", env=ring))
    assert counts["alexa_links.refresh_token"] == 1 and counts["ezviz_links.app_secret"] == 1

    opener = new_only.sealer()  # the old key and the secret key are gone: only `new` opens
    with db.reading() as session:
        alexa = session.scalars(select(AlexaLink)).one()
        ezviz = session.scalars(select(EzvizLink)).one()
        for value in (alexa.access_token, alexa.refresh_token, ezviz.app_secret):
            assert opener.decrypt(value.encode()) == b"event-token"
        row = session.get(Camera, camera.id)
        assert row is not None and bare_registry(new_only).source_url(row) == SOURCE
        assert not any("W0rd" in str(e.detail) for e in session.scalars(select(AuditEvent)))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def modes(root: Path) -> dict[str, tuple[bool, int]]:
    """(is a folder, permission bits) of everything under root, as a relay writes it."""
    found = {}
    for path in root.rglob("*"):
        try:
            info = path.stat()
        except FileNotFoundError:
            continue  # a segment the relay deleted meanwhile
        found[path.name] = (stat.S_ISDIR(info.st_mode), stat.S_IMODE(info.st_mode))
    return found


def test_client_secrets_rest_as_sha256_and_verify_in_one_hash(
    db: Database, cli_env: dict[str, str]
) -> None:
    """A client secret is 256 random bits made by `clients add` / `rotate-secret`: no dictionary
    to attack, so its SHA-256 is the right protection at rest (argon2 here would cost the token
    endpoint tens of milliseconds a request). The secret is in no column; a rotation leaves no
    trace of the old one; the check is the one hash, compared in constant time."""
    from oauth.models import OAuthClient

    uri = "https://layla.amazon.com/api/skill/link/M2AAAAAAAAAAAA"
    added = json.loads(cli("clients", "add", "--name", "Alexa", "--redirect-uri", uri, "--json",
                           env=cli_env))  # fmt: skip
    rotated = json.loads(cli("clients", "rotate-secret", added["client_id"], "--json", env=cli_env))
    stored = every_value(db, "oauth_clients")
    assert added["client_secret"] not in stored and rotated["client_secret"] not in stored
    assert hashlib.sha256(added["client_secret"].encode()).hexdigest() not in stored
    with db.reading() as session:
        client = session.get(OAuthClient, added["client_id"])
    assert client is not None
    assert client.secret_hash == hashlib.sha256(rotated["client_secret"].encode()).hexdigest()
    assert client.check_client_secret(rotated["client_secret"])
    assert not client.check_client_secret(added["client_secret"])
    assert not client.check_client_secret(client.secret_hash)  # the hash is not the secret


def test_data_dir_files_are_private(tmp_path: Path) -> None:
    """`camvoice db upgrade` on a fresh data dir, then a relay's HLS files: 0600 in 0700."""
    data = tmp_path / "fresh"
    cli("db", "upgrade", env={"CAMVOICE_DATA_DIR": str(data), "CAMVOICE_DATABASE_URL": None})
    assert mode(data) == 0o700
    assert mode(data / "camvoice.db") == 0o600 and mode(data / "secret_key") == 0o600
    db_url = f"sqlite:///{data / 'camvoice.db'}"
    db = Database(db_url)
    with db.session() as session:  # the WAL and its index exist while a connection is open
        session.execute(text("CREATE TABLE t (x INTEGER)"))
        assert mode(data / "camvoice.db-wal") == 0o600 and mode(data / "camvoice.db-shm") == 0o600

    settings = load_settings(data_dir=data, database_url=db_url, secret_key="k" * 40)
    self_signed(data / "cert.pem", data / "key.pem", "127.0.0.1")
    camera = add_camera(settings, db, source="demo")
    app = create_app(settings, db)
    try:
        with LiveServer(app) as live:
            url = mint(settings, camera, Protocol.HLS, Audience.GOOGLE)
            assert requests.get(url.replace(settings.public_url, live.url), timeout=30).ok
            made = modes(data)  # while the relay runs: its segments are there
    finally:
        app.extensions["camvoice.relays"].shutdown()
        db.dispose()
    assert any(name.endswith(".ts") for name in made) and "cert.pem" in made
    assert {name: oct(bits) for name, (folder, bits) in made.items()
            if bits != (0o700 if folder else 0o600)} == {}  # fmt: skip
