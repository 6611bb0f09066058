"""`camvoice demo` end to end: migrates, seeds five cameras idempotently, serves under gunicorn."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import requests

from camvoice.cameras import Registry
from camvoice.db import Database
from camvoice.outbox import Outbox
from service.demo import DEMO_EMAIL, seed
from tests.conftest import VENV_BIN, free_port, run_cli

EXPECTED = {
    "Front Door": ([], []),
    "Garage": (["ENCRYPTION_ON"], ["ENCRYPTION_ON"]),
    "Nursery": ([], ["AUDIO_OFF"]),
    "Backyard": (["OFFLINE"], ["OFFLINE"]),
    "Living Room": (["SLEEPING"], ["SLEEPING"]),
}


def codes(camera: dict, assistant: str) -> list[str]:
    return [b["code"] for b in camera["readiness"][assistant]["blockers"]]


def test_seed_is_idempotent(db: Database) -> None:
    with db.session() as session:
        seed(session, Registry(Outbox()))
    with db.session() as session:
        account = seed(session, Registry(Outbox()))
        assert sorted(c.name for c in account.cameras) == sorted(EXPECTED)


def test_demo_serves_within_20_seconds(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "CAMVOICE_DATA_DIR": str(tmp_path / "data")}
    env.pop("CAMVOICE_DATABASE_URL", None)
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(VENV_BIN / "camvoice"), "demo", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        healthy = False
        while time.monotonic() - started < 20 and not healthy:
            try:
                healthy = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).ok
            except requests.RequestException:  # not up yet, or a worker still booting
                time.sleep(0.2)
        assert healthy, "demo did not answer /healthz within 20 s"
        assert requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200

        listed = json.loads(
            run_cli(
                "cameras", "list", "--json", env={"CAMVOICE_DATA_DIR": env["CAMVOICE_DATA_DIR"]}
            ).stdout
        )
        got = {c["name"]: (codes(c, "alexa"), codes(c, "google")) for c in listed}
        assert got == EXPECTED
        assert {c["owner"] for c in listed} == {DEMO_EMAIL}

        garage = next(c for c in listed if c["name"] == "Garage")
        changed = json.loads(
            run_cli(
                "cameras",
                "set",
                garage["id"],
                "--encryption",
                "off",
                "--json",
                env={"CAMVOICE_DATA_DIR": env["CAMVOICE_DATA_DIR"]},
            ).stdout
        )
        assert changed["readiness"]["alexa"]["ready"] is True
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out
    assert "sign in as demo@camvoice.example" in out
