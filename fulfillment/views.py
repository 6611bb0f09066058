"""POST /google/fulfillment: Google's smart-home requests, authorised by our bearer tokens."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from camvoice.services import Services
from fulfillment.intents import INTENTS, BadRequest, Context
from oauth.tokens import Principal, authenticate_bearer

bp = Blueprint("fulfillment", __name__)


def bad_request(message: str) -> Response:
    response = jsonify(error="invalid_request", message=message)
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


def merge(into: dict[str, Any], part: dict[str, Any]) -> None:
    """Several inputs in one request: one payload answering all of them."""
    for key, value in part.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            into[key].update(value)
        elif isinstance(value, list) and isinstance(into.get(key), list):
            into[key].extend(value)
        else:
            into[key] = value


@bp.post("/google/fulfillment")
def fulfillment() -> Response:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return bad_request("body must be a JSON object")
    request_id, inputs = body.get("requestId"), body.get("inputs")
    if not isinstance(request_id, str) or not isinstance(inputs, list) or not inputs:
        return bad_request("requestId (string) and inputs (non-empty list) are required")
    if not all(isinstance(i, dict) and i.get("intent") in INTENTS for i in inputs):
        return bad_request(f"every input needs an intent among {', '.join(INTENTS)}")
    services = Services.of(current_app)
    with services.db.session() as session:
        principal = authenticate_bearer(session, bearer_token(), "google")
    if not isinstance(principal, Principal):
        return unauthorized(principal.value)
    ctx = Context(services, principal)
    payload: dict[str, Any] = {}
    try:
        for item in inputs:
            merge(payload, INTENTS[item["intent"]](ctx, item.get("payload")))
    except BadRequest as exc:  # raised before that intent's own work is committed
        return bad_request(str(exc))
    return jsonify(requestId=request_id, payload=payload)
