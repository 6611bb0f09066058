"""The WebRTC engine (issue 16): offers answered at once and played by a real WebRTC client.

The client is aiortc (tests/webrtc_support.py), offering as Echo Show and Nest Hub do (recvonly
video and audio, all candidates gathered) and counting video frames it DECODED. Tickets are the
core's (`Streams.open`), admitted again by the engine and re-checked while the session plays.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from aiortc.sdp import SessionDescription
from flask import Flask
from sqlalchemy import select

from camvoice.accounts import find_account
from camvoice.db import Database
from camvoice.models import AuditEvent, Camera
from camvoice.readiness import Blocker
from camvoice.services import Services
from camvoice.sessions import SignInSession
from camvoice.settings import ConfigError, Settings, load_settings
from camvoice.streams import blockers_for
from camvoice.tickets import Audience, Protocol, new_ticket
from camvoice.webrtc import Answer, MediaBusy, OfferRefused, TicketRefused
from media import sdp_offer
from media.webrtc import WebRTCEngine
from oauth.models import Grant
from oauth.tokens import revoke_grant
from service.app import create_app
from tests.conftest import until, wait_for
from tests.media_support import H264_AND_PCMA, H265_ONLY, bare_registry, rtsp_camera
from tests.oauth_support import ALEXA_URIS, make_owner, register
from tests.test_hung_camera import HELD_AT_MOST, BlackHole
from tests.webrtc_support import Watcher, alexa_shape, make_offer, without_opus


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


def test_a_demo_camera_plays_over_webrtc(
    app: Flask, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """A complete answer (every candidate, BUNDLE, rtcp-mux, one-way), H.264 frames and Opus
    audio decoded, the session audited as started and ended, and no SDP or ticket logged even
    at DEBUG."""
    caplog.set_level(logging.DEBUG)
    camera = add_camera(db)
    token = ticket(app, camera)
    with Watcher(answerer(app, token, camera.id)) as display:
        assert display.wait_frames(5), "no video frames decoded"
        answer = display.answer
        assert answer is not None
        assert "a=candidate:" in answer and "a=end-of-candidates" in answer
        assert "a=group:BUNDLE" in answer and "a=rtcp-mux" in answer
        assert "a=fingerprint:sha-256" in answer
        assert answer.count("a=sendonly") == 2
        assert "H264/90000" in answer and "opus/48000" in answer
        assert until_audio(display)
        ice_pwd = re.search(r"a=ice-pwd:(\S+)", answer)
        assert ice_pwd is not None

    def events() -> list[tuple[str, str | None]]:
        with db.reading() as session:
            rows = session.scalars(select(AuditEvent).where(AuditEvent.action.like("stream.%")))
            return [(e.action, e.detail.get("protocol")) for e in rows]

    ended = ("stream.ended", "webrtc")
    wait_for(lambda: ended in events(), "the session to end when the display left", 20)
    assert events() == [("stream.requested", "webrtc"), ("stream.started", "webrtc"), ended]
    assert not engine(app).sessions
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert ice_pwd[1] not in logged and token not in logged and "a=fingerprint" not in logged


def until_audio(display: Watcher) -> bool:
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


@pytest.fixture
def real_camera(tmp_path: Path) -> Iterator[str]:
    with rtsp_camera(tmp_path) as url:
        yield url


def feed_processes() -> list[list[str]]:
    """The command lines of this process's live feed ffmpegs (MPEG-TS to a pipe)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat[0] != "Z" and stat[1] == str(os.getpid()) and "pipe:1" in args and "mpegts" in args:
            found.append(args)
    return found


def test_a_real_camera_plays_its_own_h264_without_reencoding(
    app: Flask, db: Database, real_camera: str
) -> None:
    camera = add_camera(db, "Porch", source=real_camera)
    with Watcher(answerer(app, ticket(app, camera), camera.id)) as display:
        assert display.wait_frames(5), "no video frames decoded"
        assert display.frame_size == (320, 240)  # the camera's own picture
        [args] = feed_processes()
        assert args[args.index("-c:v") + 1] == "copy"
        assert "libx264" not in args


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # no database plays a part
def test_a_cameras_pcma_audio_is_heard_as_opus(app: Flask, db: Database, tmp_path: Path) -> None:
    with rtsp_camera(tmp_path, H264_AND_PCMA) as source:
        camera = add_camera(db, "Porch", source=source)
        with Watcher(answerer(app, ticket(app, camera), camera.id)) as display:
            assert display.wait_frames(3), "no video frames decoded"
            assert until_audio(display), "no audio frames decoded"
            [args] = feed_processes()
            assert args[args.index("-c:v") + 1] == "copy"
            assert args[args.index("-c:a") + 1] == "libopus"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # no database plays a part
def test_a_camera_sending_h265_is_encoded_once(app: Flask, db: Database, tmp_path: Path) -> None:
    with rtsp_camera(tmp_path, H265_ONLY) as source:
        camera = add_camera(db, "Garage", source=source)
        with Watcher(answerer(app, ticket(app, camera), camera.id)) as display:
            assert display.wait_frames(5), "no video frames decoded"
            assert display.frame_size == (320, 240)
            [args] = feed_processes()
            assert args[args.index("-c:v") + 1] == "libx264"


def test_two_viewers_of_a_camera_share_one_ffmpeg(app: Flask, db: Database) -> None:
    camera = add_camera(db)
    with (
        Watcher(answerer(app, ticket(app, camera), camera.id)) as first,
        Watcher(answerer(app, ticket(app, camera, Audience.GOOGLE), camera.id)) as second,
    ):
        assert first.wait_frames(3) and second.wait_frames(3)
        assert len(feed_processes()) == 1
        feed = engine(app).feeds.running(camera.id)
        assert feed is not None and feed.starts == 1
    # The last viewer gone, the feed stops (after its short grace).
    wait_for(lambda: not feed_processes(), "the feed to stop", 20)


def test_alexas_offer_is_answered_and_plays(app: Flask, db: Database) -> None:
    """Payload types 0 and 8 without rtpmap lines, `s=a 2 z`, the connection line at session
    level, host candidates only: answered (Opus for audio), and it plays."""
    camera = add_camera(db)
    with Watcher(answerer(app, ticket(app, camera), camera.id, "alexa-session-1"), alexa=True) as d:
        assert d.offer is not None and "s=a 2 z" in d.offer and "a=rtpmap:0 " not in d.offer
        assert d.wait_frames(3), "no video frames decoded"
        assert d.answer is not None and "opus/48000" in d.answer
        assert engine(app).connected("alexa-session-1", camera.id)
        assert not engine(app).connected("alexa-session-1", "another-camera")
        assert engine(app).end("alexa-session-1", camera.id, "user ended")
        assert d.wait_ended(10)
    assert not engine(app).end("alexa-session-1", camera.id, "again")


def for_aiortc(answer: str) -> str:
    """An answer with a rejected (port 0) m-line made acceptable to aiortc as a client, which
    wants ICE credentials and a codec in every m-line (browsers take RFC 3264's bare rejection):
    the first accepted section's ones, copied."""
    lines = answer.split("\r\n")
    credentials = [
        line for line in lines if line.startswith(("a=ice-ufrag:", "a=ice-pwd:", "a=fingerprint:"))
    ][:3]
    out = []
    for line in lines:
        out.append(line)
        if line.startswith("m=") and " 0 " in line[:12]:
            out += [*credentials, "a=setup:active", "a=rtcp-mux", "a=rtpmap:0 PCMU/8000"]
    return "\r\n".join(out)


def test_audio_without_opus_is_rejected_and_video_plays(app: Flask, db: Database) -> None:
    camera = add_camera(db)
    answers: list[str] = []

    def answer(offer: str) -> str:
        answers.append(engine(app).answer(ticket(app, camera), camera.id, offer).sdp)
        return for_aiortc(answers[-1])

    shape = lambda sdp: without_opus(alexa_shape(sdp))  # noqa: E731
    with Watcher(answer, shape=shape) as display:
        assert display.wait_frames(3), "no video frames decoded"
    lines = answers[0].split("\r\n")
    media = [line for line in lines if line.startswith("m=")]
    assert media[0].startswith("m=video ") and not media[0].startswith("m=video 0 ")
    assert media[1].startswith("m=audio 0 ")  # rejected, in the offer's order
    bundle = next(line for line in lines if line.startswith("a=group:BUNDLE"))
    assert bundle.split()[1:] == ["0"]


def vp8_only(sdp: str) -> str:
    """The offer with VP8 alone on its video m-line."""
    lines = sdp.split("\r\n")
    vp8 = next(m[1] for m in (re.match(r"a=rtpmap:(\d+) VP8/", line) for line in lines) if m)
    out, kind = [], ""
    for line in lines:
        if line.startswith("m="):
            kind = line[2:].split(" ", 1)[0]
            if kind == "video":
                line = " ".join([*line.split(" ")[:3], vp8])
        payload = re.match(r"a=(?:rtpmap|fmtp|rtcp-fb):(\d+) ", line)
        if kind == "video" and payload and payload[1] != vp8:
            continue
        out.append(line)
    return "\r\n".join(out)


def test_offers_without_h264_or_not_sdp_are_refused(app: Flask, db: Database) -> None:
    camera = add_camera(db)
    token = ticket(app, camera)
    for offer in [vp8_only(make_offer()), "", "v=0\r\nnot sdp", "x" * 100_000, make_offer()[:200]]:
        with pytest.raises(OfferRefused):
            engine(app).answer(token, camera.id, offer)
    assert not engine(app).sessions


def test_image_encryption_ends_a_playing_session(app: Flask, db: Database) -> None:
    camera = add_camera(db)
    with Watcher(answerer(app, ticket(app, camera), camera.id)) as display:
        assert display.wait_frames(3)
        Services.of(app).registry.change(db, camera.id, {"image_encryption": True}, actor="owner")
        assert display.wait_ended(10), "still playing 10 s after Image Encryption was turned on"
    assert not engine(app).sessions


def test_revoking_the_link_ends_a_playing_session(app: Flask, db: Database) -> None:
    camera = add_camera(db)
    client = register(db, "Amazon Alexa", ALEXA_URIS, "alexa")
    with db.session() as session:
        grant = Grant(account_id=camera.owner_id, client_id=client.client_id, scope="cameras")
        session.add(grant)
        session.flush()
        grant_id = grant.id
    token = ticket(app, camera, grant_id=grant_id)
    with Watcher(answerer(app, token, camera.id)) as display:
        assert display.wait_frames(3)
        with db.session() as session:
            assert revoke_grant(session, grant_id, "unlinked", actor="owner")
        assert display.wait_ended(10), "still playing 10 s after the link was revoked"
    with pytest.raises(TicketRefused) as refused:
        engine(app).answer(token, camera.id, make_offer())
    assert refused.value.reason == "link_revoked"


def test_an_expired_ticket_is_refused(app: Flask, db: Database) -> None:
    camera = add_camera(db)
    services = Services.of(app)
    stale = new_ticket(camera.id, camera.owner_id, Protocol.WEBRTC, Audience.ALEXA, -1)
    with pytest.raises(TicketRefused) as refused:
        engine(app).answer(services.settings.signer().sign(stale), camera.id, make_offer())
    assert refused.value.reason == "expired"
    hls = services.streams.mint(camera, Protocol.HLS, Audience.ALEXA).split("/")[-2]
    with pytest.raises(TicketRefused) as refused:
        engine(app).answer(hls, camera.id, make_offer())
    assert refused.value.reason == "wrong_protocol"


@contextmanager
def app_with(settings: Settings, db: Database, **update: object) -> Iterator[Flask]:
    app = create_app(settings.model_copy(update=update), db)
    try:
        yield app
    finally:
        engine(app).shutdown()
        app.extensions["camvoice.relays"].shutdown()


@pytest.fixture
def hung_camera() -> Iterator[BlackHole]:
    """A camera that accepts connections and never says a word (tests/test_hung_camera.py)."""
    hole = BlackHole()
    yield hole
    hole.close()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # no database plays a part
def test_a_hung_camera_does_not_delay_the_answer(
    webrtc_settings: Settings, db: Database, hung_camera: BlackHole
) -> None:
    """The answer comes before the camera says anything (it never will): media flows when the
    feed has it. The camera is asked off the request thread."""
    camera = add_camera(db, "Hung", source=hung_camera.source)
    with app_with(webrtc_settings, db) as app:
        token = ticket(app, camera)
        offer = make_offer()
        began = time.monotonic()
        answer = engine(app).answer(token, camera.id, offer)
        assert time.monotonic() - began < HELD_AT_MOST
        assert "a=candidate:" in answer.sdp
        wait_for(hung_camera.preflights, "the feed to ask the camera", 10)


def test_a_session_that_never_connects_is_torn_down(
    webrtc_settings: Settings, db: Database
) -> None:
    camera = add_camera(db)
    with app_with(webrtc_settings, db, webrtc_idle_timeout=1.0) as app:
        display = Watcher(answerer(app, ticket(app, camera), camera.id), connect=False)
        try:
            display.start()
            assert len(engine(app).sessions) == 1
            wait_for(lambda: not engine(app).sessions, "the idle session to end", 10)
            wait_for(lambda: engine(app).feeds.running(camera.id) is None, "the feed to stop", 20)
        finally:
            display.close()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # no database plays a part
def test_sessions_beyond_the_limit_are_told_busy(webrtc_settings: Settings, db: Database) -> None:
    camera = add_camera(db)
    with app_with(webrtc_settings, db, max_webrtc_sessions=1) as app:
        first = engine(app).answer(ticket(app, camera), camera.id, make_offer())
        with pytest.raises(MediaBusy):
            engine(app).answer(ticket(app, camera), camera.id, make_offer())
        assert engine(app).end(first.session_id, camera.id, "done")
        engine(app).answer(ticket(app, camera), camera.id, make_offer())  # room again


def test_signing_out_ends_a_console_session(app: Flask, db: Database) -> None:
    camera = add_camera(db)
    store = Services.of(app).sessions
    with db.session() as session:
        cookie = store.start(session, camera.owner_id)
    with db.reading() as session:
        ref = session.scalars(select(SignInSession.id)).one()
    with Watcher(answerer(app, ticket(app, camera, Audience.WEB, session_ref=ref), camera.id)) as d:
        assert d.wait_frames(3)
        with db.session() as session:
            store.end(session, cookie, everywhere=False)
        assert d.wait_ended(10), "still playing 10 s after its owner signed out"


def test_ice_servers_are_checked_when_settings_load() -> None:
    servers = (
        '[{"urls": "turn:turn.example.com:3478?transport=tcp", "username": "u", "credential": "c"}]'
    )
    loaded = load_settings(ice_servers=servers)
    assert loaded.ice_server_list()[0]["urls"] == ["turn:turn.example.com:3478?transport=tcp"]
    assert "c" not in loaded.masked()["CAMVOICE_ICE_SERVERS"]
    for bad in [
        '{"urls": "stun:x"}',
        '[{"urls": "http://x"}]',
        "[{]",
        '[{"urls": ["stun:x"], "username": 1}]',
    ]:
        with pytest.raises(ConfigError, match="CAMVOICE_ICE_SERVERS"):
            load_settings(ice_servers=bad)


def test_a_camera_clouds_hls_camera_cannot_be_offered_webrtc() -> None:
    """EZVIZ's cloud gives HLS only: its cameras get no webrtc ticket (nor pass a re-check)."""
    cloud = Camera(id="c1", owner_id="o1", name="Hall", source="ezviz", backend="ezviz",
                   online=True, image_encryption=False, audio=True, sleep_mode=False)  # fmt: skip
    assert blockers_for(cloud, Audience.GOOGLE, Protocol.WEBRTC) == [Blocker.NO_STREAM]
    assert blockers_for(cloud, Audience.GOOGLE, Protocol.HLS) == []


def test_static_payload_types_get_their_rtpmap_lines_before_aiortc_reads_the_offer() -> None:
    """aiortc knows a codec only from its rtpmap line: Alexa's PT 0 and 8 get theirs (RFC 3551),
    so an fmtp line naming one cannot trip its parser."""
    video, audio = alexa_shape(make_offer()).split("m=audio", 1)
    offer = video + "m=audio" + audio.replace("a=rtcp-mux", "a=rtcp-mux\r\na=fmtp:0 ptime=20", 1)
    with pytest.raises(StopIteration):
        SessionDescription.parse(offer)  # what aiortc would make of it as it is
    prepared = sdp_offer.prepare(offer)
    audio = prepared.sdp.split("m=audio", 1)[1]
    assert "a=rtpmap:0 PCMU/8000" in audio and "a=rtpmap:8 PCMA/8000" in audio
    assert prepared.kinds == {"video", "audio"} and not prepared.rejected
    assert SessionDescription.parse(prepared.sdp).media[1].rtp.codecs


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # no database plays a part
def test_a_feed_whose_ffmpeg_dies_is_restarted_and_the_display_plays_on(
    app: Flask, db: Database
) -> None:
    camera = add_camera(db)
    with Watcher(answerer(app, ticket(app, camera), camera.id)) as display:
        assert display.wait_frames(3)
        feed = engine(app).feeds.running(camera.id)
        assert feed is not None and feed.process is not None
        os.kill(feed.process.pid, signal.SIGKILL)
        wait_for(lambda: feed.starts == 2, "the feed to start again", 20)
        assert display.wait_frames(5), "the display got no frames from the restarted feed"
        assert not display.ended
