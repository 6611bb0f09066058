"""Shared fixtures: a real database (SQLite file or PostgreSQL), settings, a live HTTP server.

PostgreSQL tests need the server on 127.0.0.1:5432. Outside CI they skip with the reason when it
is unreachable; with CAMVOICE_REQUIRE_POSTGRES=1 (set by .ci/run) they fail instead.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from flask import Flask
from sqlalchemy import event, text
from werkzeug.serving import WSGIRequestHandler, make_server

from camvoice.db import Database
from camvoice.services import Services
from camvoice.settings import Settings, load_settings
from service.app import create_app

POLL = 0.05  # seconds between two looks at a condition


def until(condition: Callable[[], object], seconds: float) -> bool:
    """Poll `condition` until it holds or `seconds` pass: whether it held. Tests wait for what
    they need, never for a fixed time, so a loaded machine only makes them slower."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL)
    return True


def wait_for(condition: Callable[[], object], what: str, seconds: float = 60) -> None:
    """Poll `condition` until it holds, failing with `what` after `seconds`."""
    assert until(condition, seconds), f"timed out waiting for {what}"


PG_ADMIN = os.environ.get("CAMVOICE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REQUIRE_PG = os.environ.get("CAMVOICE_REQUIRE_POSTGRES") == "1"
VENV_BIN = Path(sys.executable).parent
# Fakes and test cameras listen on loopback, and a few tests name LAN or documentation
# addresses: listed as an operator lists a VPN's networks (camvoice refuses them otherwise).
TEST_SOURCE_NETWORKS = "127.0.0.0/8, 10.0.0.0/8, 192.0.2.0/24"


@contextmanager
def statements(db: Database) -> Iterator[list[str]]:
    """The SQL statements the app runs meanwhile (the connection's pre-ping is not one)."""
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    event.listen(db.engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(db.engine, "before_cursor_execute", note)


@contextmanager
def write_held(db: Database) -> Iterator[threading.Thread]:
    """A writing transaction (on SQLite: the write lock) held by another thread for the
    block's length; the thread, to check it still holds it."""
    holding, release = threading.Event(), threading.Event()

    def writer() -> None:
        with db.session() as session:
            session.execute(text("UPDATE accounts SET email = email"))
            holding.set()
            release.wait(30)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert holding.wait(10), "the writer did not get its transaction"
        yield thread
    finally:
        release.set()
        thread.join(10)


def _pg_reachable() -> str | None:
    try:
        with psycopg.connect(PG_ADMIN, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL unreachable at {PG_ADMIN}: {type(exc).__name__}"


def _pg_url(name: str) -> str:
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A migrated template database; each test clones it (fast) and drops its clone."""
    problem = _pg_reachable()
    if problem:
        if REQUIRE_PG:
            pytest.fail(problem + " and CAMVOICE_REQUIRE_POSTGRES=1")
        pytest.skip(problem)
    name = f"camvoice_tpl_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db = Database(_pg_url(name).replace("postgresql://", "postgresql+psycopg://"))
    db.upgrade()
    db.dispose()
    yield name
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def new_pg_database(template: str) -> str:
    name = f"camvoice_t_{secrets.token_hex(6)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return name


def drop_pg_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def migrated_database(kind: str, request: pytest.FixtureRequest, folder: Path) -> Iterator[str]:
    """The URL of a migrated, empty database of `kind` ("sqlite" in `folder`, or "postgresql"
    cloned from the session's template and dropped afterwards)."""
    if kind == "sqlite":
        url = f"sqlite:///{folder / 'camvoice.db'}"
        db = Database(url)
        db.upgrade()
        db.dispose()
        yield url
        return
    template = request.getfixturevalue("pg_template")
    name = new_pg_database(template)
    try:
        yield _pg_url(name).replace("postgresql://", "postgresql+psycopg://")
    finally:
        drop_pg_database(name)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database of each kind."""
    yield from migrated_database(request.param, request, tmp_path)


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    yield database
    database.dispose()


@pytest.fixture
def pg_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated PostgreSQL database alone, for what only a server does."""
    for url in migrated_database("postgresql", request, tmp_path):
        database = Database(url)
        yield database
        database.dispose()


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return load_settings(
        data_dir=tmp_path / "data",
        database_url=db_url,
        secret_key="test-secret-key-" + "x" * 32,
        public_url="http://127.0.0.1:8080",
        source_networks=TEST_SOURCE_NETWORKS,
    )


def wiring(app: Flask) -> Services:
    """The wiring a web app was built with: its registry, streams and outbox."""
    return Services.of(app)


class QuietHandler(WSGIRequestHandler):
    """No request lines: they carry URLs with tickets (production runs gunicorn, access log off)."""

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


class LiveServer:
    """The real WSGI app on a real socket, in a thread."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.thread.join(5)

    def get(self, path: str, **kw: Any) -> requests.Response:
        return requests.get(self.url + path, timeout=10, **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        return requests.post(self.url + path, timeout=10, **kw)


@pytest.fixture
def app(settings: Settings, db: Database) -> Flask:
    return create_app(settings, db)


@pytest.fixture
def live(app: Flask) -> Iterator[LiveServer]:
    with LiveServer(app) as server:
        yield server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_cli(
    *args: str, env: dict[str, str], stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run the installed `camvoice` console script, as an operator would."""
    result = subprocess.run(
        [str(VENV_BIN / "camvoice"), *args],
        env={**os.environ, **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"camvoice {' '.join(args)} failed: {result.stderr}")
    return result


@pytest.fixture
def cli_env(settings: Settings, db_url: str) -> dict[str, str]:
    return {
        "CAMVOICE_DATA_DIR": str(settings.data_dir),
        "CAMVOICE_DATABASE_URL": db_url,
        "CAMVOICE_SECRET_KEY": "test-secret-key-" + "x" * 32,
        "CAMVOICE_SOURCE_NETWORKS": TEST_SOURCE_NETWORKS,
    }


def require_gstreamer() -> None:
    """Skip without Debian's GStreamer RTSP server, or fail when CI says it must be there."""
    from media.rtsps import gstreamer_available

    if not gstreamer_available():
        if os.environ.get("CAMVOICE_REQUIRE_GSTREAMER") == "1":
            pytest.fail("GStreamer RTSP server missing and CAMVOICE_REQUIRE_GSTREAMER=1")
        pytest.skip("GStreamer RTSP server not installed (deploy/install-gstreamer.sh)")


def with_relay(settings: Settings, tmp_path: Path, **more: Any) -> Settings:
    """Settings that run the RTSPS relay on a free port, with a self-signed certificate for
    127.0.0.1 (and localhost) in `tmp_path`, and HLS media under `tmp_path`."""
    from media.rtsps import self_signed

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    self_signed(cert, key, "127.0.0.1")
    return settings.model_copy(update={
        "relay_enabled": True, "rtsps_port": free_port(), "rtsps_cert": cert, "rtsps_key": key,
        "media_dir": tmp_path / "media", **more,
    })  # fmt: skip


@contextmanager
def running_relay(settings: Settings, app_url: str) -> Iterator[None]:
    """The RTSPS relay subprocess, up and listening, stopped afterwards."""
    from media.rtsps import start_relay

    process = start_relay(settings, app_url)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", settings.rtsps_port), 1).close()
                break
            except OSError:
                assert process.poll() is None, "relay exited"
                time.sleep(0.2)
        yield
    finally:
        process.terminate()
        process.wait(10)
