"""One running camvoice per database kind, set up once per test module, for hostile-input tests.

Building a linked world (demo cameras, an Alexa and a Google link, a signed-in console) costs
several argon2 sign-ins, so the hostile-input tests and the fuzz suite share one per module.
Everything is real: the app over HTTP on a threaded server, the database (SQLite file or a
PostgreSQL clone of the migrated template), the OAuth linking flow.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from pydantic import SecretStr

from camvoice.db import Database
from camvoice.models import Camera
from camvoice.settings import load_settings
from camvoice.tickets import Audience, Protocol
from service.app import create_app
from service.demo import DEMO_EMAIL, DEMO_PASSWORD, seed
from tests.conftest import LiveServer, migrated_database, wiring
from tests.oauth_support import (
    ALEXA_URIS,
    GOOGLE_URIS,
    Browser,
    Client,
    csrf_of,
    link,
    register,
)

FORWARDER_SECRET = "forwarder-secret-for-hostile-tests-0123"
SKILL_ID = "amzn1.ask.skill.00000000-aaaa-bbbb-cccc-444444444444"


@dataclass
class World:
    """A running app with an owner linked to Alexa and Google and signed in to the console."""

    live: LiveServer
    db: Database
    kind: str  # "sqlite" or "postgresql"
    cameras: dict[str, str]  # demo camera name -> id
    alexa_token: str
    google_token: str
    google: Client
    alexa: Client
    console: requests.Session
    csrf: str
    hls_url: str  # a valid web ticket URL (Front Door)
    jpeg_url: str

    @property
    def url(self) -> str:
        return self.live.url

    def signed(self, body: bytes, timestamp: str | None = None) -> requests.Response:
        """POST a body to /alexa/smart-home as the Lambda forwarder signs it."""
        ts = timestamp if timestamp is not None else str(int(time.time()))
        mac = hmac.new(FORWARDER_SECRET.encode(), ts.encode() + b"." + body, hashlib.sha256)
        return requests.post(
            self.url + "/alexa/smart-home",
            data=body,
            timeout=30,
            headers={"X-Camvoice-Timestamp": ts, "X-Camvoice-Signature": mac.hexdigest()},
        )


def deep_json(depth: int) -> bytes:
    """Arrays nested `depth` deep: `[[[...]]]`."""
    return b"[" * depth + b"]" * depth


def forged_ticket(payload: bytes) -> str:
    """A ticket-shaped token whose payload is `payload` and whose MAC is wrong."""
    return base64.urlsafe_b64encode(payload).rstrip(b"=").decode() + ".AAAA"


def alexa_error(response: requests.Response) -> tuple[str, str]:
    """(namespace, type) of an Alexa ErrorResponse answered with HTTP 200."""
    assert response.status_code == 200, response.text
    event = response.json()["event"]
    assert event["header"]["name"] == "ErrorResponse", event
    return event["header"]["namespace"], event["payload"]["type"]


def google_protocol_error(response: requests.Response) -> None:
    assert response.status_code == 400, response.text
    assert response.json()["payload"]["errorCode"] == "protocolError"


def oauth_error(response: requests.Response, error: str, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["error"] == error


def ticket_paths(world: World, token: str) -> list[str]:
    """Every media path that carries a ticket, for the Front Door camera."""
    camera = world.cameras["Front Door"]
    return [
        f"/streams/{camera}/{token}/index.m3u8",
        f"/streams/{camera}/{token}/seg_00001.ts",
        f"/streams/{camera}/{token}/p/sealed",
        f"/snapshots/{camera}/{token}.jpg",
    ]


def build_world(
    kind: str, request: pytest.FixtureRequest, folder: Path, **overrides: Any
) -> Iterator[World]:
    """The world on a fresh database of `kind`; `overrides` go into its settings."""
    for url in migrated_database(kind, request, folder):
        settings = load_settings(
            data_dir=folder / "data",
            database_url=url,
            secret_key="test-secret-key-" + "x" * 32,
            public_url="http://127.0.0.1:8080",
        ).model_copy(update={
            "alexa_forwarder_secret": SecretStr(FORWARDER_SECRET), "alexa_skill_id": SKILL_ID,
            "alexa_verify_requests": False, "media_dir": folder / "media", **overrides,
        })  # fmt: skip
        db = Database(url)
        app = create_app(settings, db)
        try:
            with LiveServer(app) as live:
                yield _populate(live, db, kind)
        finally:
            app.extensions["camvoice.relays"].shutdown()
            db.dispose()


def _populate(live: LiveServer, db: Database, kind: str) -> World:
    services = wiring(live.app)
    with db.session() as session:
        cameras = {c.name: c.id for c in seed(session, services.registry).cameras}
    alexa = register(db, "Amazon Alexa", ALEXA_URIS, "alexa")
    google = register(db, "Google Home", GOOGLE_URIS, "google")
    _, alexa_token = link(live, alexa, DEMO_EMAIL, password=DEMO_PASSWORD)
    _, google_token = link(live, google, DEMO_EMAIL, "client_secret_post", DEMO_PASSWORD)
    browser = Browser(live)
    page = browser.sign_in(
        browser.open(live.url + "/oauth/login?next=/console"), DEMO_EMAIL, DEMO_PASSWORD
    )
    assert page.status_code == 200 and re.search("Front Door", page.text)
    with db.reading() as session:
        front = session.get(Camera, cameras["Front Door"])
    assert front is not None
    streams = services.streams
    return World(
        live=live, db=db, kind=kind, cameras=cameras,
        alexa_token=str(alexa_token["access_token"]),
        google_token=str(google_token["access_token"]),
        google=google, alexa=alexa, console=browser.http, csrf=csrf_of(page.text),
        hls_url=streams.mint(front, Protocol.HLS, Audience.WEB),
        jpeg_url=streams.mint(front, Protocol.JPEG, Audience.WEB),
    )  # fmt: skip


def ticket_of(url: str) -> str:
    """The ticket inside a minted stream or snapshot URL."""
    match = re.search(r"/(?:streams|snapshots)/[^/]+/([^/]+?)(?:/index\.m3u8|\.jpg)$", url)
    assert match, url
    return match.group(1)


def as_json(value: Any) -> bytes:
    return json.dumps(value).encode()
