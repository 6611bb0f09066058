"""The web app over real HTTP: health, readiness, and JSON errors instead of tracebacks."""

from __future__ import annotations

from pathlib import Path

from camvoice.db import Database
from camvoice.settings import Settings, load_settings
from service.app import create_app
from tests.conftest import LiveServer


def test_healthz_and_readyz(live: LiveServer) -> None:
    assert live.get("/healthz").json() == {"status": "ok"}
    ready = live.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "database": "ok", "migrations": "current"}


def test_readyz_reports_unmigrated_database(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, secret_key="k" * 40)
    with LiveServer(create_app(settings)) as live:
        assert live.get("/healthz").status_code == 200
        ready = live.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["migrations"] == "pending"


def test_unknown_path_and_method_are_json(live: LiveServer) -> None:
    missing = live.get("/no/such/thing")
    assert missing.status_code == 404
    assert missing.headers["Content-Type"] == "application/json"
    assert missing.json()["error"] == "not_found"
    wrong = live.post("/healthz")
    assert wrong.status_code == 405
    assert wrong.json()["error"] == "method_not_allowed"
    assert "GET" in wrong.headers["Allow"]


def test_unexpected_error_is_json_without_traceback(settings: Settings, db: Database) -> None:
    app = create_app(settings, db)

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("secret internals")

    with LiveServer(app) as live:
        response = live.get("/boom")
    assert response.status_code == 500
    assert response.json() == {
        "error": "server_error",
        "message": "Internal error; it has been logged.",
    }
    assert "secret internals" not in response.text
