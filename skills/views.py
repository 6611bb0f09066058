"""POST /alexa/smart-home: directives forwarded by our Lambda, signed with a shared secret.

Amazon sends smart-home directives only to a Lambda function; deploy/lambda forwards each one
here with an HMAC-SHA256 over "<timestamp>.<raw body>". The signature is checked before anything
else is read, and a stale timestamp (over 5 minutes) is refused like a wrong one. Each signed
forward is accepted once, by whichever instance gets it first: the same timestamp and signature
again (a captured forward replayed within the window) is refused with 409, which the Lambda,
like any refusal, turns into BRIDGE_UNREACHABLE (never a credential error: Alexa would drop the
link). The Lambda never resends a signed body: each invocation signs afresh.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from camvoice.db import unavailable
from camvoice.services import Services
from skills import errors, messages
from skills.smarthome import HANDLERS, handle

log = logging.getLogger(__name__)
bp = Blueprint("alexa_smart_home", __name__)
MAX_SKEW = 300


def signature_ok(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    try:
        age = abs(time.time() - int(timestamp))
    except (ValueError, OverflowError):  # not a number, or too large for a float
        return False
    expected = hmac.new(
        secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    return age <= MAX_SKEW and hmac.compare_digest(expected.encode(), signature.encode())


@bp.post("/alexa/smart-home")
def smart_home() -> Response:
    services = Services.of(current_app)
    secret = services.settings.alexa_forwarder_secret
    body = request.get_data()
    sent = request.headers.get("X-Camvoice-Signature", "")
    timestamp = request.headers.get("X-Camvoice-Timestamp", "")
    if secret is None or not signature_ok(secret.get_secret_value(), timestamp, body, sent):
        response = jsonify(
            error="unauthorized", message="missing, wrong or stale forwarder signature"
        )
        response.status_code = 401
        return response
    # The signature covers the timestamp and the body: it names this one forward. Kept for as
    # long as the timestamp could still pass (up to MAX_SKEW ahead, MAX_SKEW behind).
    if not services.once.claim(f"alexa-forward:{sent}", 2 * MAX_SKEW + 1):
        response = jsonify(error="replayed", message="this signed forward was already delivered")
        response.status_code = 409
        return response
    # The app's JSON provider refuses (None here) bodies too deep or with unstorable text.
    message = request.get_json(force=True, silent=True)
    started = time.perf_counter()
    try:
        answer = handle(services, message)
    except Exception as exc:
        if unavailable(exc):
            # 503 with Retry-After from the app's handler; the forwarder answers Alexa with
            # BRIDGE_UNREACHABLE for any status but 200 (deploy/lambda).
            raise
        log.exception("smart-home directive failed")
        directive = message.get("directive", {}) if isinstance(message, dict) else {}
        failure = errors.InternalError("internal error; it has been logged")
        answer = messages.error(directive if isinstance(directive, dict) else {}, failure)
    services.metrics.answered("alexa", *name_and_outcome(message, answer),
                              time.perf_counter() - started, endpoint_id(message))  # fmt: skip
    return jsonify(answer)


def name_and_outcome(message: Any, answer: dict[str, Any]) -> tuple[str, str]:
    """The directive as the dispatch table names it ("unknown" for any other: label values
    must be a closed set), and "ok" or the ErrorResponse's type."""
    directive = message.get("directive") if isinstance(message, dict) else None
    head = directive.get("header") if isinstance(directive, dict) else None
    key = (head.get("namespace"), head.get("name")) if isinstance(head, dict) else None
    # A hostile header may hold lists or objects: only a pair of strings can name a handler.
    known = key is not None and all(isinstance(part, str) for part in key) and key in HANDLERS
    name = ".".join(key) if known else "unknown"  # type: ignore[arg-type]
    event = answer.get("event", {})
    if event.get("header", {}).get("name") != "ErrorResponse":
        return name, "ok"
    return name, str(event.get("payload", {}).get("type", "error"))


def endpoint_id(message: Any) -> object:
    """The camera a directive names (logged only if it looks like one of our ids)."""
    directive = message.get("directive") if isinstance(message, dict) else None
    endpoint = directive.get("endpoint") if isinstance(directive, dict) else None
    return endpoint.get("endpointId") if isinstance(endpoint, dict) else None
