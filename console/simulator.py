"""The voice simulator: what Alexa or Google would send for an utterance, sent through the real
endpoints of this app, and what came back.

Smart-home directives go to /alexa/smart-home signed exactly as the Lambda forwarder signs them;
Google's request carries a bearer token of a built-in simulator client; the custom skill gets
a request envelope handed to the same ask-sdk skill that serves /alexa/custom (Amazon's request
signature cannot be made here, so only that check is skipped).

The page plays what a display would: an Echo Show's WebRTC offer (made by the page's browser)
goes out in InitiateSessionWithOffer and the answer comes back to the page; a Nest Hub's
GetCameraStream asks for WebRTC and the page signals with the token it got, while "on the TV"
(a Chromecast) gets HLS. Without an offer (no script) the Alexa path is the RTSPS one.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ask_sdk_core.serialize import DefaultSerializer
from ask_sdk_model import RequestEnvelope
from flask import current_app

from camvoice.languages import LOCALES
from camvoice.models import Camera
from camvoice.names import resolve
from camvoice.readiness import Assistant, explain, readiness
from camvoice.services import Services
from camvoice.settings import Settings
from oauth.tokens import simulator_token

LEAD = re.compile(
    r"^\s*((alexa|hey google|ok google)[,\s]+)?((ask|pide a) [\w\s]+? (to|que) )?"
    r"(show me|show|open|watch|display|muéstrame|muestra|enséñame|pon|abre|ver"
    r"|zeig mir|zeige mir|zeige|zeig|öffne|montre-moi|montre moi|montre|affiche|ouvre"
    r"|mostrami|fammi vedere|mostra|apri|me mostre|mostre|abra)\s+",
    re.IGNORECASE,
)
TAIL = re.compile(
    r"\s+(on|en|auf|sur|sulla|sul|na|no)\s+(the|la|el|dem|der|il)?\s*[\w\s-]*"
    r"(tv|tele|television|televisión|fernseher|télé|télévision|televisore|chromecast)\s*$",
    re.IGNORECASE,
)
# Japanese puts the verb last: 「リビングのテレビで玄関を見せて」.
JA_TAIL = re.compile(r"(を|の映像を)?(見せて|表示して|映して)(ください)?[。!]?$")
JA_TV = re.compile(r"^.*(テレビ|クロームキャスト|Chromecast)で")
# Words that tell the utterance's language (checked in this order; Spanish last: "la" is
# French and Italian too); the page's language otherwise.
SPOKEN: dict[str, re.Pattern[str]] = {
    "ja": re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]"),
    "de": re.compile(r"\b(zeige?|kamera|öffne|fernseher)\b", re.IGNORECASE),
    "fr": re.compile(r"\b(montre|affiche|caméra|ouvre|télé)\b", re.IGNORECASE),
    "it": re.compile(r"\b(mostrami|mostra|fammi|telecamera|apri)\b", re.IGNORECASE),
    "pt_BR": re.compile(r"\b(mostre|câmera|abra)\b", re.IGNORECASE),
    "es": re.compile(r"\b(muestra|muéstrame|enséñame|cámara|pon|abre|del|la)\b", re.IGNORECASE),
}


@dataclass
class Outcome:
    request: dict[str, Any] = field(default_factory=dict)
    response: dict[str, Any] = field(default_factory=dict)
    hls: str | None = None
    snapshot: str | None = None
    answer: str | None = None  # the SDP answer to the page's offer (Alexa)
    session_id: str | None = None  # the Alexa session it answers
    webrtc: dict[str, Any] | None = None  # signaling URL, token and ICE servers (Google)
    error: str | None = None
    speech: str | None = None


def spoken_camera(utterance: str) -> str:
    """'Alexa, show the front door camera on the TV' -> 'the front door camera';
    'リビングのテレビで玄関を見せて' -> '玄関'."""
    text = TAIL.sub("", LEAD.sub("", utterance.strip()))
    text = JA_TV.sub("", JA_TAIL.sub("", text.strip(" .?!¿¡。")))
    return text.strip(" .?!¿¡、。")


def on_tv(utterance: str) -> bool:
    """'... on the living room TV', '... auf dem Fernseher', 'テレビで...': a Chromecast."""
    return TAIL.search(utterance.strip()) is not None or JA_TV.search(utterance) is not None


def language_of(utterance: str, fallback: str) -> str:
    """The locale the words of an utterance are in, else `fallback` (the page's)."""
    return next((loc for loc, words in SPOKEN.items() if words.search(utterance)), fallback)


def masked(message: Any) -> Any:
    """A message as shown on the page: bearer tokens, TURN credentials and ICE passwords
    replaced (the page's own player gets them apart from what it shows)."""
    text = json.dumps(message)
    text = re.sub(
        r'("(token|accessToken|Authorization|cameraStreamAuthToken|credential)": ")[^"]+',
        r"\1***",
        text,
    )
    text = re.sub(r"(a=ice-pwd:)[^\\\s\"]+", r"\1***", text)
    return json.loads(text)


def local(url: str, settings: Settings) -> str:
    """Our own URLs as paths, so the page (and its CSP) stays same-origin."""
    return url[len(settings.public_url) :] if url.startswith(settings.public_url) else url


def smart_home(directive: dict[str, Any], settings: Settings) -> tuple[int, dict[str, Any]]:
    """A directive through /alexa/smart-home, signed as the Lambda forwarder signs it."""
    body = json.dumps(directive).encode()
    secret = settings.alexa_forwarder_secret
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        ts = str(int(time.time()))
        sig = hmac.new(
            secret.get_secret_value().encode(), ts.encode() + b"." + body, hashlib.sha256
        )
        headers |= {"X-Camvoice-Timestamp": ts, "X-Camvoice-Signature": sig.hexdigest()}
    reply = current_app.test_client().post("/alexa/smart-home", data=body, headers=headers)
    return reply.status_code, reply.get_json(silent=True) or {}


def directive_of(namespace: str, name: str, endpoint_id: str, token: str,
                 payload: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    return {
        "directive": {
            "header": {
                "namespace": namespace,
                "name": name,
                "payloadVersion": "3",
                "messageId": str(uuid.uuid4()),
                "correlationToken": uuid.uuid4().hex,
            },
            "endpoint": {
                "scope": {"type": "BearerToken", "token": token},
                "endpointId": endpoint_id,
            },
            "payload": payload,
        }
    }


def alexa_smart_home(camera: Camera, token: str, settings: Settings) -> Outcome:
    """An Echo without WebRTC: InitializeCameraStreams, RTSP."""
    directive = directive_of("Alexa.CameraStreamController", "InitializeCameraStreams", camera.id,
                             token, {"cameraStreams": [{
                                 "protocol": "RTSP",
                                 "resolution": {"width": 1280, "height": 720},
                                 "authorizationType": "NONE",
                                 "videoCodec": "H264",
                                 "audioCodec": "AAC",
                             }]})  # fmt: skip
    status, response = smart_home(directive, settings)
    outcome = Outcome(request=masked(directive), response=masked(response))
    event = response.get("event", {})
    if event.get("header", {}).get("name") == "Response":
        outcome.snapshot = local(event["payload"]["imageUri"], settings)
    else:
        outcome.error = (event.get("payload") or {}).get("type") or f"HTTP {status}"
    return outcome


def alexa_rtc(camera: Camera, token: str, offer: str, settings: Settings) -> Outcome:
    """An Echo Show: InitiateSessionWithOffer with the page's offer, the answer for the page."""
    session_id = str(uuid.uuid4())
    directive = directive_of("Alexa.RTCSessionController", "InitiateSessionWithOffer", camera.id,
                             token, {"sessionId": session_id,
                                     "offer": {"format": "SDP", "value": offer}})  # fmt: skip
    status, response = smart_home(directive, settings)
    outcome = Outcome(request=masked(directive), response=masked(response), session_id=session_id)
    event = response.get("event", {})
    answer = (event.get("payload") or {}).get("answer") or {}
    if event.get("header", {}).get("name") == "AnswerGeneratedForSession" and answer.get("value"):
        outcome.answer = answer["value"]
    else:
        outcome.error = (event.get("payload") or {}).get("type") or f"HTTP {status}"
    return outcome


SESSION_EVENTS = {"connected": "SessionConnected", "disconnected": "SessionDisconnected"}


def alexa_session_event(
    services: Services, account_id: str, camera_id: str, session_id: str, event: str
) -> str | None:
    """What an Echo Show says of its session: SessionConnected once media flows,
    SessionDisconnected when it stops watching. None, or the handler's error type."""
    with services.db.session() as session:
        token, _grant = simulator_token(session, account_id, "alexa")
    directive = directive_of("Alexa.RTCSessionController", SESSION_EVENTS[event], camera_id,
                             token, {"sessionId": session_id})  # fmt: skip
    status, response = smart_home(directive, services.settings)
    event_sent = response.get("event") or {}
    if status == 200 and event_sent.get("header", {}).get("name") == SESSION_EVENTS[event]:
        return None
    return (event_sent.get("payload") or {}).get("type") or f"HTTP {status}"


def google(camera: Camera, token: str, settings: Settings, chromecast: bool) -> Outcome:
    """GetCameraStream as a Nest Hub asks it (WebRTC first), or for a Chromecast (HLS)."""
    request = {
        "requestId": str(uuid.uuid4()),
        "inputs": [
            {
                "intent": "action.devices.EXECUTE",
                "payload": {
                    "commands": [
                        {
                            "devices": [{"id": camera.id}],
                            "execution": [
                                {
                                    "command": "action.devices.commands.GetCameraStream",
                                    "params": {
                                        "StreamToChromecast": chromecast,
                                        "SupportedStreamProtocols": (
                                            ["hls", "dash"]
                                            if chromecast
                                            else ["webrtc", "hls", "dash"]
                                        ),
                                    },
                                }
                            ],
                        }
                    ]
                },
            }
        ],
    }
    reply = current_app.test_client().post(
        "/google/fulfillment", json=request, headers={"Authorization": f"Bearer {token}"}
    )
    response = reply.get_json(silent=True) or {}
    outcome = Outcome(request=masked(request), response=masked(response))
    commands = (response.get("payload") or {}).get("commands") or [{}]
    result = commands[0]
    states = result.get("states") or {}
    if result.get("status") == "SUCCESS" and states.get("cameraStreamProtocol") == "webrtc":
        ice = states.get("cameraStreamIceServers") or "[]"
        outcome.webrtc = {
            "signal": local(states["cameraStreamSignalingUrl"], settings),
            "ticket": states.get("cameraStreamAuthToken", ""),
            "ice": json.loads(ice) if isinstance(ice, str) else ice,  # Google's: JSON text
        }
    elif result.get("status") == "SUCCESS":
        outcome.hls = local(states["cameraStreamAccessUrl"], settings)
    else:
        outcome.error = result.get("errorCode") or f"HTTP {reply.status_code}"
    return outcome


def alexa_custom(spoken: str, token: str, lang: str, settings: Settings) -> Outcome:
    app_id = settings.alexa_skill_id or "camvoice"
    user = {"userId": "amzn1.ask.account.SIMULATOR", "accessToken": token}
    envelope = {
        "version": "1.0",
        "session": {
            "new": True,
            "sessionId": "amzn1.echo-api.session." + uuid.uuid4().hex,
            "application": {"applicationId": app_id},
            "user": user,
        },
        "context": {
            "System": {
                "application": {"applicationId": app_id},
                "user": user,
                "device": {"deviceId": "simulator", "supportedInterfaces": {"VideoApp": {}}},
                "apiEndpoint": "https://api.amazonalexa.com",
            }
        },
        "request": {
            "type": "IntentRequest",
            "requestId": "amzn1.echo-api.request." + uuid.uuid4().hex,
            "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "locale": LOCALES.get(lang, "en-US"),
            "dialogState": "STARTED",
            "intent": {
                "name": "ShowCameraIntent",
                "confirmationStatus": "NONE",
                "slots": {
                    "camera": {"name": "camera", "value": spoken, "confirmationStatus": "NONE"}
                },
            },
        },
    }
    serializer = DefaultSerializer()
    skill = current_app.extensions["camvoice.custom_skill"]
    parsed = serializer.deserialize(json.dumps(envelope), RequestEnvelope)
    answer = serializer.serialize(skill.invoke(request_envelope=parsed, context=None))
    outcome = Outcome(request=masked(envelope), response=answer)
    response = answer.get("response", {})
    ssml = (response.get("outputSpeech") or {}).get("ssml", "")
    outcome.speech = html.unescape(re.sub(r"</?speak>", "", ssml))  # shown as text, escaped
    for directive in response.get("directives") or []:
        if directive.get("type") == "VideoApp.Launch":
            outcome.hls = local(directive["videoItem"]["source"], settings)
    return outcome


def simulate(
    services: Services,
    account_id: str,
    assistant: str,
    utterance: str,
    lang: str,
    offer: str | None = None,
) -> tuple[Outcome, Camera | None]:
    """Run one utterance through the chosen assistant's real path; `offer` is the page's SDP
    offer, which makes the Alexa path an Echo Show's WebRTC one."""
    settings = services.settings
    spoken = spoken_camera(utterance)
    lang = language_of(utterance, lang)
    with services.db.session() as session:  # committed before the endpoint looks the token up
        cameras = services.registry.owned_cameras(session, account_id)
        token, _grant = simulator_token(
            session, account_id, "google" if assistant == "google" else "alexa"
        )
    if assistant == "alexa_custom":
        return alexa_custom(spoken, token, lang, settings), None
    matches = resolve(spoken, cameras)
    if len(matches) != 1:
        return Outcome(error="no_camera"), None
    camera = matches[0]
    if assistant == "google":
        chromecast = on_tv(utterance)
        outcome, which = google(camera, token, settings, chromecast), Assistant.GOOGLE
    elif offer:
        outcome, which = alexa_rtc(camera, token, offer, settings), Assistant.ALEXA
    else:
        outcome, which = alexa_smart_home(camera, token, settings), Assistant.ALEXA
    blockers = readiness(camera, which)
    if outcome.error and blockers:
        outcome.speech = " ".join(explain(b, lang) for b in blockers)
    return outcome, camera
