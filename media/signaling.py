"""POST /webrtc/signal: the signaling URL Google's WebRTC player (and the console) posts to.

Google hands a Nest display `cameraStreamSignalingUrl` and `cameraStreamAuthToken` from EXECUTE;
its player, a page served from https://www.gstatic.com, then posts JSON actions here with that
token as a bearer: `offer` (the display's SDP, answered with a complete non-trickle SDP answer)
and `end`. The token is a stream ticket of protocol `webrtc`; the engine (`services.webrtc`)
admits it again on every offer. Google's format carries no session id, so the ticket id is the
session id: `end` finds the session from the same token it started with.

Errors are JSON: 401 for a missing or invalid credential, 403 for a valid one that may not see
this camera now, 400 for a malformed body or an offer the engine cannot serve, 413 for a body
over the limit, 503 (with Retry-After when worth retrying) when no media can be served now.
Neither the token nor the SDP is ever logged.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from camvoice.services import Services
from camvoice.tickets import Protocol, Ticket, TicketError
from camvoice.webrtc import MediaBusy, MediaUnavailable, OfferRefused, TicketRefused

log = logging.getLogger(__name__)

bp = Blueprint("webrtc_signal", __name__)

PATH = "/webrtc/signal"
# The page Google's WebRTC player runs in. The console posts from our own origin, so no other
# origin needs CORS: a bearer endpoint has no reason to be readable from arbitrary pages.
GOOGLE_PLAYER_ORIGIN = "https://www.gstatic.com"
PREFLIGHT_MAX_AGE = 3600
MAX_SDP = 64 * 1024  # bytes of SDP; a real offer is a few KiB
# The JSON around it: CRLFs escaped as \r\n double the line ends, plus the other fields.
MAX_BODY = 2 * MAX_SDP + 4096
BUSY_RETRY_AFTER = 5
# Reasons a ticket is refused that say the credential is fine but this camera is not to be
# shown through it now (403); every other reason is a bad or dead credential (401).
FORBIDDEN_REASONS = ("wrong_camera", "no_such_camera", "blocked")


class SignalError(Exception):
    """A request answered with an error: HTTP status, error code, message safe to show."""

    def __init__(self, status: int, error: str, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.error, self.message, self.retry_after = (
            status,
            error,
            message,
            retry_after,
        )


@bp.after_request
def cors(response: Response) -> Response:
    """Google's player reads our answers (errors too) cross-origin; nobody else is let in."""
    if request.path == PATH:
        response.headers.add("Vary", "Origin")
        response.headers["Cache-Control"] = "no-store"
        if request.headers.get("Origin") == GOOGLE_PLAYER_ORIGIN:
            response.headers["Access-Control-Allow-Origin"] = GOOGLE_PLAYER_ORIGIN
            # Google's sample signaling server allows credentials; harmless here, since this
            # endpoint reads only the bearer token, never a cookie.
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers["Access-Control-Expose-Headers"] = "Retry-After"
    return response


@bp.route(PATH, methods=["OPTIONS"], provide_automatic_options=False)
def preflight() -> Response:
    """The CORS preflight Google's player sends before posting with Authorization."""
    response = current_app.response_class(status=204)
    if request.headers.get("Origin") == GOOGLE_PLAYER_ORIGIN:
        response.headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
        response.headers["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE)
    return response


@bp.post(PATH)
def signal() -> Response:
    try:
        action, device_id, body = parse()
        token = bearer()
        if action == "offer":
            return offer(token, device_id, body.get("sdp"))
        return end(token, device_id)
    except SignalError as refused:
        response = jsonify(error=refused.error, message=refused.message)
        response.status_code = refused.status
        if refused.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
        if refused.retry_after is not None:
            response.headers["Retry-After"] = str(refused.retry_after)
        return response


def parse() -> tuple[str, str, dict[str, Any]]:
    """The action, the device id and the body, or a 400/413."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise SignalError(413, "payload_too_large", f"the body is limited to {MAX_BODY} bytes")
    raw = request.stream.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise SignalError(413, "payload_too_large", f"the body is limited to {MAX_BODY} bytes")
    try:
        body = current_app.json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise SignalError(400, "bad_request", "the body must be a JSON object")
    action, device_id = body.get("action"), body.get("deviceId")
    if action not in ("offer", "end"):
        # "answer" belongs to camera-made offers (cameraStreamOffer), which camvoice never sends.
        raise SignalError(400, "bad_request", 'action must be "offer" or "end"')
    if not isinstance(device_id, str) or not device_id:
        raise SignalError(400, "bad_request", "deviceId must be the camera's id")
    return action, device_id, body


def bearer() -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise SignalError(401, "invalid_token", "an Authorization: Bearer token is required")
    return token.strip()


def ticket_of(token: str, device_id: str) -> Ticket:
    """The signed ticket (signature, camera, protocol); expiry and admission are not checked."""
    try:
        return Services.of(current_app).settings.signer().verify(token, device_id, Protocol.WEBRTC)
    except TicketError as refused:
        raise ticket_refused(refused.reason) from None


def ticket_refused(reason: str) -> SignalError:
    if reason.startswith(FORBIDDEN_REASONS):
        return SignalError(403, "forbidden", f"stream ticket refused: {reason}")
    return SignalError(401, "invalid_token", f"stream ticket refused: {reason}")


def offer(token: str, device_id: str, sdp: object) -> Response:
    if not isinstance(sdp, str) or not sdp.strip():
        raise SignalError(400, "bad_request", "an offer needs its sdp")
    if len(sdp.encode()) > MAX_SDP:
        raise SignalError(413, "payload_too_large", f"the SDP is limited to {MAX_SDP} bytes")
    ticket = ticket_of(token, device_id)
    try:
        # A second offer on one ticket (the player starting over) replaces its first session.
        answer = Services.of(current_app).webrtc.answer(token, device_id, sdp, ticket.id)
    except TicketRefused as refused:
        raise ticket_refused(refused.reason) from None
    except OfferRefused as refused:
        raise SignalError(400, "offer_refused", refused.reason) from None
    except MediaBusy as busy:
        raise SignalError(503, "busy", busy.reason, retry_after=BUSY_RETRY_AFTER) from None
    except MediaUnavailable as unavailable:
        log.warning("webrtc offer for %s not served: %s", device_id, unavailable.reason)
        raise SignalError(503, "unavailable", unavailable.reason) from None
    return jsonify(action="answer", sdp=answer.sdp)


def end(token: str, device_id: str) -> Response:
    """Tear the ticket's session down. Its signature and camera are checked, not its expiry:
    a session outlives its ticket, and ending one is never harmful to the one who started it."""
    ticket = ticket_of(token, device_id)
    Services.of(current_app).webrtc.end(ticket.id, device_id, "google_end")
    return jsonify({})
