"""Alexa.RTCSessionController end to end: directives go through the real Lambda forwarder to the
running app, and every answer is checked against Amazon's published message format.

The first tests put a recording engine in the app's wiring (what the handlers ask of the
engine, and what they never ask); the last ones play an Echo Show with aiortc against the real
engine."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import select

from camvoice.db import Database
from camvoice.models import AuditEvent, Camera
from camvoice.settings import Settings
from camvoice.webrtc import Answer, MediaBusy, MediaUnavailable, OfferRefused, TicketRefused
from skills import messages
from tests.conftest import LiveServer, wiring
from tests.oauth_support import make_owner, streams_requested
from tests.test_alexa import (  # noqa: F401 - fixtures: the signed forwarder's live app
    alexa_settings,
    amazon,
    demo,
    directive,
    error_of,
    send,
    server,
    token,
)

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
    # No engine wired (the app's default): nothing is promised that cannot be served.
    assert RTC not in capabilities_of(token, "Front Door", demo)
    wiring(server.app).webrtc = RecordingEngine()
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


@pytest.mark.parametrize(("case", "payload", "error_type"), BAD_OFFERS,
                         ids=[case for case, _, _ in BAD_OFFERS])  # fmt: skip
def test_bad_offers_get_the_callers_error(
    server: LiveServer, token: str, demo: dict[str, str], engine: RecordingEngine,
    case: str, payload: dict[str, Any], error_type: str,
) -> None:  # fmt: skip
    message = directive(RTC, "InitiateSessionWithOffer", token, demo["Front Door"], payload)
    assert check_error(send(message), message) == (error_type, None)
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
    engine.live.add((session_id, front))
    connected = session_directive("SessionConnected", token, front, session_id)
    check_session_event(send(connected), connected, "SessionConnected")
    # A session this camera does not have is not acknowledged as connected.
    unknown = session_directive("SessionConnected", token, demo["Nursery"], session_id)
    assert check_error(send(unknown), unknown) == ("INVALID_VALUE", None)
    # Another owner's camera cannot be named, so neither can its sessions.
    make_owner(db, "other@example.com", {"Shed": {}})
    with db.session() as session:
        shed = session.scalars(select(Camera).where(Camera.name == "Shed")).one().id
    engine.live.add((session_id, shed))
    foreign = session_directive("SessionDisconnected", token, shed, session_id)
    assert check_error(send(foreign), foreign) == ("NO_SUCH_ENDPOINT", None)
    assert (session_id, shed) in engine.live
    # The owner's own disconnect reaches the engine with the owned camera's id, and is
    # acknowledged again when the session is already gone.
    for _ in range(2):
        ended = session_directive("SessionDisconnected", token, front, session_id)
        check_session_event(send(ended), ended, "SessionDisconnected")
    assert [args for call, args in engine.calls if call == "end"] == [
        (session_id, front, "alexa_disconnected")] * 2  # fmt: skip
    assert (session_id, shed) in engine.live
    missing = directive(RTC, "SessionDisconnected", token, front, {})
    assert check_error(send(missing), missing) == ("INVALID_DIRECTIVE", None)
