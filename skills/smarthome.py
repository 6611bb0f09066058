"""Alexa Smart Home directives, one handler per (namespace, name).

Handlers translate a directive into core calls and the result back into Alexa's messages; the
readiness rules and their error mapping come from the core's table.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from camvoice import audit
from camvoice.cameras import CameraGone
from camvoice.db import Driver
from camvoice.discovery import Encoded, encoded
from camvoice.models import Camera
from camvoice.services import Services
from camvoice.streams import (
    OpenStream,
    StreamRefused,
    blockers_for,
    reason_of,
    record_refusal,
)
from camvoice.tickets import Audience, Protocol
from camvoice.webrtc import WebRTCError
from oauth.tokens import (
    Failure,
    Principal,
    authenticate_bearer,
    authenticate_for_camera,
    touch_grant,
)
from skills import errors, messages
from skills.events import LwaError, accept_grant, discovery_facts

log = logging.getLogger(__name__)
IDLE_TIMEOUT_SECONDS = 30
MAX_SDP_BYTES = 64 * 1024  # real offers are a few KiB; anything near this is not one
SESSION_ID = re.compile(r"[\x21-\x7e]{1,256}")  # Alexa's ids are UUID-like: printable ASCII

Message = dict[str, Any]


@dataclass
class Request:
    services: Services
    directive: dict[str, Any]

    @property
    def payload(self) -> dict[str, Any]:
        payload = self.directive.get("payload")
        if not isinstance(payload, dict):
            raise errors.InvalidDirective("payload must be an object")
        return payload

    def principal(self, session: Session, token: object) -> Principal:
        """The owner behind a bearer token. Only real token failures unlink the skill."""
        result = authenticate_bearer(session, token if isinstance(token, str) else None, "alexa")
        return trusted(result)

    def endpoint_owner(
        self, session: Session | Driver, *, touch: bool = True
    ) -> tuple[Principal, Camera]:
        """The owner behind the scope's token and their camera the directive names, read in
        one statement; the token is judged first (its failures are Alexa's credential errors).
        With touch=False (a reading transaction, or a Driver) a stale link is not touched
        here: the principal says `stale`, and the caller touches it in a writing one."""
        endpoint = self.directive.get("endpoint")
        if not isinstance(endpoint, dict) or not isinstance(endpoint.get("endpointId"), str):
            raise errors.InvalidDirective("endpoint.endpointId is required")
        scope = endpoint.get("scope") if isinstance(endpoint.get("scope"), dict) else {}
        token = scope.get("token")  # type: ignore[union-attr]
        result, camera = authenticate_for_camera(
            session,
            token if isinstance(token, str) else None,
            "alexa",
            endpoint["endpointId"],
            touch=touch,
        )
        principal = trusted(result)
        if camera is None:
            raise errors.NoSuchEndpoint("no such camera for this account")
        return principal, camera


def trusted(result: Principal | Failure) -> Principal:
    """The principal, or the credential error Alexa gets: only real token failures unlink."""
    if result is Failure.EXPIRED:
        raise errors.ExpiredCredential("access token expired")
    if isinstance(result, Failure):
        raise errors.InvalidCredential(f"access token {result.value}")
    return result


def discover(req: Request) -> Message:
    """The owner's endpoints. The token, then the version, are read through the driver (one
    statement each); after a change the cameras are read, after the version, in a reading
    transaction (no write lock on SQLite); the audit row is then written by itself, before the
    answer is sent."""
    services = req.services
    scope = req.payload.get("scope")
    token = scope.get("token") if isinstance(scope, dict) else None
    streams = messages.advertises_streams(services)
    webrtc = messages.advertises_webrtc(services)
    settings = services.settings
    with services.db.driver() as reading:
        principal = authenticate_bearer(
            reading, token if isinstance(token, str) else None, "alexa", touch=False
        )
        if not isinstance(principal, Principal):
            # Amazon's rule for Discovery: a bad or expired token gets no endpoints, not an error.
            return messages.response("Alexa.Discovery", "Discover.Response", req.directive,
                                     {"endpoints": []})  # fmt: skip
        owner = principal.account_id
        version, proactive = discovery_facts(reading, settings, owner)

    def build() -> Encoded:
        with services.db.reading() as session:  # after the version: never older than it
            cameras = services.registry.owned_cameras(session, owner)
            return encoded([messages.endpoint(c, settings, streams, proactive, webrtc)
                            for c in cameras[: messages.MAX_ENDPOINTS]])  # fmt: skip

    # Everything an endpoint is built from: the cameras (their version) and these flags.
    key = ("alexa", owner, proactive, streams, webrtc, settings.manufacturer)
    endpoints = services.discovery.answer(key, version, build)
    if principal.stale:  # at most once a minute
        with services.db.session() as session:
            touch_grant(session, principal.grant_id)
    with services.db.driver() as committing:  # the INSERT commits by itself
        audit.record(committing, "alexa.discover", actor="alexa", account_id=owner,
                     assistant="alexa", endpoints=endpoints.count)  # fmt: skip
    return messages.response("Alexa.Discovery", "Discover.Response", req.directive,
                             {"endpoints": endpoints})  # fmt: skip


def initialize_camera_streams(req: Request) -> Message:
    """The token and the camera are read in one statement (no write lock); the audit row, of
    the stream handed out or of the refusal, then commits by itself before the answer is sent,
    so on SQLite the write lock is held for that one INSERT alone. Both go through the driver
    (Database.driver): on this path SQLAlchemy's machinery cost more than the statements."""
    services = req.services
    opened: OpenStream | None = None
    with services.db.driver() as reading:
        principal, camera = req.endpoint_owner(reading, touch=False)
    if principal.stale:  # at most once a minute
        with services.db.session() as session:
            touch_grant(session, principal.grant_id)
    with services.db.driver() as committing:  # each audit row commits by itself
        failure = stream_failure(req, committing, camera)
        if failure is None and not services.streams.asks_backend(camera):
            try:
                opened = services.streams.open(
                    services.db,
                    camera,
                    Audience.ALEXA,
                    Protocol.RTSPS,
                    principal.grant_id,
                    within=committing,
                )
            except StreamRefused as refused:  # its audit row is committed already
                failure = errors.for_blocker(refused.blockers[0])
    if failure is not None:
        raise failure
    if opened is None:  # a camera cloud is asked, with no transaction open
        try:
            opened = services.streams.open(
                services.db, camera, Audience.ALEXA, Protocol.RTSPS, principal.grant_id
            )
        except CameraGone:
            raise errors.NoSuchEndpoint("no such camera for this account") from None
        except StreamRefused as refused:
            raise errors.for_blocker(refused.blockers[0]) from None
    controller = messages.CameraStreamController(opened.camera)
    stream = controller.stream(opened.url, opened.expires_at, IDLE_TIMEOUT_SECONDS)
    return messages.response(
        controller.interface, "Response", req.directive,
        {"cameraStreams": [stream], "imageUri": opened.image_url},
        [messages.EndpointHealth.connectivity(opened.camera)],
    )  # fmt: skip


def stream_failure(req: Request, committing: Driver, camera: Camera) -> errors.AlexaError | None:
    """Why InitializeCameraStreams cannot be served before the stream is opened, in the order
    the owner should hear it; a refusal's audit row is committed through `committing` (a
    Database.driver connection) before the caller raises it."""
    known = blockers_for(camera, Audience.ALEXA, Protocol.RTSPS)
    if known:  # the owner hears why first, whatever else is missing
        record_refusal(committing, camera, Audience.ALEXA, reason_of(known))
        req.services.metrics.stream_denied("alexa", "rtsps", known[0].value)
        return errors.for_blocker(known[0])
    if not req.services.rtsps_available():
        record_refusal(committing, camera, Audience.ALEXA, "no_rtsps_relay")
        return errors.NotSupportedInCurrentMode("no RTSPS relay is configured", "NOT_PROVISIONED")
    requested = req.payload.get("cameraStreams")
    if not isinstance(requested, list) or not all(isinstance(s, dict) for s in requested):
        return errors.InvalidDirective("payload.cameraStreams must be a list")
    chosen = next((s for s in requested if s.get("protocol") == "RTSP"
                   and s.get("videoCodec") == "H264"), None)  # fmt: skip
    if chosen is None:
        return errors.InvalidValue("only RTSP with H264 can be served")
    return None


def session_id_of(payload: dict[str, Any]) -> str:
    session_id = payload.get("sessionId")
    if not isinstance(session_id, str) or not SESSION_ID.fullmatch(session_id):
        raise errors.InvalidDirective("payload.sessionId must be 1 to 256 printable characters")
    return session_id


def engine_session(camera_id: str, session_id: str) -> str:
    """The engine's name for Alexa's session on this camera.

    The engine keeps one namespace for every caller (Google's ticket ids too) and a second offer
    under a known id replaces that session. Naming it by the owned camera and Alexa's id keeps a
    directive from reaching a session of another camera, owner or assistant, whatever id it
    carries; hashed, it has one length and is safe in the engine's logs."""
    digest = hashlib.sha256(f"{camera_id}\n{session_id}".encode()).hexdigest()
    return "alexa-" + digest[:40]


def offer_of(payload: dict[str, Any]) -> str:
    """The SDP text of payload.offer, refused before any media is started when it cannot be."""
    offer = payload.get("offer")
    if not isinstance(offer, dict) or not isinstance(offer.get("value"), str):
        raise errors.InvalidDirective("payload.offer must be {format: SDP, value: <SDP text>}")
    form, value = offer.get("format"), offer["value"]
    if not isinstance(form, str) or form.upper() != messages.RTCSessionController.SDP:
        raise errors.InvalidValue("payload.offer.format must be SDP")
    if not value.strip():
        raise errors.InvalidValue("payload.offer.value is empty")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_SDP_BYTES:
        raise errors.InvalidValue(f"payload.offer.value is over {MAX_SDP_BYTES} bytes")
    return value


def initiate_session(req: Request) -> Message:
    """InitiateSessionWithOffer: readiness first, then a webrtc ticket, then the engine's
    complete answer, sent back as the directive's synchronous AnswerGeneratedForSession."""
    services = req.services
    with services.db.session() as session:
        principal, camera = req.endpoint_owner(session)
        known = blockers_for(camera, Audience.ALEXA, Protocol.WEBRTC)
        if known:  # the owner hears why first, whatever else is wrong
            record_refusal(session, camera, Audience.ALEXA, reason_of(known),
                           protocol=Protocol.WEBRTC.value)  # fmt: skip
            services.metrics.stream_denied("alexa", "webrtc", known[0].value)
    if known:
        raise errors.for_blocker(known[0])
    session_id, offer = session_id_of(req.payload), offer_of(req.payload)
    if not messages.advertises_webrtc(services):
        with services.db.session() as session:
            record_refusal(session, camera, Audience.ALEXA, "no_webrtc_engine",
                           protocol=Protocol.WEBRTC.value)  # fmt: skip
        raise errors.NotSupportedInCurrentMode("no WebRTC engine is configured", "NOT_PROVISIONED")
    try:
        opened = services.streams.open(
            services.db, camera, Audience.ALEXA, Protocol.WEBRTC, principal.grant_id
        )
        answer = services.webrtc.answer(
            opened.token, camera.id, offer, session_id=engine_session(camera.id, session_id)
        )
    except CameraGone:
        raise errors.NoSuchEndpoint("no such camera for this account") from None
    except StreamRefused as refused:
        raise errors.for_blocker(refused.blockers[0]) from None
    except WebRTCError as exc:
        log.info("WebRTC offer for camera %s refused: %s", camera.id, exc.reason)
        raise errors.for_webrtc(exc) from None
    controller = messages.RTCSessionController
    return messages.response(controller.interface, "AnswerGeneratedForSession", req.directive,
                             controller.answer(answer.sdp))  # fmt: skip


def session_connected(req: Request) -> Message:
    """SessionConnected: the Echo's media flows. Nothing rests on it arriving (the engine ends
    idle and failed sessions itself); a session this camera does not have is refused."""
    with req.services.db.session() as session:
        _principal, camera = req.endpoint_owner(session)
    session_id = session_id_of(req.payload)
    try:
        known = req.services.webrtc.connected(engine_session(camera.id, session_id), camera.id)
    except WebRTCError as exc:
        raise errors.for_webrtc(exc) from None
    if not known:
        raise errors.InvalidValue("no such live session of this camera")
    controller = messages.RTCSessionController
    return messages.response(controller.interface, "SessionConnected", req.directive,
                             controller.session(session_id))  # fmt: skip


def session_disconnected(req: Request) -> Message:
    """SessionDisconnected: tear the session down. Only the owner's camera's session can be
    named (the engine matches the camera too); one already gone is acknowledged all the same."""
    with req.services.db.session() as session:
        _principal, camera = req.endpoint_owner(session)
    session_id = session_id_of(req.payload)
    try:
        req.services.webrtc.end(
            engine_session(camera.id, session_id), camera.id, "alexa_disconnected"
        )
    except WebRTCError as exc:
        raise errors.for_webrtc(exc) from None
    controller = messages.RTCSessionController
    return messages.response(controller.interface, "SessionDisconnected", req.directive,
                             controller.session(session_id))  # fmt: skip


def report_state(req: Request) -> Message:
    with req.services.db.session() as session:
        _principal, camera = req.endpoint_owner(session)
    return messages.response("Alexa", "StateReport", req.directive, {},
                             [messages.EndpointHealth.connectivity(camera)])  # fmt: skip


def accept(req: Request) -> Message:
    grant, grantee = req.payload.get("grant"), req.payload.get("grantee")
    if not isinstance(grant, dict) or not isinstance(grantee, dict) or not grant.get("code"):
        raise errors.InvalidDirective("payload.grant.code and payload.grantee are required")
    with req.services.db.session() as session:
        try:
            principal = req.principal(session, grantee.get("token"))
        except errors.AlexaError as exc:  # Alexa.Authorization has its own error for every failure
            raise errors.AcceptGrantFailed(str(exc)) from None
    try:
        accept_grant(req.services, principal.account_id, str(grant["code"]))
    except LwaError as exc:
        log.warning("AcceptGrant failed for owner %s: %s", principal.account_id, exc)
        raise errors.AcceptGrantFailed("could not exchange the grant code") from None
    with req.services.db.session() as session:
        audit.record(session, "alexa.events_granted", actor="alexa",
                     account_id=principal.account_id, assistant="alexa")  # fmt: skip
    return messages.response("Alexa.Authorization", "AcceptGrant.Response", req.directive, {})


HANDLERS: dict[tuple[str, str], Callable[[Request], Message]] = {
    ("Alexa.Discovery", "Discover"): discover,
    ("Alexa.CameraStreamController", "InitializeCameraStreams"): initialize_camera_streams,
    ("Alexa.RTCSessionController", "InitiateSessionWithOffer"): initiate_session,
    ("Alexa.RTCSessionController", "SessionConnected"): session_connected,
    ("Alexa.RTCSessionController", "SessionDisconnected"): session_disconnected,
    ("Alexa", "ReportState"): report_state,
    ("Alexa.Authorization", "AcceptGrant"): accept,
}


def handle(services: Services, message: Any) -> Message:
    """Answer one directive: its response, or the ErrorResponse Amazon defines for the failure."""
    directive = message.get("directive") if isinstance(message, dict) else None
    if not isinstance(directive, dict) or not isinstance(directive.get("header"), dict):
        return messages.error({}, errors.InvalidDirective("body must be {'directive': {...}}"))
    head = directive["header"]
    key = (head.get("namespace"), head.get("name"))
    # Only strings are looked up: a list there is unhashable, any other type unknown.
    handler = HANDLERS.get(key) if all(isinstance(part, str) for part in key) else None  # type: ignore[arg-type]
    if head.get("payloadVersion") != messages.PAYLOAD_VERSION or handler is None:
        return messages.error(
            directive, errors.InvalidDirective("unsupported directive or payload version")
        )
    try:
        return handler(Request(services, directive))
    except errors.AlexaError as exc:
        return messages.error(directive, exc)
