"""AWS Lambda forwarder for camvoice's Alexa Smart Home skill (standard library only).

Amazon delivers smart-home directives only to a Lambda function. This one signs each directive
(HMAC-SHA256 over "<unix time>.<body>" with CAMVOICE_FORWARDER_SECRET) and posts it to
CAMVOICE_ENDPOINT (https://your-camvoice/alexa/smart-home), returning camvoice's answer. If
camvoice is slow or down it gives up in time for Alexa's deadline and returns a well-formed
Alexa.ErrorResponse (BRIDGE_UNREACHABLE) for the directive.
"""

import hashlib
import hmac
import json
import os
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

ALEXA_BUDGET = 6.0  # seconds; Alexa gives up at 8 s and wants an answer well before
MARGIN = 0.5


def lambda_handler(event: Any, context: Any) -> dict[str, Any]:
    directive = event.get("directive", {}) if isinstance(event, dict) else {}
    body = json.dumps(event, separators=(",", ":")).encode()
    timestamp = str(int(time.time()))
    secret = os.environ["CAMVOICE_FORWARDER_SECRET"].encode()
    signature = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(  # noqa: S310 - the operator's configured https URL
        os.environ["CAMVOICE_ENDPOINT"],
        data=body,
        headers={
            "Content-Type": "application/json",
            "X-Camvoice-Timestamp": timestamp,
            "X-Camvoice-Signature": signature,
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=budget(context)) as response:  # noqa: S310
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except (urllib.error.URLError, TimeoutError, ValueError, OSError) as exc:
        print(f"camvoice unreachable: {type(exc).__name__}")  # CloudWatch; no secrets
        return unreachable(directive)


def budget(context: Any) -> float:
    """Seconds we may wait for camvoice: Alexa's budget, capped by what Lambda has left."""
    remaining = ALEXA_BUDGET
    if context is not None and hasattr(context, "get_remaining_time_in_millis"):
        remaining = min(remaining, context.get_remaining_time_in_millis() / 1000.0)
    return max(0.5, remaining - MARGIN)


def unreachable(directive: Any) -> dict[str, Any]:
    header = directive.get("header", {}) if isinstance(directive, dict) else {}
    event: dict[str, Any] = {
        "header": {
            "namespace": "Alexa",
            "name": "ErrorResponse",
            "payloadVersion": "3",
            "messageId": str(uuid.uuid4()),
        },
        "payload": {"type": "BRIDGE_UNREACHABLE", "message": "camvoice did not answer in time"},
    }
    if header.get("correlationToken"):
        event["header"]["correlationToken"] = header["correlationToken"]
    endpoint = directive.get("endpoint") if isinstance(directive, dict) else None
    if isinstance(endpoint, dict):
        event["endpoint"] = {k: endpoint[k] for k in ("scope", "endpointId") if k in endpoint}
    return {"event": event}
