"""Media nodes: which process holds a camera's WebRTC sessions, and how web processes talk to it.

A WebRTC session lives in the process that answered its offer (aiortc's peer, the camera's
upstream pull). Web processes come and go behind a load balancer, so they do not answer offers
themselves when CAMVOICE_MEDIA_URLS lists media nodes (`camvoice media`): they forward each call
to one node, picked by rendezvous hashing of the camera id. Every web process computes the same
pick from the same list, so all viewers of one camera share one node and one upstream pull, and
removing a node moves only the cameras it held.

The calls travel as JSON over internal HTTP, signed with a secret every instance derives from
CAMVOICE_SECRET_KEY (which scale-out already requires to be shared): HMAC-SHA256 over a
timestamp, the path and the body. A node refuses unsigned, altered or stale calls.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from camvoice.webrtc import (
    MediaBusy,
    MediaUnavailable,
    OfferRefused,
    TicketRefused,
    WebRTCError,
)

PREFIX = "/internal/webrtc"
TIME_HEADER = "X-Camvoice-Time"
SIGNATURE_HEADER = "X-Camvoice-Signature"
MAX_SKEW = 30  # seconds a signed call stays acceptable (clock skew plus transit)

# Each error of the WebRTC contract, its name on the wire and the node's HTTP status.
ERRORS: dict[str, tuple[type[WebRTCError], int]] = {
    "ticket_refused": (TicketRefused, 403),
    "offer_refused": (OfferRefused, 400),
    "media_busy": (MediaBusy, 503),
    "media_unavailable": (MediaUnavailable, 503),
}


def node_secret(key: str) -> bytes:
    """The signing secret, derived from the secret key so nobody configures another one."""
    return hmac.new(key.encode(), b"camvoice media nodes", hashlib.sha256).digest()


def sign(secret: bytes, timestamp: int, path: str, body: bytes) -> str:
    message = f"{timestamp}\n{path}\n".encode() + body
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def signed_headers(secret: bytes, path: str, body: bytes, now: float | None = None) -> dict:
    timestamp = int(now if now is not None else time.time())
    return {
        TIME_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret, timestamp, path, body),
        "Content-Type": "application/json",
    }


def verify(
    secret: bytes, headers: dict[str, str], path: str, body: bytes, now: float | None = None
) -> bool:
    """Whether a call carries a valid signature made within MAX_SKEW seconds."""
    try:
        timestamp = int(headers.get(TIME_HEADER, ""))
    except ValueError:
        return False
    if abs((now if now is not None else time.time()) - timestamp) > MAX_SKEW:
        return False
    expected = sign(secret, timestamp, path, body)
    return hmac.compare_digest(expected, headers.get(SIGNATURE_HEADER, ""))


def ranked(nodes: tuple[str, ...], camera_id: str) -> list[str]:
    """The nodes in the order a camera's calls try them (rendezvous hashing, highest first)."""

    def weight(node: str) -> bytes:
        return hashlib.sha256(f"{node}\0{camera_id}".encode()).digest()

    return sorted(nodes, key=weight, reverse=True)
