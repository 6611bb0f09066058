"""The WebRTC engine (issue 16): offers answered at once and played by a real WebRTC client.

The client is aiortc (tests/webrtc_support.py), offering as Echo Show and Nest Hub do (recvonly
video and audio, all candidates gathered) and counting video frames it DECODED. Tickets are the
core's (`Streams.open`), admitted again by the engine and re-checked while the session plays.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select

from camvoice.accounts import find_account
from camvoice.db import Database
from camvoice.models import AuditEvent, Camera
from camvoice.services import Services
from camvoice.settings import Settings
from camvoice.tickets import Audience, Protocol
from camvoice.webrtc import Answer, OfferRefused, TicketRefused
from media.webrtc import WebRTCEngine
from service.app import create_app
from tests.media_support import bare_registry
from tests.oauth_support import make_owner
from tests.webrtc_support import Watcher, make_offer


@pytest.fixture
def webrtc_settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(update={"media_dir": tmp_path / "media"})


@pytest.fixture
def app(webrtc_settings: Settings, db: Database) -> Iterator[Flask]:
    app = create_app(webrtc_settings, db)
    yield app
    engine(app).shutdown()
    app.extensions["camvoice.relays"].shutdown()


def engine(app: Flask) -> WebRTCEngine:
    webrtc = Services.of(app).webrtc
    assert isinstance(webrtc, WebRTCEngine)
    return webrtc


def add_camera(
    db: Database, name: str = "Front Door", owner: str = "owner@example.com", **fields: object
) -> Camera:
    with db.session() as session:
        exists = find_account(session, owner) is not None
    if not exists:
        make_owner(db, owner)
    with db.session() as session:
        account = find_account(session, owner)
        fields.setdefault("source", "demo")
        return bare_registry().add(session, account, name, actor="test", **fields)


def ticket(app: Flask, camera: Camera, audience: Audience = Audience.ALEXA, **kw: object) -> str:
    services = Services.of(app)
    opened = services.streams.open(services.db, camera, audience, Protocol.WEBRTC, **kw)
    assert opened.url == services.settings.public_url + "/webrtc/signal"
    assert opened.token is not None
    return opened.token


def answerer(app: Flask, token: str, camera_id: str, session_id: str | None = None):  # type: ignore[no-untyped-def]
    answers: list[Answer] = []

    def answer(offer: str) -> str:
        answers.append(engine(app).answer(token, camera_id, offer, session_id))
        return answers[-1].sdp

    answer.answers = answers  # type: ignore[attr-defined]
    return answer


def test_a_demo_camera_plays_over_webrtc(app: Flask, db: Database) -> None:
    camera = add_camera(db)
    with Watcher(answerer(app, ticket(app, camera), camera.id)) as display:
        assert display.wait_frames(5), "no video frames decoded"
        answer = display.answer
        assert answer is not None
        assert "a=candidate:" in answer and "a=end-of-candidates" in answer
        assert "a=group:BUNDLE" in answer and "a=rtcp-mux" in answer
        assert "a=fingerprint:sha-256" in answer
        assert answer.count("a=sendonly") == 2
        assert "H264/90000" in answer and "opus/48000" in answer
        assert until_audio(display)
    with db.reading() as session:
        started = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "stream.started")
        ).all()
    assert [e.detail.get("protocol") for e in started] == ["webrtc"]


def until_audio(display: Watcher) -> bool:
    from tests.conftest import until

    return until(lambda: display.audio_frames > 0, 20)


def test_bad_tickets_are_refused(app: Flask, db: Database) -> None:
    camera = add_camera(db)
    other = add_camera(db, "Garage")
    good = ticket(app, camera)
    sdp = make_offer()
    for token, camera_id, reason in [
        ("garbage", camera.id, "tampered"),
        (good, other.id, "wrong_camera"),
        (good[:-2] + "xx", camera.id, "tampered"),
    ]:
        with pytest.raises(TicketRefused) as refused:
            engine(app).answer(token, camera_id, sdp)
        assert refused.value.reason == reason
    with pytest.raises(OfferRefused):
        engine(app).answer(good, camera.id, "v=0\r\nnot sdp")
