"""Before ffmpeg or GStreamer pulls a camera: the address policy, and RTSP redirects followed here.

ffmpeg (and GStreamer's rtspsrc) follow an RTSP 3xx's Location wherever it points, loopback and
metadata addresses included, and neither has a switch to stop it. So camvoice asks first: one
DESCRIBE of its own (with the source's credentials, Basic or Digest, when the camera asks for
them), within a short deadline. A redirect's Location is checked against the policy and followed
(a few hops at most); the URL handed on is the last one, its host replaced by the address that
was checked (plain RTSP: a later DNS answer cannot move it; RTSPS keeps its name, which its
certificate must match). A camera at an allowed address could still answer camvoice's DESCRIBE
without a redirect and the puller's with one: pullers are therefore given a guard on loopback
(media/rtsp_guard.py: `guarded_source` here, the RTSPS relay starts its own) that passes RTSP
through to the checked address only and drops any redirect.
"""

from __future__ import annotations

import base64
import hashlib
import re
import socket
import ssl
import time
from urllib.parse import unquote, urlsplit

from camvoice.addresses import CAMERA_SCHEMES, AddressPolicy, AddressRefused, Target
from media.rtsp_guard import guard_url

PREFLIGHT_TIMEOUT = 2.0  # seconds for the whole check: a request thread waits on it
MAX_REDIRECTS = 3
MAX_HEADER = 16 * 1024
REDIRECTS = frozenset({300, 301, 302, 303, 305, 307, 308})
STATUS_LINE = re.compile(rb"^RTSP/\d\.\d (\d{3})")
DIGEST_FIELD = re.compile(r'(\w+)=(?:"([^"]*)"|([^,\s]*))')


class SourceRefused(Exception):
    """The camera's source, or where it redirects, is not an address camvoice may pull from."""


def checked_source(policy: AddressPolicy, source: str, timeout: float = PREFLIGHT_TIMEOUT) -> str:
    """The URL a puller may be given for `source`: every hop checked, the last one pinned.
    Raises SourceRefused. A camera that does not answer in time is handed on as checked so far
    (pinned): the puller then fails on it as it would have."""
    if source == "demo":
        return source
    deadline = time.monotonic() + timeout
    url = source
    for _hop in range(MAX_REDIRECTS + 1):
        try:
            target = policy.check(url, CAMERA_SCHEMES)
        except AddressRefused as exc:
            raise SourceRefused(str(exc)) from None
        try:
            location = redirect_of(target, deadline)
        except (OSError, ValueError):
            location = None  # unreachable or not RTSP: the puller will find out the same way
        if location is None:
            return target.pinned if target.scheme == "rtsp" else target.url
        url = location
    raise SourceRefused("the camera redirects too many times")


def redirect_of(target: Target, deadline: float) -> str | None:
    """Where a DESCRIBE of the target is redirected, or None when it is not."""
    status, headers = describe(target, deadline, None)
    if status == 401 and urlsplit(target.url).username is not None:
        status, headers = describe(target, deadline, headers.get("www-authenticate", []))
    if status in REDIRECTS:
        locations = headers.get("location", [])
        if not locations:
            raise ValueError("a redirect without a Location")
        return locations[0]
    return None


def request_uri(target: Target) -> str:
    """The URL as the request line carries it: without credentials."""
    parts = urlsplit(target.url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def authorization(target: Target, challenges: list[str], uri: str) -> str:
    """An Authorization header answering the camera's challenge (Digest preferred)."""
    parts = urlsplit(target.url)
    user, password = unquote(parts.username or ""), unquote(parts.password or "")
    digest = next((c for c in challenges if c.lower().startswith("digest ")), None)
    if digest is None:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    fields = {m.group(1).lower(): m.group(2) or m.group(3) for m in DIGEST_FIELD.finditer(digest)}
    realm, nonce = fields.get("realm", ""), fields.get("nonce", "")

    def md5(text: str) -> str:
        return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()

    response = md5(f"{md5(f'{user}:{realm}:{password}')}:{nonce}:{md5(f'DESCRIBE:{uri}')}")
    return (f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{response}"')  # fmt: skip


def describe(
    target: Target, deadline: float, challenges: list[str] | None
) -> tuple[int, dict[str, list[str]]]:
    """One DESCRIBE on a connection of its own to the checked address: (status, headers)."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("no time left to ask the camera")
    uri = request_uri(target)
    lines = [f"DESCRIBE {uri} RTSP/1.0", "CSeq: 1", "Accept: application/sdp",
             "User-Agent: camvoice"]  # fmt: skip
    if challenges is not None:
        lines.append("Authorization: " + authorization(target, challenges, uri))
    with socket.create_connection((target.addresses[0], target.port), timeout=remaining) as raw:
        sock: socket.socket = raw
        if target.scheme == "rtsps":
            # Only asking where the stream is: the puller verifies the certificate itself.
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            sock = context.wrap_socket(raw, server_hostname=target.host)
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return parse_head(read_head(sock, deadline))


def read_head(sock: socket.socket, deadline: float) -> bytes:
    """The answer's status line and headers (the body is not needed)."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEADER or time.monotonic() > deadline:
            raise ValueError("no complete RTSP answer")
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n\r\n", 1)[0]


def parse_head(head: bytes) -> tuple[int, dict[str, list[str]]]:
    match = STATUS_LINE.match(head)
    if match is None:
        raise ValueError("not an RTSP answer")
    headers: dict[str, list[str]] = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers.setdefault(name.strip().lower(), []).append(value.strip())
    return int(match.group(1)), headers


def guarded_source(policy: AddressPolicy, source: str, timeout: float = PREFLIGHT_TIMEOUT) -> str:
    """`checked_source`, then a guard in front of it: the URL ffmpeg is given names the
    guard on loopback, so whatever the camera answers ffmpeg later, it cannot move it."""
    checked = checked_source(policy, source, timeout)
    if checked == "demo":
        return checked
    target = policy.check(checked, CAMERA_SCHEMES)  # an IP literal (or rtsps' name) by now
    return guard_url(target.url, target.addresses[0])
