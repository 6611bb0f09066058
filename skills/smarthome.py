"""Alexa Smart Home directives, one handler per (namespace, name).

Handlers translate a directive into core calls and the result back into Alexa's messages; the
readiness rules and their error mapping come from the core's table.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from camvoice import audit
from camvoice.cameras import BACKENDS
from camvoice.models import Camera
from camvoice.readiness import BLOCKERS, explain
from camvoice.settings import Settings
from camvoice.streams import mint, stream_blockers
from camvoice.tickets import Audience, Protocol
from oauth.tokens import Failure, Principal, authenticate_bearer
from skills import messages
from skills.events import LwaError, accept_grant, streams_available

log = logging.getLogger(__name__)
IDLE_TIMEOUT_SECONDS = 30

Message = dict[str, Any]


class DirectiveError(Exception):
    """Answer with an Alexa.ErrorResponse of this type."""

    def __init__(self, error_type: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.extra = extra


@dataclass
class Request:
    session: Session
    settings: Settings
    directive: dict[str, Any]

    @property
    def payload(self) -> dict[str, Any]:
        payload = self.directive.get("payload")
        if not isinstance(payload, dict):
            raise DirectiveError("INVALID_DIRECTIVE", "payload must be an object")
        return payload

    def principal(self, token: object) -> Principal:
        """The owner behind a bearer token. Only real token failures unlink the skill."""
        result = authenticate_bearer(
            self.session, token if isinstance(token, str) else None, "alexa"
        )
        if result is Failure.EXPIRED:
            raise DirectiveError("EXPIRED_AUTHORIZATION_CREDENTIAL", "access token expired")
        if isinstance(result, Failure):
            raise DirectiveError("INVALID_AUTHORIZATION_CREDENTIAL", f"access token {result.value}")
        return result

    def endpoint_owner(self) -> tuple[Principal, Camera]:
        endpoint = self.directive.get("endpoint")
        if not isinstance(endpoint, dict) or not isinstance(endpoint.get("endpointId"), str):
            raise DirectiveError("INVALID_DIRECTIVE", "endpoint.endpointId is required")
        scope = endpoint.get("scope") if isinstance(endpoint.get("scope"), dict) else {}
        principal = self.principal(scope.get("token"))  # type: ignore[union-attr]
        camera = BACKENDS["local"].get_camera(
            self.session, principal.account_id, endpoint["endpointId"]
        )
        if camera is None:
            raise DirectiveError("NO_SUCH_ENDPOINT", "no such camera for this account")
        return principal, camera


def discover(req: Request) -> Message:
    scope = req.payload.get("scope")
    try:
        principal = req.principal(scope.get("token") if isinstance(scope, dict) else None)
    except DirectiveError:
        # Amazon's rule for Discovery: a bad or expired token gets no endpoints, not an error.
        return messages.response("Alexa.Discovery", "Discover.Response", req.directive,
                                 {"endpoints": []})  # fmt: skip
    cameras = BACKENDS["local"].list_cameras(req.session, principal.account_id)
    streams = streams_available(req.settings)
    endpoints = [messages.endpoint(c, req.settings, streams) for c in cameras][
        : messages.MAX_ENDPOINTS
    ]
    audit.record(req.session, "alexa.discover", actor="alexa", account_id=principal.account_id,
                 assistant="alexa", endpoints=len(endpoints))  # fmt: skip
    return messages.response("Alexa.Discovery", "Discover.Response", req.directive,
                             {"endpoints": endpoints})  # fmt: skip


def initialize_camera_streams(req: Request) -> Message:
    principal, camera = req.endpoint_owner()
    try:
        blockers = stream_blockers(req.session, camera, Audience.ALEXA, Protocol.RTSPS)
    except LookupError:
        raise DirectiveError("NO_SUCH_ENDPOINT", "no such camera for this account") from None
    if blockers:
        record(req, camera, "stream.denied", reason=",".join(b.value for b in blockers))
        info = BLOCKERS[blockers[0]]
        extra = {"currentDeviceMode": info.alexa_mode} if info.alexa_mode else {}
        raise DirectiveError(info.alexa_error, explain(blockers[0]), **extra)
    if not streams_available(req.settings):
        record(req, camera, "stream.denied", reason="no_rtsps_relay")
        raise DirectiveError("NOT_SUPPORTED_IN_CURRENT_MODE", "no RTSPS relay is configured",
                             currentDeviceMode="NOT_PROVISIONED")  # fmt: skip
    requested = req.payload.get("cameraStreams")
    if not isinstance(requested, list) or not all(isinstance(s, dict) for s in requested):
        raise DirectiveError("INVALID_DIRECTIVE", "payload.cameraStreams must be a list")
    chosen = next((s for s in requested if s.get("protocol") == "RTSP"
                   and s.get("videoCodec") == "H264"), None)  # fmt: skip
    if chosen is None:
        raise DirectiveError("INVALID_VALUE", "only RTSP with H264 can be served")
    uri = mint(req.settings, camera, Protocol.RTSPS, Audience.ALEXA, principal.grant_id)
    image = mint(req.settings, camera, Protocol.JPEG, Audience.ALEXA, principal.grant_id)
    expires = datetime.fromtimestamp(
        datetime.now(UTC).timestamp() + req.settings.stream_ticket_ttl, UTC
    )
    stream = {
        "uri": uri,
        "expirationTime": messages.timestamp(expires),
        "idleTimeoutSeconds": IDLE_TIMEOUT_SECONDS,
        "protocol": "RTSP",
        "resolution": messages.resolution(camera),
        "authorizationType": "NONE",
        "videoCodec": "H264",
        "audioCodec": messages.audio_codec(camera),
    }
    record(req, camera, "stream.requested", protocol="rtsps")
    return messages.response(
        "Alexa.CameraStreamController", "Response", req.directive,
        {"cameraStreams": [stream], "imageUri": image}, [messages.connectivity(camera)],
    )  # fmt: skip


def report_state(req: Request) -> Message:
    _principal, camera = req.endpoint_owner()
    return messages.response("Alexa", "StateReport", req.directive, {},
                             [messages.connectivity(camera)])  # fmt: skip


def accept(req: Request) -> Message:
    grant, grantee = req.payload.get("grant"), req.payload.get("grantee")
    if not isinstance(grant, dict) or not isinstance(grantee, dict) or not grant.get("code"):
        raise DirectiveError(
            "INVALID_DIRECTIVE", "payload.grant.code and payload.grantee are required"
        )
    try:
        principal = req.principal(grantee.get("token"))
    except DirectiveError as exc:  # Alexa.Authorization has its own error for every failure
        raise DirectiveError("ACCEPT_GRANT_FAILED", str(exc),
                             namespace="Alexa.Authorization") from None  # fmt: skip
    try:
        accept_grant(req.session, req.settings, principal.account_id, str(grant["code"]))
    except LwaError as exc:
        log.warning("AcceptGrant failed for owner %s: %s", principal.account_id, exc)
        raise DirectiveError("ACCEPT_GRANT_FAILED", "could not exchange the grant code",
                             namespace="Alexa.Authorization") from None  # fmt: skip
    audit.record(req.session, "alexa.events_granted", actor="alexa",
                 account_id=principal.account_id, assistant="alexa")  # fmt: skip
    return messages.response("Alexa.Authorization", "AcceptGrant.Response", req.directive, {})


def record(req: Request, camera: Camera, action: str, **detail: Any) -> None:
    audit.record(req.session, action, actor="alexa", account_id=camera.owner_id,
                 camera_id=camera.id, assistant="alexa", **detail)  # fmt: skip


HANDLERS: dict[tuple[str, str], Callable[[Request], Message]] = {
    ("Alexa.Discovery", "Discover"): discover,
    ("Alexa.CameraStreamController", "InitializeCameraStreams"): initialize_camera_streams,
    ("Alexa", "ReportState"): report_state,
    ("Alexa.Authorization", "AcceptGrant"): accept,
}


def handle(session: Session, settings: Settings, message: Any) -> Message:
    """Answer one directive: its response, or the ErrorResponse Amazon defines for the failure."""
    directive = message.get("directive") if isinstance(message, dict) else None
    if not isinstance(directive, dict) or not isinstance(directive.get("header"), dict):
        return messages.error({}, "INVALID_DIRECTIVE", "body must be {'directive': {...}}")
    head = directive["header"]
    handler = HANDLERS.get((head.get("namespace"), head.get("name")))  # type: ignore[arg-type]
    if head.get("payloadVersion") != messages.PAYLOAD_VERSION or handler is None:
        return messages.error(directive, "INVALID_DIRECTIVE",
                              "unsupported directive or payload version")  # fmt: skip
    try:
        return handler(Request(session, settings, directive))
    except DirectiveError as exc:
        namespace = exc.extra.pop("namespace", "Alexa")
        return messages.error(directive, exc.error_type, str(exc), namespace, **exc.extra)
