"""A media node's internal endpoints: the WebRTC contract over signed HTTP (media/nodes.py).

Served by `camvoice media` only, never by a public web process: they answer offers with the
engine of this process (`services.webrtc`) for web processes that forward to it (RemoteWebRTC).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from camvoice.services import Services
from camvoice.webrtc import WebRTCError
from media.nodes import ERRORS, PREFIX, verify

bp = Blueprint("media_node", __name__, url_prefix=PREFIX)


def refused(error: str, reason: str, status: int) -> tuple[Response, int]:
    return jsonify(error=error, reason=reason), status


@bp.before_request
def check_signature() -> tuple[Response, int] | None:
    secret: bytes = current_app.extensions["camvoice.node_secret"]
    if not verify(secret, dict(request.headers), request.path, request.get_data()):
        return refused("unauthorized", "missing, wrong or stale signature", 401)
    return None


def body(*names: str) -> dict[str, Any] | None:
    """The JSON object with each named field a string (session_id may be null)."""
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        return None
    for name in names:
        value = data.get(name)
        if not (isinstance(value, str) or (name == "session_id" and value is None)):
            return None
    return data


def contract_error(exc: WebRTCError) -> tuple[Response, int]:
    for name, (kind, status) in ERRORS.items():
        if type(exc) is kind:
            return refused(name, exc.reason, status)
    return refused("media_unavailable", exc.reason, 503)


@bp.post("/answer")
def answer() -> Response | tuple[Response, int]:
    data = body("token", "camera_id", "offer_sdp", "session_id")
    if data is None:
        return refused("bad_request", "token, camera_id, offer_sdp and session_id", 400)
    engine = Services.of(current_app).webrtc
    try:
        made = engine.answer(
            data["token"], data["camera_id"], data["offer_sdp"], data["session_id"]
        )
    except WebRTCError as exc:
        return contract_error(exc)
    return jsonify(session_id=made.session_id, sdp=made.sdp)


@bp.post("/connected")
def connected() -> Response | tuple[Response, int]:
    data = body("session_id", "camera_id")
    if data is None or data["session_id"] is None:
        return refused("bad_request", "session_id and camera_id", 400)
    engine = Services.of(current_app).webrtc
    return jsonify(ok=engine.connected(data["session_id"], data["camera_id"]))


@bp.post("/end")
def end() -> Response | tuple[Response, int]:
    data = body("session_id", "camera_id", "reason")
    if data is None or data["session_id"] is None:
        return refused("bad_request", "session_id, camera_id and reason", 400)
    engine = Services.of(current_app).webrtc
    return jsonify(ok=engine.end(data["session_id"], data["camera_id"], data["reason"]))
