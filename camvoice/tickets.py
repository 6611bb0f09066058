"""Stream tickets: the signed, expiring credential inside every stream URL camvoice hands out.

A ticket binds one camera, one protocol (hls, rtsps, jpeg, webrtc) and one audience (alexa,
google, web), names the key that signed it (so keys rotate without breaking tickets in flight),
and expires a few minutes after minting: long enough for a display to start playing. A viewing
session that has started is tracked separately (StreamView in streams.py), so a viewer is not cut
off mid-view.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum

from camvoice import untrusted


class Protocol(StrEnum):
    HLS = "hls"
    RTSPS = "rtsps"
    JPEG = "jpeg"
    WEBRTC = "webrtc"  # the bearer of a WebRTC offer (Google's cameraStreamAuthToken, console)


class Audience(StrEnum):
    ALEXA = "alexa"
    GOOGLE = "google"
    WEB = "web"


class TicketError(Exception):
    """Why a ticket was refused: tampered, unknown_key, expired, wrong_camera, wrong_protocol."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Ticket:
    id: str
    camera_id: str
    account_id: str
    protocol: Protocol
    audience: Audience
    expires_at: float
    grant_id: str | None = None
    session_ref: str | None = None  # the console sign-in session a web ticket belongs to

    @property
    def expired(self) -> bool:
        return time.time() >= self.expires_at


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TicketSigner:
    """Signs with the first key, verifies with any known key."""

    def __init__(self, keys: dict[str, bytes]) -> None:
        if not keys:
            raise ValueError("at least one stream key is needed")
        self.keys = keys
        self.current = next(iter(keys))

    def sign(self, ticket: Ticket) -> str:
        body = {
            "k": self.current,
            "i": ticket.id,
            "c": ticket.camera_id,
            "o": ticket.account_id,
            "p": ticket.protocol.value,
            "a": ticket.audience.value,
            "e": int(ticket.expires_at),
            "g": ticket.grant_id,
            "s": ticket.session_ref,
        }
        payload = _b64(json.dumps(body, separators=(",", ":")).encode())
        return f"{payload}.{self._mac(self.current, payload)}"

    def verify(self, token: str, camera_id: str, protocol: Protocol) -> Ticket:
        """The ticket, if signed by a known key and bound to this camera and protocol.

        Expiry is reported on the returned ticket, not raised: a started session may outlive it.
        """
        try:
            payload, mac = token.split(".")
            body = untrusted.loads(_unb64(payload))  # before the MAC: bounded nesting
            kid = body["k"]
        except (ValueError, KeyError, TypeError):
            raise TicketError("tampered") from None
        if not isinstance(kid, str) or kid not in self.keys:
            raise TicketError("unknown_key")
        # Bytes: compare_digest raises on non-ASCII text, and a URL may carry any.
        if not hmac.compare_digest(mac.encode(), self._mac(kid, payload).encode()):
            raise TicketError("tampered")
        ticket = Ticket(
            id=body["i"],
            camera_id=body["c"],
            account_id=body["o"],
            protocol=Protocol(body["p"]),
            audience=Audience(body["a"]),
            expires_at=float(body["e"]),
            grant_id=body.get("g"),
            session_ref=body.get("s"),
        )
        if ticket.camera_id != camera_id:
            raise TicketError("wrong_camera")
        if ticket.protocol is not protocol:
            raise TicketError("wrong_protocol")
        return ticket

    def _mac(self, kid: str, payload: str) -> str:
        return _b64(hmac.new(self.keys[kid], payload.encode(), hashlib.sha256).digest())


def new_ticket(
    camera_id: str,
    account_id: str,
    protocol: Protocol,
    audience: Audience,
    ttl: int,
    grant_id: str | None = None,
    session_ref: str | None = None,
) -> Ticket:
    return Ticket(
        id=secrets.token_urlsafe(12),
        camera_id=camera_id,
        account_id=account_id,
        protocol=protocol,
        audience=audience,
        expires_at=float(int(time.time() + ttl)),
        grant_id=grant_id,
        session_ref=session_ref,
    )


def parse_keys(spec: str, fallback_secret: str) -> dict[str, bytes]:
    """`kid:secret,kid:secret` (first one signs), or one key derived from the secret key."""
    if not spec.strip():
        derived = hmac.new(fallback_secret.encode(), b"camvoice stream tickets", hashlib.sha256)
        return {"k0": derived.digest()}
    keys: dict[str, bytes] = {}
    for item in spec.split(","):
        kid, sep, secret = item.strip().partition(":")
        if not sep or not kid or len(secret) < 16:
            raise ValueError("each key must be kid:secret with a secret of 16+ characters")
        keys[kid] = secret.encode()
    return keys
