"""POST /google/fulfillment: Google's smart-home requests, authorised by our bearer tokens."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from camvoice.models import Camera
from camvoice.services import Services
from fulfillment.intents import INTENTS, BadRequest, Context, named_camera
from oauth.tokens import Principal, authenticate_bearer, authenticate_for_camera, touch_grant

bp = Blueprint("fulfillment", __name__)


def bad_request(message: str, request_id: object = None) -> Response:
    """HTTP 400 with Google's whole-request error: payload.errorCode protocolError."""
    response = jsonify(
        requestId=request_id if isinstance(request_id, str) else "",
        payload={"errorCode": "protocolError", "debugString": message},
    )
    response.status_code = 400
    return response


def unauthorized(reason: str) -> Response:
    """401 makes Google refresh the access token (a 200 with an error would not)."""
    response = jsonify(error="invalid_token", message=f"access token {reason}")
    response.status_code = 401
    response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    return response


def bearer_token() -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


@bp.post("/google/fulfillment")
def fulfillment() -> Response:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return bad_request("body must be a JSON object")
    request_id, inputs = body.get("requestId"), body.get("inputs")
    if not isinstance(request_id, str) or not isinstance(inputs, list) or len(inputs) != 1:
        # Google sends one input per request; several would need several payloads, which a
        # response cannot carry (and merged SYNC inputs would list each device twice).
        return bad_request("requestId (string) and inputs (a list of one input) are required",
                           request_id)  # fmt: skip
    item = inputs[0]
    intent = item.get("intent") if isinstance(item, dict) else None
    if not isinstance(intent, str) or intent not in INTENTS:
        return bad_request(f"the input needs an intent among {', '.join(INTENTS)}", request_id)
    services = Services.of(current_app)
    started = time.perf_counter()
    response, outcome, camera_id = answer(services, intent, item, request_id)
    services.metrics.answered("google", intent, outcome, time.perf_counter() - started, camera_id)
    return response


def answer(
    services: Services, intent: str, item: dict[str, Any], request_id: str
) -> tuple[Response, str, object]:
    """The intent's response, its outcome ("ok" or the first errorCode) and the camera it was
    about, when it named one."""
    # Read in one statement through the driver (no write lock on SQLite), with the camera an
    # EXECUTE names (the token is judged first all the same); the link's last use is written
    # apart, at most once a minute.
    camera_id = named_camera(intent, item.get("payload"))
    cameras: dict[str, Camera | None] = {}
    with services.db.driver() as reading:
        if camera_id is None:
            principal = authenticate_bearer(reading, bearer_token(), "google", touch=False)
        else:
            principal, cameras[camera_id] = authenticate_for_camera(
                reading, bearer_token(), "google", camera_id, touch=False
            )
    if not isinstance(principal, Principal):
        return unauthorized(principal.value), "unauthorized", None
    if principal.stale:
        with services.db.session() as session:
            touch_grant(session, principal.grant_id)
    try:
        payload = INTENTS[intent](Context(services, principal, cameras), item.get("payload"))
    except BadRequest as exc:  # raised before the intent's own work is committed
        return bad_request(str(exc), request_id), "protocolError", None
    commands = payload.get("commands") or [{}]
    codes = [payload.get("errorCode")] + [c.get("errorCode") for c in commands]
    outcome = next((str(code) for code in codes if code), "ok")
    ids = commands[0].get("ids") or [None]
    return jsonify(requestId=request_id, payload=payload), outcome, ids[0]
