"""ICE servers for a WebRTC session: the static list, plus TURN credentials minted per session.

Echo Show, Nest displays and browsers on networks that block UDP reach camvoice's media only
through a TURN server over TCP or TLS on 443 (aiortc has no ICE-TCP of its own). Handing every
session the TURN server's one long-term password would let anyone who watched a single stream
use the relay for ever, so camvoice shares a secret with coturn instead (`use-auth-secret`,
the "TURN REST API" scheme): a username `<expiry>:<label>` and, as its password,
base64(HMAC-SHA1(secret, username)). coturn checks both, and refuses the username once its
expiry passed, on allocation and on every refresh, without any call back to camvoice.

The engine's own peer, the cameraStreamIceServers handed to Google and the console page all
ask `ice_servers(settings)`, so they name the same servers. Credentials are secrets: they go in
answers to the caller, never into a log line.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from camvoice.settings import Settings

SCHEMES = ("stun:", "stuns:", "turn:", "turns:")


@dataclass(frozen=True)
class IceServer:
    """One RTCIceServer: the URLs, and the credentials TURN URLs need."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The W3C RTCIceServer dictionary (what a browser's RTCPeerConnection and Google's
        cameraStreamIceServers take); credentials only when there are some."""
        shown: dict[str, Any] = {"urls": list(self.urls)}
        if self.username is not None:
            shown["username"] = self.username
        if self.credential is not None:
            shown["credential"] = self.credential
        return shown

    def __repr__(self) -> str:  # a repr in a log or a traceback must not carry the credential
        return f"IceServer(urls={list(self.urls)!r})"


def parse_ice_servers(text: str) -> list[IceServer]:
    """CAMVOICE_ICE_SERVERS: a JSON list of {"urls", "username", "credential"}; "" is none.

    `urls` is one URL or a list; TURN URLs need a username and a credential (a static one: use
    CAMVOICE_TURN_SECRET for minted ones). A ValueError names what is wrong, never a value.
    """
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError("not JSON: a list of {urls, username, credential}") from None
    if not isinstance(data, list):
        raise ValueError("must be a JSON list of {urls, username, credential}")
    servers = []
    for number, entry in enumerate(data, 1):
        if not isinstance(entry, dict) or "urls" not in entry:
            raise ValueError(f"entry {number}: an object with 'urls'")
        urls = entry["urls"] if isinstance(entry["urls"], list) else [entry["urls"]]
        username, credential = entry.get("username"), entry.get("credential")
        if any(v is not None and not isinstance(v, str) for v in (username, credential)):
            raise ValueError(f"entry {number}: username and credential are strings")
        for url in urls:
            if not isinstance(url, str) or not url.startswith(SCHEMES):
                raise ValueError(f"entry {number}: urls must be stun:, stuns:, turn: or turns:")
            if url.startswith("turn") and not (isinstance(username, str) and credential):
                raise ValueError(f"entry {number}: a TURN URL needs username and credential")
        if not urls:
            raise ValueError(f"entry {number}: urls is empty")
        servers.append(IceServer(tuple(urls), username, credential))
    return servers


def parse_turn_urls(text: str) -> tuple[str, ...]:
    """CAMVOICE_TURN_URLS: comma-separated turn:/turns: URLs of the coturn sharing the secret."""
    urls = tuple(url.strip() for url in text.split(",") if url.strip())
    for url in urls:
        if not url.startswith(("turn:", "turns:")):
            raise ValueError("each URL must start with turn: or turns:")
    return urls


def turn_credential(secret: str, expires: int, label: str) -> tuple[str, str]:
    """The TURN REST API pair coturn's `use-auth-secret` accepts until `expires` (Unix time)."""
    if ":" in label:
        raise ValueError("the label must not contain ':'")
    username = f"{expires}:{label}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def ice_servers(
    settings: Settings, now: float | None = None, label: str | None = None
) -> list[IceServer]:
    """The ICE servers one session uses: CAMVOICE_ICE_SERVERS, then the TURN server of
    CAMVOICE_TURN_URLS with a fresh credential, when CAMVOICE_TURN_SECRET is set.

    Call it once per session (each peer of it): every call mints its own username, valid for
    CAMVOICE_TURN_TTL seconds. coturn re-checks the expiry when an allocation is refreshed, so
    the TTL bounds how long a relayed session can run; it defaults to CAMVOICE_STREAM_MAX_VIEW,
    the longest a view may last anyway. `label` (no ':') names the holder in coturn's log;
    a random one by default, so a credential names no account or camera.

    aiortc uses the first TURN URL it is given and ignores the rest: list the URL camvoice's
    own peer should use first (turn:...?transport=udp beside coturn); browsers use all.
    """
    servers = parse_ice_servers(settings.ice_servers.get_secret_value())
    urls = parse_turn_urls(settings.turn_urls)
    if urls and settings.turn_secret is not None:
        ttl = settings.turn_ttl or settings.stream_max_view
        expires = int(now if now is not None else time.time()) + ttl
        username, credential = turn_credential(
            settings.turn_secret.get_secret_value(), expires, label or secrets.token_hex(6)
        )
        servers.append(IceServer(urls, username, credential))
    return servers
