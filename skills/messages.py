"""Alexa Smart Home messages (payload version 3), built in one place, named as in Amazon's docs."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

from camvoice.cameras import protocols
from camvoice.models import Camera
from camvoice.services import Services
from camvoice.settings import Settings
from camvoice.tickets import Protocol
from camvoice.webrtc import NoWebRTC
from skills.errors import AlexaError

PAYLOAD_VERSION = "3"
MAX_ENDPOINTS = 300
NAME_LIMIT = 128
ENDPOINT_ID = re.compile(r"^[A-Za-z0-9_\-=#;:?@&]{1,256}$")


def timestamp(moment: datetime | None = None) -> str:
    """ISO 8601 UTC with two fractional digits and a Z, as Amazon's samples write it."""
    moment = (moment or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 10000:02d}Z"


def header(namespace: str, name: str, correlation_token: str | None = None) -> dict[str, Any]:
    head = {
        "namespace": namespace,
        "name": name,
        "payloadVersion": PAYLOAD_VERSION,
        "messageId": str(uuid.uuid4()),
    }
    if correlation_token:
        head["correlationToken"] = correlation_token
    return head


def clean_text(text: str, fallback: str) -> str:
    """1 to 128 characters of letters, digits, spaces and plain punctuation."""
    cleaned = re.sub(r"[^\w .,'-]", " ", text, flags=re.UNICODE).strip()[:NAME_LIMIT]
    return cleaned or fallback


def friendly_name(name: str) -> str:
    """Amazon's rule for friendlyName: letters, digits and single spaces, at most 128.

    An apostrophe joins ("Mary's" reads "Marys"), other marks part words ("front-door" reads
    "front door"), so the name still says what the owner typed."""
    joined = re.sub(r"['\u2019`]", "", name)
    words = re.sub(r"[\W_]+", " ", joined, flags=re.UNICODE).split()
    return " ".join(words)[:NAME_LIMIT].strip() or "Camera"


class AlexaInterface:
    """The `Alexa` interface every endpoint lists."""

    interface = "Alexa"

    def capability(self) -> dict[str, Any]:
        return {"type": "AlexaInterface", "interface": self.interface, "version": "3"}


class EndpointHealth(AlexaInterface):
    """Alexa.EndpointHealth: connectivity, the one property Alexa holds for a camera.
    `proactive` is True only when ChangeReports will really be sent for the owner."""

    interface = "Alexa.EndpointHealth"

    def __init__(self, proactive: bool) -> None:
        self.proactive = proactive

    def capability(self) -> dict[str, Any]:
        return {
            **super().capability(),
            "properties": {
                "supported": [{"name": "connectivity"}],
                "proactivelyReported": self.proactive,
                "retrievable": True,
            },
        }

    @staticmethod
    def connectivity(camera: Camera) -> dict[str, Any]:
        return {
            "namespace": EndpointHealth.interface,
            "name": "connectivity",
            "value": {"value": "OK" if camera.online else "UNREACHABLE"},
            "timeOfSample": timestamp(),
            "uncertaintyInMilliseconds": 0,
        }


class CameraStreamController(AlexaInterface):
    """Alexa.CameraStreamController: RTSP (our RTSPS relay on 443), H.264, the ticket in the URI."""

    interface = "Alexa.CameraStreamController"

    def __init__(self, camera: Camera) -> None:
        self.camera = camera

    @staticmethod
    def resolution_of(camera: Camera) -> dict[str, int] | None:
        """What the relay really sends: the demo pattern is 640x360; a real camera passes its
        own picture through, as probed when its source was set. None until it is known."""
        if camera.source == "demo":
            return {"width": 640, "height": 360}
        if camera.width and camera.height:
            return {"width": camera.width, "height": camera.height}
        return None

    def resolution(self) -> dict[str, int]:
        known = self.resolution_of(self.camera)
        assert known is not None, "capabilities() lists this interface only with a resolution"
        return known

    def audio_codec(self) -> str:
        """The relay adds AAC to the demo pattern; a real camera's audio is not passed (H.264
        only). Discovery and InitializeCameraStreams both say it, so they cannot disagree."""
        return "AAC" if self.camera.source == "demo" else "NONE"

    def capability(self) -> dict[str, Any]:
        return {
            **super().capability(),
            "cameraStreamConfigurations": [{
                "protocols": ["RTSP"],
                "resolutions": [self.resolution()],
                "authorizationTypes": ["NONE"],  # the ticket is in the URL
                "videoCodecs": ["H264"],
                "audioCodecs": [self.audio_codec()],
            }],
        }  # fmt: skip

    def stream(self, uri: str, expires: datetime, idle_timeout: int) -> dict[str, Any]:
        """One entry of the InitializeCameraStreams response's cameraStreams."""
        return {
            "uri": uri,
            "expirationTime": timestamp(expires),
            "idleTimeoutSeconds": idle_timeout,
            "protocol": "RTSP",
            "resolution": self.resolution(),
            "authorizationType": "NONE",
            "videoCodec": "H264",
            "audioCodec": self.audio_codec(),
        }


class RTCSessionController(AlexaInterface):
    """Alexa.RTCSessionController: Alexa's SDP offer in, our complete SDP answer out (Alexa
    does not trickle ICE). Camera to Echo only: no talk-back yet, so no full-duplex audio."""

    interface = "Alexa.RTCSessionController"
    SDP = "SDP"  # the one `format` of an offer and an answer

    def capability(self) -> dict[str, Any]:
        return {**super().capability(), "configuration": {"isFullDuplexAudioSupported": False}}

    @classmethod
    def answer(cls, sdp: str) -> dict[str, Any]:
        """The AnswerGeneratedForSession payload: the answer and nothing else."""
        return {"answer": {"format": cls.SDP, "value": sdp}}

    @staticmethod
    def session(session_id: str) -> dict[str, Any]:
        """The SessionConnected / SessionDisconnected payload."""
        return {"sessionId": session_id}


def advertises_webrtc(services: Services) -> bool:
    """RTCSessionController goes into Discovery only where an engine can answer offers."""
    return not isinstance(services.webrtc, NoWebRTC)


def advertises_streams(services: Services) -> bool:
    """CameraStreamController goes into Discovery only when a relay serves RTSPS on port 443,
    the one port Echo devices connect to."""
    return services.settings.rtsps_url_port() == 443 and services.rtsps_available()


def capabilities(
    camera: Camera, streams: bool, proactive: bool, webrtc: bool = False
) -> list[AlexaInterface]:
    """The interfaces a camera's endpoint lists; `streams` False when no RTSPS can be served
    (no relay, or none on port 443), `proactive` False when no ChangeReport will be sent,
    `webrtc` False when no engine answers offers (or the source cannot feed one: a camera
    cloud's HLS)."""
    found: list[AlexaInterface] = [AlexaInterface()]
    if (
        streams
        and Protocol.RTSPS in protocols(camera)
        and CameraStreamController.resolution_of(camera) is not None
    ):
        found.append(CameraStreamController(camera))
    if webrtc and Protocol.WEBRTC in protocols(camera):
        found.append(RTCSessionController())
    found.append(EndpointHealth(proactive))
    return found


def endpoint(
    camera: Camera, settings: Settings, streams: bool, proactive: bool, webrtc: bool = False
) -> dict[str, Any]:
    """One camera as a discovery endpoint (see `capabilities` for the flags)."""
    manufacturer = clean_text(settings.manufacturer, "camvoice")
    attributes = {"manufacturer": manufacturer}
    known = {"model": camera.model, "firmwareVersion": camera.firmware,
             "serialNumber": camera.serial}  # fmt: skip
    attributes.update({key: value[:256] for key, value in known.items() if value})
    return {
        "endpointId": camera.id,
        "manufacturerName": manufacturer,
        "description": clean_text(
            f"{camera.model or 'Camera'} by {settings.manufacturer}", "Camera"
        ),
        "friendlyName": friendly_name(camera.name),
        "displayCategories": ["CAMERA"],
        "additionalAttributes": attributes,
        "capabilities": [
            interface.capability() for interface in capabilities(camera, streams, proactive, webrtc)
        ],
    }


def response(
    namespace: str,
    name: str,
    directive: dict[str, Any],
    payload: dict[str, Any],
    properties: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A synchronous answer that echoes the directive's correlation token and endpoint."""
    head = directive.get("header", {})
    event: dict[str, Any] = {"header": header(namespace, name, head.get("correlationToken"))}
    if "endpoint" in directive:
        event["endpoint"] = echo_endpoint(directive)
    event["payload"] = payload
    message: dict[str, Any] = {"event": event}
    if properties is not None:
        message["context"] = {"properties": properties}
    return message


def echo_endpoint(directive: dict[str, Any]) -> dict[str, Any]:
    source = directive.get("endpoint")
    if not isinstance(source, dict):
        return {}
    echoed = {k: source[k] for k in ("scope", "endpointId", "cookie") if k in source}
    return echoed


def error(directive: dict[str, Any], exc: AlexaError) -> dict[str, Any]:
    """Alexa.ErrorResponse (or Alexa.Authorization.ErrorResponse) for this directive."""
    return response(exc.namespace, "ErrorResponse", directive, exc.payload())
