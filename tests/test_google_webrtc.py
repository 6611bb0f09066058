"""Google's WebRTC path over real HTTP: SYNC's protocols, EXECUTE's webrtc states for a Nest
display (HLS for a Chromecast), and the signaling URL (CORS, tokens, offer/answer/end), with
aiortc playing the Nest Hub."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pydantic import SecretStr
from sqlalchemy import select

from camvoice.cameras import Registry
from camvoice.db import Database
from camvoice.models import AuditEvent, Camera
from camvoice.outbox import Outbox
from camvoice.settings import Settings
from camvoice.tickets import Audience, Protocol, new_ticket
from service.app import create_app
from service.demo import DEMO_EMAIL, seed
from tests.conftest import LiveServer, wait_for, wiring
from tests.oauth_support import GOOGLE_URIS, make_owner, register
from tests.test_google import execute, fulfill, token_for
from tests.webrtc_support import Watcher, make_offer

GSTATIC = "https://www.gstatic.com"
PUBLIC = "http://127.0.0.1:8080"
STUN = {"urls": ["stun:stun.example.net:3478"]}


@pytest.fixture
def demo(db: Database) -> dict[str, str]:
    with db.session() as session:
        return {c.name: c.id for c in seed(session, Registry(Outbox())).cameras}


@pytest.fixture
def server(settings: Settings, db: Database, tmp_path: Path) -> Iterator[LiveServer]:
    configured = settings.model_copy(
        update={
            "media_dir": tmp_path / "media",
            "ice_servers": SecretStr(json.dumps([STUN])),
            "max_webrtc_sessions": 1,  # a second viewer meets MediaBusy
        }
    )
    app = create_app(configured, db)
    with LiveServer(app) as live:
        yield live
    app.extensions["camvoice.relays"].shutdown()
    wiring(app).webrtc.shutdown()  # type: ignore[attr-defined]


@pytest.fixture
def google(db: Database):  # type: ignore[no-untyped-def]
    return register(db, "Google Home", GOOGLE_URIS, "google")


def nest_hub(ids: list[str]) -> dict[str, Any]:
    """GetCameraStream as a Nest display sends it: its own player, WebRTC among the protocols."""
    body = execute(ids, ["webrtc", "hls"])
    body["payload"]["commands"][0]["execution"][0]["params"]["StreamToChromecast"] = False
    return body


def stream_states(live: LiveServer, token: str, body: dict[str, Any]) -> dict[str, Any]:
    response = fulfill(live, token, body)
    assert response.status_code == 200
    command = response.json()["payload"]["commands"][0]
    assert command["status"] == "SUCCESS", command
    return command["states"]  # type: ignore[no-any-return]


def signal(
    live: LiveServer, token: str | None, body: Any, origin: str | None = GSTATIC
) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if origin:
        headers["Origin"] = origin
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers["Content-Type"] = "application/json"
    return requests.post(live.url + "/webrtc/signal", data=data, headers=headers, timeout=30)


# --- SYNC and EXECUTE -----------------------------------------------------------------------


def test_sync_offers_webrtc_where_the_source_can_do_it(
    server: LiveServer, db: Database, google, demo
) -> None:  # type: ignore[no-untyped-def]
    make_owner(db, "mixed@example.com", {
        "Porch": {"source": "rtsp://10.0.0.7/stream1"},
        "Cloud": {"source": "ezviz", "backend": "ezviz"},
    }, registry=wiring(server.app).registry)  # fmt: skip
    demo_devices = fulfill(server, token_for(server, google, DEMO_EMAIL),
                           {"intent": "action.devices.SYNC"}).json()["payload"]["devices"]  # fmt: skip
    webrtc = {
        "cameraStreamSupportedProtocols": ["webrtc", "hls"],
        "cameraStreamNeedAuthToken": True,
    }
    # Every demo camera, blocked ones included: readiness decides at EXECUTE, not at SYNC.
    assert {d["name"]["name"]: d["attributes"] for d in demo_devices} == {n: webrtc for n in demo}
    mine = token_for(server, google, "mixed@example.com", "owner password 1")
    devices = fulfill(server, mine, {"intent": "action.devices.SYNC"}).json()["payload"]["devices"]
    assert {d["name"]["name"]: d["attributes"] for d in devices} == {
        "Porch": webrtc,
        # The EZVIZ platform serves HLS only; its signed URL is its own credential.
        "Cloud": {"cameraStreamSupportedProtocols": ["hls"], "cameraStreamNeedAuthToken": False},
    }


def test_execute_nest_hub_gets_webrtc_and_chromecast_hls(
    server: LiveServer, db: Database, google, demo
) -> None:  # type: ignore[no-untyped-def]
    token = token_for(server, google, DEMO_EMAIL)
    front = demo["Front Door"]
    states = stream_states(server, token, nest_hub([front]))
    assert set(states) == {"online", "cameraStreamProtocol", "cameraStreamSignalingUrl",
                           "cameraStreamAuthToken", "cameraStreamIceServers"}  # fmt: skip
    assert states["online"] is True and states["cameraStreamProtocol"] == "webrtc"
    assert states["cameraStreamSignalingUrl"] == PUBLIC + "/webrtc/signal"
    # Google takes the ICE servers as a string holding a JSON array of RTCIceServer.
    assert isinstance(states["cameraStreamIceServers"], str)
    assert json.loads(states["cameraStreamIceServers"]) == [STUN]
    settings = wiring(server.app).settings
    ticket = settings.signer().verify(states["cameraStreamAuthToken"], front, Protocol.WEBRTC)
    assert ticket.audience is Audience.GOOGLE and ticket.grant_id is not None
    assert 0 < ticket.expires_at - time.time() <= settings.stream_ticket_ttl

    cast = stream_states(server, token, execute([front], ["webrtc", "hls"]))  # StreamToChromecast
    assert cast["cameraStreamProtocol"] == "hls"
    assert cast["cameraStreamAccessUrl"].startswith(f"{PUBLIC}/streams/{front}/")
    assert "cameraStreamSignalingUrl" not in cast and "cameraStreamIceServers" not in cast
    # SYNC promised an auth token: Google gets the HLS ticket (already in the URL), never
    # falling back to handing the owner's OAuth token to the receiver.
    hls_ticket = cast["cameraStreamAuthToken"]
    assert hls_ticket in cast["cameraStreamAccessUrl"]
    assert settings.signer().verify(hls_ticket, front, Protocol.HLS).audience is Audience.GOOGLE


@pytest.mark.parametrize(
    ("name", "code"), [("Nursery", "deviceNotReady"), ("Garage", "securityRestriction")]
)
def test_blocked_camera_gets_googles_error_and_no_token(
    server: LiveServer, db: Database, google, demo, name: str, code: str
) -> None:  # type: ignore[no-untyped-def]
    """Audio off or Image Encryption on: Google's rule refuses before any ticket is minted."""
    token = token_for(server, google, DEMO_EMAIL)
    command = fulfill(server, token, nest_hub([demo[name]])).json()["payload"]["commands"][0]
    assert command == {"ids": [demo[name]], "status": "ERROR", "errorCode": code}
    with db.session() as session:
        denied = session.scalars(
            select(AuditEvent).where(
                AuditEvent.action == "stream.denied", AuditEvent.camera_id == demo[name]
            )
        ).one()
    assert denied.detail["protocol"] == "webrtc"


# --- The signaling URL ----------------------------------------------------------------------


def test_cors_preflight_answers_googles_player_only(server: LiveServer) -> None:
    def preflight(origin: str) -> requests.Response:
        return requests.options(server.url + "/webrtc/signal", timeout=10, headers={
            "Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        })  # fmt: skip

    google = preflight(GSTATIC)
    assert google.status_code == 204
    assert google.headers["Access-Control-Allow-Origin"] == GSTATIC
    assert google.headers["Access-Control-Allow-Methods"] == "POST, OPTIONS"
    assert google.headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type"
    assert google.headers["Access-Control-Max-Age"] == "3600"
    assert "Origin" in google.headers["Vary"]
    other = preflight("https://evil.example")
    assert not any(h.lower().startswith("access-control-") for h in other.headers)
    # The answers themselves (errors included) are readable by Google's player, no one else's.
    assert signal(server, None, {}).headers["Access-Control-Allow-Origin"] == GSTATIC
    assert (
        "Access-Control-Allow-Origin"
        not in signal(server, None, {}, "https://evil.example").headers
    )


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"deviceId": "cam"}',
        b'{"action": "answer", "deviceId": "cam", "sdp": "v=0"}',
        b'{"action": "offer", "sdp": "v=0"}',
        b'{"action": "offer", "deviceId": 5, "sdp": "v=0"}',
        b'{"action": "offer", "deviceId": "cam"}',
        b'{"action": "offer", "deviceId": "cam", "sdp": 7}',
    ],
)
def test_bad_bodies_get_400(server: LiveServer, body: bytes) -> None:
    response = signal(server, "some-token", body)
    assert response.status_code == 400
    assert response.json()["error"] == "bad_request"


def test_oversized_offer_gets_413(server: LiveServer, demo) -> None:  # type: ignore[no-untyped-def]
    sdp = "v=0\r\n" + "a=x-padding:" + "y" * (64 * 1024) + "\r\n"
    response = signal(server, "t", {"action": "offer", "deviceId": demo["Front Door"], "sdp": sdp})
    assert response.status_code == 413 and response.json()["error"] == "payload_too_large"


def test_refused_tokens_get_401_or_403_and_no_answer(
    server: LiveServer, db: Database, google, demo
) -> None:  # type: ignore[no-untyped-def]
    token = token_for(server, google, DEMO_EMAIL)
    front, garage = demo["Front Door"], demo["Garage"]
    good = stream_states(server, token, nest_hub([front]))["cameraStreamAuthToken"]
    settings = wiring(server.app).settings
    ticket = settings.signer().verify(good, front, Protocol.WEBRTC)
    expired = settings.signer().sign(new_ticket(
        front, ticket.account_id, Protocol.WEBRTC, Audience.GOOGLE, -60, ticket.grant_id))  # fmt: skip
    hls = settings.signer().sign(new_ticket(
        front, ticket.account_id, Protocol.HLS, Audience.GOOGLE, 300, ticket.grant_id))  # fmt: skip
    offer = {"action": "offer", "deviceId": front, "sdp": make_offer()}
    engine = wiring(server.app).webrtc
    cases = {
        "missing": (None, offer, 401),
        "garbage": ("not-a-ticket", offer, 401),
        "tampered": (good[:-2] + ("AA" if not good.endswith("AA") else "BB"), offer, 401),
        "expired": (expired, offer, 401),
        "an HLS ticket": (hls, offer, 401),
        "another camera's": (good, {**offer, "deviceId": garage}, 403),
    }
    for what, (bearer, body, status) in cases.items():
        response = signal(server, bearer, body)
        assert response.status_code == status, what
        assert "sdp" not in response.json() and not engine.sessions, what
        if status == 401:
            assert response.headers["WWW-Authenticate"].startswith("Bearer"), what
    # A good ticket with an offer the engine cannot serve: 400, and no session either.
    refused = signal(server, good, {**offer, "sdp": "v=0\r\nthis is not SDP\r\n"})
    assert (refused.status_code, refused.json()["error"]) == (400, "offer_refused")
    assert not engine.sessions
    # Unlinked in the Google Home app: the ticket minted for that link is dead too.
    assert fulfill(server, token, {"intent": "action.devices.DISCONNECT"}).status_code == 200
    revoked = signal(server, good, offer)
    assert revoked.status_code == 401 and "sdp" not in revoked.json() and not engine.sessions
    # `end` checks the signature and the camera before touching any session.
    assert signal(server, "not-a-ticket", {"action": "end", "deviceId": front}).status_code == 401
    assert signal(server, good, {"action": "end", "deviceId": garage}).status_code == 403
    assert signal(server, None, {"action": "end", "deviceId": front}).status_code == 401


# --- A Nest Hub playing over WebRTC (aiortc) ------------------------------------------------


def nest_hub_player(live: LiveServer, states: dict[str, Any], camera_id: str) -> Watcher:
    """What Google's player does with EXECUTE's states: post its offer to the signaling URL
    (public URL swapped for the test server's) with the auth token, play the answer."""
    url = states["cameraStreamSignalingUrl"].replace(PUBLIC, live.url)

    def answer(offer_sdp: str) -> str:
        response = requests.post(url, timeout=30, json={
            "action": "offer", "deviceId": camera_id, "sdp": offer_sdp,
        }, headers={"Authorization": f"Bearer {states['cameraStreamAuthToken']}",
                    "Origin": GSTATIC})  # fmt: skip
        assert response.status_code == 200, response.text
        assert response.headers["Access-Control-Allow-Origin"] == GSTATIC
        body = response.json()
        assert body["action"] == "answer" and set(body) == {"action", "sdp"}
        return str(body["sdp"])

    return Watcher(answer)


def test_nest_hub_plays_ends_and_is_cut_when_audio_turns_off(
    server: LiveServer, db: Database, google, demo, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG)
    token = token_for(server, google, DEMO_EMAIL)
    front = demo["Front Door"]
    engine = wiring(server.app).webrtc
    states = stream_states(server, token, nest_hub([front]))
    with nest_hub_player(server, states, front) as display:
        assert display.wait_frames(3), "no decoded video over WebRTC"
        assert "a=candidate:" in (display.answer or "")  # complete: Google does not trickle
        # A second display while the one session allowed here plays: try again later.
        other = stream_states(server, token, nest_hub([front]))["cameraStreamAuthToken"]
        busy = signal(server, other, {"action": "offer", "deviceId": front, "sdp": make_offer()})
        assert (busy.status_code, busy.json()["error"]) == (503, "busy")
        assert int(busy.headers["Retry-After"]) > 0 and len(engine.sessions) == 1
        ended = signal(
            server, states["cameraStreamAuthToken"], {"action": "end", "deviceId": front}
        )
        assert (ended.status_code, ended.json()) == (200, {})
        assert display.wait_ended(), "the session outlived Google's end"
    wait_for(lambda: not engine.sessions, "the engine to drop the ended session", 10)

    # A second EXECUTE, then the owner turns the camera's audio off: Google's rule now refuses
    # it, and the playing session is cut within 10 s.
    states = stream_states(server, token, nest_hub([front]))
    with nest_hub_player(server, states, front) as display:
        assert display.wait_frames(3)
        registry = wiring(server.app).registry
        with db.session() as session:
            registry.record(session, session.get(Camera, front), {"audio": False}, actor="test")
        assert display.wait_ended(10), "audio off did not end the Google session within 10 s"
    with db.session() as session:
        started = session.scalars(
            select(AuditEvent).where(
                AuditEvent.camera_id == front, AuditEvent.action == "stream.started"
            )
        ).all()
    # Neither the ticket nor the SDP's ICE password is in any log line.
    passwords = [line for line in (display.answer or "").split("\r\n") if "ice-pwd" in line]
    assert passwords and not any(p.split(":", 1)[1] in caplog.text for p in passwords)
    assert states["cameraStreamAuthToken"] not in caplog.text
    # Each session is on the owner's record as Google's, over WebRTC.
    assert [(e.assistant, e.detail["protocol"]) for e in started] == [("google", "webrtc")] * 2
