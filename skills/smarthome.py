"""Alexa Smart Home directives, one handler per (namespace, name).

Handlers translate a directive into core calls and the result back into Alexa's messages; the
readiness rules and their error mapping come from the core's table.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from camvoice import audit
from camvoice.cameras import CameraGone
from camvoice.models import Camera
from camvoice.services import Services
from camvoice.streams import StreamRefused, blockers_for, reason_of, record_refusal
from camvoice.tickets import Audience, Protocol
from oauth.tokens import Failure, Principal, authenticate_bearer
from skills import errors, messages
from skills.events import LwaError, accept_grant, events_flow

log = logging.getLogger(__name__)
IDLE_TIMEOUT_SECONDS = 30

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
        if result is Failure.EXPIRED:
            raise errors.ExpiredCredential("access token expired")
        if isinstance(result, Failure):
            raise errors.InvalidCredential(f"access token {result.value}")
        return result

    def endpoint_owner(self, session: Session) -> tuple[Principal, Camera]:
        endpoint = self.directive.get("endpoint")
        if not isinstance(endpoint, dict) or not isinstance(endpoint.get("endpointId"), str):
            raise errors.InvalidDirective("endpoint.endpointId is required")
        scope = endpoint.get("scope") if isinstance(endpoint.get("scope"), dict) else {}
        principal = self.principal(session, scope.get("token"))  # type: ignore[union-attr]
        camera = self.services.registry.owned_camera(
            session, principal.account_id, endpoint["endpointId"]
        )
        if camera is None:
            raise errors.NoSuchEndpoint("no such camera for this account")
        return principal, camera


def discover(req: Request) -> Message:
    scope = req.payload.get("scope")
    streams = messages.advertises_streams(req.services)
    with req.services.db.session() as session:
        try:
            principal = req.principal(
                session, scope.get("token") if isinstance(scope, dict) else None
            )
        except errors.AlexaError:
            # Amazon's rule for Discovery: a bad or expired token gets no endpoints, not an error.
            return messages.response("Alexa.Discovery", "Discover.Response", req.directive,
                                     {"endpoints": []})  # fmt: skip
        cameras = req.services.registry.owned_cameras(session, principal.account_id)
        settings = req.services.settings
        proactive = events_flow(session, settings, principal.account_id)
        endpoints = [
            messages.endpoint(c, settings, streams, proactive)
            for c in cameras[: messages.MAX_ENDPOINTS]
        ]
        audit.record(session, "alexa.discover", actor="alexa", account_id=principal.account_id,
                     assistant="alexa", endpoints=len(endpoints))  # fmt: skip
    return messages.response("Alexa.Discovery", "Discover.Response", req.directive,
                             {"endpoints": endpoints})  # fmt: skip


def initialize_camera_streams(req: Request) -> Message:
    services = req.services
    with services.db.session() as session:
        principal, camera = req.endpoint_owner(session)
        known = blockers_for(camera, Audience.ALEXA, Protocol.RTSPS)
        if known:  # the owner hears why first, whatever else is missing
            record_refusal(session, camera, Audience.ALEXA, reason_of(known))
    if known:
        raise errors.for_blocker(known[0])
    if not services.rtsps_available():
        with services.db.session() as session:
            record_refusal(session, camera, Audience.ALEXA, "no_rtsps_relay")
        raise errors.NotSupportedInCurrentMode("no RTSPS relay is configured", "NOT_PROVISIONED")
    requested = req.payload.get("cameraStreams")
    if not isinstance(requested, list) or not all(isinstance(s, dict) for s in requested):
        raise errors.InvalidDirective("payload.cameraStreams must be a list")
    chosen = next((s for s in requested if s.get("protocol") == "RTSP"
                   and s.get("videoCodec") == "H264"), None)  # fmt: skip
    if chosen is None:
        raise errors.InvalidValue("only RTSP with H264 can be served")
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
