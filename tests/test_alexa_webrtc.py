"""Alexa.RTCSessionController end to end: directives go through the real Lambda forwarder to the
running app, and every answer is checked against Amazon's published message format.

The first tests put a recording engine in the app's wiring (what the handlers ask of the
engine, and what they never ask); the last ones play an Echo Show with aiortc against the real
engine."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import select

from camvoice.db import Database
from camvoice.models import AuditEvent, Camera
from camvoice.settings import Settings
from camvoice.tickets import Audience, Protocol
from camvoice.webrtc import (
    Answer,
    MediaBusy,
    MediaUnavailable,
    NoWebRTC,
    OfferRefused,
    TicketRefused,
)
from service.demo import DEMO_EMAIL, DEMO_PASSWORD
from skills import messages
from skills.smarthome import engine_session
from tests import test_alexa as alexa
from tests.conftest import LiveServer, wiring
from tests.oauth_support import ALEXA_URIS, link, make_owner, register, streams_requested

# The live app behind the signed Lambda forwarder, as test_alexa builds it: its fixtures, found
# here by name, and its way of sending a directive.
amazon, alexa_settings, server = alexa.amazon, alexa.alexa_settings, alexa.server
demo, token = alexa.demo, alexa.token
directive, send = alexa.directive, alexa.send

if TYPE_CHECKING:
    from media.webrtc import WebRTCEngine

RTC = "Alexa.RTCSessionController"
CAPABILITY = {"type": "AlexaInterface", "interface": RTC, "version": "3",
              "configuration": {"isFullDuplexAudioSupported": False}}  # fmt: skip
# An offer as Echo devices write it (the engine's tests parse the quirks; these only carry it).
OFFER = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=a 2 z\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
ANSWER = "v=0\r\no=- 3 4 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n"


@dataclass
class RecordingEngine:
    """Stands in for media/'s engine: answers (or fails) and records what it was asked."""

    fail: Exception | None = None
    live: set[tuple[str, str]] = field(default_factory=set)
    calls: list[tuple[str, Any]] = field(default_factory=list)

    def answer(
        self, token: str, camera_id: str, offer_sdp: str, session_id: str | None = None
    ) -> Answer:
        self.calls.append(("answer", (token, camera_id, offer_sdp, session_id)))
        if self.fail is not None:
            raise self.fail
        assert session_id is not None
        self.live.add((session_id, camera_id))
        return Answer(session_id, ANSWER)

    def connected(self, session_id: str, camera_id: str) -> bool:
        self.calls.append(("connected", (session_id, camera_id)))
        return (session_id, camera_id) in self.live

    def end(self, session_id: str, camera_id: str, reason: str) -> bool:
        self.calls.append(("end", (session_id, camera_id, reason)))
        known = (session_id, camera_id) in self.live
        self.live.discard((session_id, camera_id))
        return known


@pytest.fixture
def live_engine(server: LiveServer) -> Iterator[WebRTCEngine]:
    """The app's own aiortc engine, shut down before the app stops."""
    from media.webrtc import WebRTCEngine

    real = wiring(server.app).webrtc
    assert isinstance(real, WebRTCEngine)
    yield real
    real.shutdown()


@pytest.fixture
def engine(server: LiveServer) -> RecordingEngine:
    fake = RecordingEngine()
    wiring(server.app).webrtc = fake
    return fake


def offer_directive(token: str, endpoint_id: str, session_id: str | None = None,
                    offer: Any = None) -> dict[str, Any]:  # fmt: skip
    payload = {"sessionId": session_id or new_session_id(),
               "offer": offer if offer is not None else {"format": "SDP", "value": OFFER}}  # fmt: skip
    return directive(RTC, "InitiateSessionWithOffer", token, endpoint_id, payload)


def session_directive(name: str, token: str, endpoint_id: str, session_id: str) -> dict[str, Any]:
    return directive(RTC, name, token, endpoint_id, {"sessionId": session_id})


def new_session_id() -> str:
    return "amzn1.rtc-session." + str(uuid.uuid4())


# --- Amazon's published format (alexa/alexa-smarthome validation schema), field by field ----

MESSAGE_ID = re.compile(r"[a-zA-Z0-9\-]{1,127}")
ENDPOINT_ID = re.compile(r"[a-zA-Z0-9_\-=#;:?@&]{1,256}")


def check_event(answer: dict[str, Any], message: dict[str, Any], namespace: str, name: str) -> Any:
    """The envelope every RTCSessionController answer (and ErrorResponse) shares: only the
    schema's fields, the directive's correlation token and endpoint echoed. The payload back."""
    assert set(answer) <= {"event", "context"}
    event = answer["event"]
    assert set(event) == {"header", "endpoint", "payload"}
    header, asked = event["header"], message["directive"]
    assert set(header) == {"namespace", "name", "payloadVersion", "messageId", "correlationToken"}
    assert (header["namespace"], header["name"], header["payloadVersion"]) == (namespace, name, "3")
    assert MESSAGE_ID.fullmatch(header["messageId"])
    assert header["messageId"] != asked["header"]["messageId"]  # ours, not the directive's
    assert header["correlationToken"] == asked["header"]["correlationToken"]
    endpoint = event["endpoint"]
    assert ENDPOINT_ID.fullmatch(endpoint["endpointId"])
    assert endpoint["endpointId"] == asked["endpoint"]["endpointId"]
    assert endpoint["scope"] == asked["endpoint"]["scope"]
    assert endpoint["scope"]["type"] == "BearerToken" and endpoint["scope"]["token"]
    return event["payload"]


def check_answer(answer: dict[str, Any], message: dict[str, Any]) -> str:
    """AnswerGeneratedForSession: payload {answer: {format: SDP, value}} and nothing else."""
    payload = check_event(answer, message, RTC, "AnswerGeneratedForSession")
    assert set(payload) == {"answer"} and set(payload["answer"]) == {"format", "value"}
    assert re.fullmatch(r"[Ss][Dd][Pp]", payload["answer"]["format"])
    assert payload["answer"]["format"] == "SDP"  # as Amazon's examples write it
    value = payload["answer"]["value"]
    assert isinstance(value, str) and value.startswith("v=0")
    return value


def check_session_event(answer: dict[str, Any], message: dict[str, Any], name: str) -> None:
    """SessionConnected / SessionDisconnected: payload {sessionId} as the directive named it."""
    payload = check_event(answer, message, RTC, name)
    assert payload == {"sessionId": message["directive"]["payload"]["sessionId"]}


def check_error(answer: dict[str, Any], message: dict[str, Any]) -> tuple[str, str | None]:
    """Alexa.ErrorResponse: {type, message} (and currentDeviceMode where the type needs it)."""
    payload = check_event(answer, message, "Alexa", "ErrorResponse")
    mode = payload.get("currentDeviceMode")
    assert set(payload) == {"type", "message"} | ({"currentDeviceMode"} if mode else set())
    assert isinstance(payload["message"], str) and payload["message"]
    return payload["type"], mode


# --- Discovery -------------------------------------------------------------------------------


def capabilities_of(token: str, name: str, demo_ids: dict[str, str]) -> dict[str, Any]:
    scope = {"type": "BearerToken", "token": token}
    answer = send(directive("Alexa.Discovery", "Discover", payload={"scope": scope}))
    endpoints = {e["endpointId"]: e for e in answer["event"]["payload"]["endpoints"]}
    return {c["interface"]: c for c in endpoints[demo_ids[name]]["capabilities"]}


def test_discovery_advertises_webrtc_beside_rtsps_where_an_engine_answers(
    server: LiveServer, token: str, demo: dict[str, str]
) -> None:
    # No engine in this process (as in the CLI): nothing is promised that cannot be served.
    real = wiring(server.app).webrtc
    wiring(server.app).webrtc = NoWebRTC()
    assert RTC not in capabilities_of(token, "Front Door", demo)
    wiring(server.app).webrtc = real  # the app's own engine
    interfaces = capabilities_of(token, "Front Door", demo)
    assert list(interfaces) == ["Alexa", "Alexa.CameraStreamController", RTC,
                                "Alexa.EndpointHealth"]  # fmt: skip
    assert interfaces[RTC] == CAPABILITY
    # Blocked cameras are discovered with it too: readiness is decided per directive.
    assert capabilities_of(token, "Garage", demo)[RTC] == CAPABILITY


def test_a_camera_cloud_source_gets_no_webrtc(settings: Settings) -> None:
    """The EZVIZ platform hands out HLS only: no offer could be fed from it."""
    cloud = Camera(id="cam_ez", name="Porch", source="ezviz")
    local = Camera(id="cam_1", name="Porch", source="demo")

    def interfaces(camera: Camera) -> list[str]:
        endpoint = messages.endpoint(camera, settings, streams=True, proactive=False, webrtc=True)
        return [c["interface"] for c in endpoint["capabilities"]]

    assert RTC not in interfaces(cloud)
    assert RTC in interfaces(local)
    # Existing answers stay as they were when no engine is wired.
    plain = messages.endpoint(local, settings, streams=True, proactive=False)
    assert RTC not in [c["interface"] for c in plain["capabilities"]]


# --- InitiateSessionWithOffer before any media -----------------------------------------------


@pytest.mark.parametrize(
    ("camera", "error_type", "mode", "words"),
    [
        ("Garage", "NOT_SUPPORTED_IN_CURRENT_MODE", "OTHER", "Image Encryption"),
        ("Living Room", "NOT_SUPPORTED_IN_CURRENT_MODE", "ASLEEP", "sleep"),
        ("Backyard", "ENDPOINT_UNREACHABLE", None, "offline"),
    ],
)
def test_blocked_cameras_are_refused_before_any_media(
    server: LiveServer, db: Database, token: str, demo: dict[str, str], engine: RecordingEngine,
    camera: str, error_type: str, mode: str | None, words: str,
) -> None:  # fmt: skip
    message = offer_directive(token, demo[camera])
    answer = send(message)
    assert check_error(answer, message) == (error_type, mode)
    assert words in answer["event"]["payload"]["message"]
    assert engine.calls == [] and streams_requested(db) == []  # no ticket, no session
    with db.session() as session:
        denied = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "stream.denied")
        ).one()
        assert (denied.camera_id, denied.assistant) == (demo[camera], "alexa")
        assert denied.detail["protocol"] == "webrtc"


def test_without_an_engine_the_offer_is_refused_as_not_provisioned(
    server: LiveServer, db: Database, token: str, demo: dict[str, str]
) -> None:
    wiring(server.app).webrtc = NoWebRTC()
    message = offer_directive(token, demo["Front Door"])
    assert check_error(send(message), message) == ("NOT_SUPPORTED_IN_CURRENT_MODE",
                                                   "NOT_PROVISIONED")  # fmt: skip
    assert streams_requested(db) == []


BAD_OFFERS: list[tuple[str, dict[str, Any], str]] = [
    ("no sessionId", {"offer": {"format": "SDP", "value": OFFER}}, "INVALID_DIRECTIVE"),
    ("sessionId a number", {"sessionId": 7, "offer": {"format": "SDP", "value": OFFER}},
     "INVALID_DIRECTIVE"),
    ("sessionId empty", {"sessionId": "", "offer": {"format": "SDP", "value": OFFER}},
     "INVALID_DIRECTIVE"),
    ("sessionId with a newline", {"sessionId": "a\nb", "offer": {"format": "SDP", "value": OFFER}},
     "INVALID_DIRECTIVE"),
    ("sessionId too long", {"sessionId": "s" * 257, "offer": {"format": "SDP", "value": OFFER}},
     "INVALID_DIRECTIVE"),
    ("no offer", {"sessionId": "s1"}, "INVALID_DIRECTIVE"),
    ("offer a string", {"sessionId": "s1", "offer": OFFER}, "INVALID_DIRECTIVE"),
    ("value not a string", {"sessionId": "s1", "offer": {"format": "SDP", "value": ["v=0"]}},
     "INVALID_DIRECTIVE"),
    ("format not SDP", {"sessionId": "s1", "offer": {"format": "JSEP", "value": OFFER}},
     "INVALID_VALUE"),
    ("format missing", {"sessionId": "s1", "offer": {"value": OFFER}}, "INVALID_VALUE"),
    ("empty SDP", {"sessionId": "s1", "offer": {"format": "SDP", "value": " \r\n"}},
     "INVALID_VALUE"),
    ("SDP over 64 KiB", {"sessionId": "s1", "offer": {"format": "SDP",
                                                      "value": OFFER + "a=x\r\n" * 13200}},
     "INVALID_VALUE"),
]  # fmt: skip


def test_bad_offers_get_the_callers_error(
    server: LiveServer, token: str, demo: dict[str, str], engine: RecordingEngine
) -> None:
    """Each shape in one app (what is checked needs no database of its own)."""
    for case, payload, error_type in BAD_OFFERS:
        message = directive(RTC, "InitiateSessionWithOffer", token, demo["Front Door"], payload)
        assert check_error(send(message), message) == (error_type, None), case
    assert engine.calls == []


def test_offers_need_the_owners_token_and_camera(
    server: LiveServer, db: Database, token: str, demo: dict[str, str], engine: RecordingEngine
) -> None:
    make_owner(db, "other@example.com", {"Shed": {}})
    with db.session() as session:
        shed = session.scalars(select(Camera).where(Camera.name == "Shed")).one().id
    for endpoint_id in (shed, "cam_doesnotexist"):
        message = offer_directive(token, endpoint_id)
        assert check_error(send(message), message) == ("NO_SUCH_ENDPOINT", None)
    message = offer_directive("garbage", demo["Front Door"])
    assert check_error(send(message), message) == ("INVALID_AUTHORIZATION_CREDENTIAL", None)
    assert engine.calls == []


# --- SessionConnected / SessionDisconnected --------------------------------------------------


def test_session_directives_name_the_owners_camera_only(
    server: LiveServer, db: Database, token: str, demo: dict[str, str], engine: RecordingEngine
) -> None:
    front, session_id = demo["Front Door"], new_session_id()
    engine.live.add((engine_session(front, session_id), front))
    connected = session_directive("SessionConnected", token, front, session_id)
    check_session_event(send(connected), connected, "SessionConnected")
    # A session this camera does not have is not acknowledged as connected.
    unknown = session_directive("SessionConnected", token, demo["Nursery"], session_id)
    assert check_error(send(unknown), unknown) == ("INVALID_VALUE", None)
    # Another owner's camera cannot be named, so neither can its sessions.
    make_owner(db, "other@example.com", {"Shed": {}})
    with db.session() as session:
        shed = session.scalars(select(Camera).where(Camera.name == "Shed")).one().id
    theirs = (engine_session(shed, session_id), shed)
    engine.live.add(theirs)
    foreign = session_directive("SessionDisconnected", token, shed, session_id)
    assert check_error(send(foreign), foreign) == ("NO_SUCH_ENDPOINT", None)
    assert theirs in engine.live
    # The owner's own disconnect reaches the engine with the owned camera's id, and is
    # acknowledged again when the session is already gone.
    for _ in range(2):
        ended = session_directive("SessionDisconnected", token, front, session_id)
        check_session_event(send(ended), ended, "SessionDisconnected")
    assert [args for call, args in engine.calls if call == "end"] == [
        (engine_session(front, session_id), front, "alexa_disconnected")] * 2  # fmt: skip
    assert theirs in engine.live
    missing = directive(RTC, "SessionDisconnected", token, front, {})
    assert check_error(send(missing), missing) == ("INVALID_DIRECTIVE", None)


# --- the engine's failures, as Alexa hears them ----------------------------------------------


ENGINE_FAILURES: list[tuple[Exception, str, str | None]] = [
    (OfferRefused("no H.264 video in the offer"), "INVALID_VALUE", None),
    (MediaBusy("16 live sessions"), "ENDPOINT_BUSY", None),
    (MediaUnavailable("the camera's source cannot be read"), "ENDPOINT_UNREACHABLE", None),
    (TicketRefused("blocked:ENCRYPTION_ON"), "NOT_SUPPORTED_IN_CURRENT_MODE", "OTHER"),
    (TicketRefused("blocked:SLEEPING,ENCRYPTION_ON"), "NOT_SUPPORTED_IN_CURRENT_MODE", "ASLEEP"),
    (TicketRefused("link_revoked"), "INVALID_AUTHORIZATION_CREDENTIAL", None),
    (TicketRefused("no_such_camera"), "NO_SUCH_ENDPOINT", None),
]


def test_engine_failures_get_alexas_error(
    server: LiveServer, db: Database, token: str, demo: dict[str, str], engine: RecordingEngine
) -> None:
    front = demo["Front Door"]
    for failure, error_type, mode in ENGINE_FAILURES:
        engine.fail, engine.calls = failure, []
        message = offer_directive(token, front)
        assert check_error(send(message), message) == (error_type, mode), failure
        [(call, (_ticket, camera_id, offer, session_id))] = engine.calls
        assert (call, camera_id, offer) == ("answer", front, OFFER)
        assert session_id == engine_session(front, message["directive"]["payload"]["sessionId"])
    # Each offer was admitted (a ticket handed to the engine) before the engine failed.
    assert streams_requested(db) == [("alexa", "webrtc")] * len(ENGINE_FAILURES)


def test_offer_reaches_the_engine_unchanged_and_its_answer_comes_back(
    server: LiveServer, alexa_settings: Settings, token: str, demo: dict[str, str],
    engine: RecordingEngine,
) -> None:  # fmt: skip
    """Through the Lambda forwarder and the app, the SDP text (CRLFs, `s=a 2 z`) is the offer
    the engine gets; the ticket is a webrtc one for this camera; an offer at the size limit is
    still served."""
    front = demo["Front Door"]
    big = OFFER + "a=x\r\n" * ((64 * 1024 - len(OFFER)) // 5)
    for sdp in (OFFER, big):
        message = offer_directive(token, front, offer={"format": "sdp", "value": sdp})
        assert check_answer(send(message), message) == ANSWER
        _call, (ticket, camera_id, offer, _session) = engine.calls[-1]
        assert (camera_id, offer) == (front, sdp)
        verified = alexa_settings.signer().verify(ticket, front, Protocol.WEBRTC)
        assert (verified.audience, verified.camera_id) == (Audience.ALEXA, front)
        assert verified.grant_id is not None  # bound to this link: unlinking ends it
    # One sessionId named on two cameras is two sessions to the engine: an offer for one camera
    # cannot replace (end) the other's, whoever owns it.
    session_id = new_session_id()
    for camera in ("Front Door", "Nursery"):
        message = offer_directive(token, demo[camera], session_id)
        check_answer(send(message), message)
    names = [args[3] for call, args in engine.calls[-2:]]
    assert len(set(names)) == 2 and all(len(name) <= 128 for name in names)


# --- an Echo Show played by aiortc, against the real engine ----------------------------------


def alexa_answerer(token: str, camera_id: str, seen: list[dict[str, Any]]) -> Any:
    """What the Echo's cloud does with an offer: InitiateSessionWithOffer through the Lambda
    forwarder; the answer checked against Amazon's format; the directive kept in `seen`."""

    def answer(offer_sdp: str) -> str:
        message = offer_directive(token, camera_id, offer={"format": "SDP", "value": offer_sdp})
        seen.append(message)
        reply = send(message)
        if reply["event"]["header"]["name"] == "ErrorResponse":
            raise AssertionError(check_error(reply, message))
        return check_answer(reply, message)

    return answer


def test_echo_show_plays_the_front_door_over_webrtc(
    server: LiveServer, db: Database, token: str, demo: dict[str, str], live_engine: WebRTCEngine
) -> None:
    from tests.webrtc_support import Watcher

    front, seen = demo["Front Door"], []
    with Watcher(alexa_answerer(token, front, seen), alexa=True) as display:
        assert display.wait_frames(3), "no video frames decoded"
        answer = display.answer or ""
        assert "a=candidate:" in answer  # complete: Alexa does not trickle
        session_id = seen[0]["directive"]["payload"]["sessionId"]
        connected = session_directive("SessionConnected", token, front, session_id)
        check_session_event(send(connected), connected, "SessionConnected")
        assert display.wait_frames(3)
        ended = session_directive("SessionDisconnected", token, front, session_id)
        check_session_event(send(ended), ended, "SessionDisconnected")
        assert display.wait_ended(10), "SessionDisconnected left the session running"
    assert streams_requested(db) == [("alexa", "webrtc")]


def test_unlinking_ends_a_running_session(
    server: LiveServer, db: Database, demo: dict[str, str], live_engine: WebRTCEngine
) -> None:
    """Alexa's link revoked at the token endpoint (RFC 7009, the refresh token): the Echo's
    session ends within 10 s, and the next offer is refused as a dead credential."""
    from tests.webrtc_support import Watcher

    client = register(db, "Amazon Alexa", ALEXA_URIS, "alexa")
    oauth, issued = link(server, client, DEMO_EMAIL, password=DEMO_PASSWORD)
    token, front = str(issued["access_token"]), demo["Front Door"]
    with Watcher(alexa_answerer(token, front, []), alexa=True) as display:
        assert display.wait_frames(3), "no video frames decoded"
        revoked = oauth.revoke_token(server.url + "/oauth/revoke", issued["refresh_token"],
                                     token_type_hint="refresh_token")  # fmt: skip
        assert revoked.status_code == 200
        assert display.wait_ended(10), "the session outlived the link"
    message = offer_directive(token, front)
    assert check_error(send(message), message) == ("INVALID_AUTHORIZATION_CREDENTIAL", None)


def test_image_encryption_ends_a_running_session(
    server: LiveServer, token: str, demo: dict[str, str], live_engine: WebRTCEngine
) -> None:
    from tests.webrtc_support import Watcher

    front = demo["Front Door"]
    with Watcher(alexa_answerer(token, front, []), alexa=True) as display:
        assert display.wait_frames(3), "no video frames decoded"
        wiring(server.app).registry.change(
            wiring(server.app).db, front, {"image_encryption": True}, actor="owner"
        )
        assert display.wait_ended(10), "the session outlived Image Encryption"
