"""A camera cloud's HLS passed through camvoice, so a player only ever sees camvoice's URLs.

The upstream playlist is fetched on each playlist request and every URI in it is rewritten to
`p/<sealed>.<ext>` under the ticketed path, `sealed` being the upstream URL encrypted and bound to
the camera. A segment fetch checks the ticket like any other, unseals, and streams the bytes
through. So unlinking or turning Image Encryption on stops a cloud stream just as it stops a
relayed one, and the platform's addresses, which carry its credentials, never reach a player.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import PurePosixPath
from urllib.parse import urljoin, urlsplit

import requests
from cryptography.fernet import InvalidToken

from camvoice.settings import Settings

SEALED_TTL = 900  # seconds a rewritten URI stays usable; playlists are re-fetched every few
SEAL_PURPOSE = b"camvoice hls segments"
URI_ATTRIBUTE = re.compile(r'URI="([^"]+)"')
CHUNK = 64 * 1024
# Players pick a demuxer by extension (ffmpeg refuses others), so the upstream one is kept, and
# the type served follows it: an upstream answer is never served as whatever it claims to be.
TYPES = {
    ".ts": "video/mp2t", ".m4s": "video/iso.segment", ".mp4": "video/mp4", ".m4a": "audio/mp4",
    ".m4v": "video/mp4", ".aac": "audio/aac", ".key": "application/octet-stream",
    ".vtt": "text/vtt",
}  # fmt: skip


class UpstreamError(Exception):
    """The platform's playlist or segment could not be fetched; the player gets a 502."""


def seal(settings: Settings, camera_id: str, url: str) -> str:
    payload = json.dumps({"c": camera_id, "u": url}, separators=(",", ":")).encode()
    return settings.sealer(SEAL_PURPOSE).encrypt(payload).decode()


def unseal(settings: Settings, camera_id: str, sealed: str) -> str | None:
    """The upstream URL, or None when tampered with, too old, or sealed for another camera."""
    sealed = sealed.rsplit(".", 1)[0]  # the extension kept for players (base64url has no dot)
    try:
        payload = json.loads(settings.sealer(SEAL_PURPOSE).decrypt(sealed.encode(), SEALED_TTL))
    except (InvalidToken, ValueError):
        return None
    if not isinstance(payload, dict) or payload.get("c") != camera_id:
        return None
    url = payload.get("u")
    return url if isinstance(url, str) else None


def same_site(url: str, origin: str) -> bool:
    """Whether a URI stays on the platform: the live address's host or, for a named host, a
    sibling under its parent domain (CDN segment hosts). Anything else, an internal address
    above all, is refused: camvoice must not fetch whatever a tampered playlist points at."""
    a, b = urlsplit(url), urlsplit(origin)
    if a.scheme != b.scheme or not a.hostname or not b.hostname:
        return False
    if a.hostname == b.hostname:
        return True
    named = not b.hostname.replace(".", "").isdigit() and ":" not in b.hostname
    parent = b.hostname.split(".", 1)[-1]
    return named and "." in parent and a.hostname.endswith("." + parent)


def get(url: str, timeout: float, stream: bool = False) -> requests.Response:
    try:
        response = requests.get(url, timeout=timeout, stream=stream, allow_redirects=False)
    except requests.RequestException as exc:
        raise UpstreamError(type(exc).__name__) from None
    if response.status_code != 200:
        response.close()
        raise UpstreamError(f"upstream answered {response.status_code}")
    return response


def media_playlist(url: str, timeout: float) -> tuple[str, str]:
    """The media playlist at `url` and its address; a master playlist leads to its first variant."""
    origin = url
    for _ in range(2):
        if not same_site(url, origin):
            raise UpstreamError("variant playlist off the platform's host")
        text = get(url, timeout).text
        if not text.startswith("#EXTM3U"):
            raise UpstreamError("upstream playlist is not HLS")
        lines = text.splitlines()
        variant = next(
            (
                lines[i + 1]
                for i, line in enumerate(lines[:-1])
                if line.startswith("#EXT-X-STREAM-INF")
            ),
            None,
        )
        if variant is None:
            return text, url
        url = urljoin(url, variant.strip())
    raise UpstreamError("nested master playlists")


def extension(url: str) -> str:
    suffix = PurePosixPath(urlsplit(url).path).suffix.lower()
    return suffix if suffix in TYPES else ".ts"


def rewrite(settings: Settings, camera_id: str, text: str, base: str) -> str:
    """Every URI (segment lines, and URI= in any tag: map, key, part, hints) sealed and ticketed."""

    def sealed(uri: str) -> str:
        url = urljoin(base, uri.strip())
        if not same_site(url, base):
            raise UpstreamError("playlist points off the platform's host")
        return f"p/{seal(settings, camera_id, url)}{extension(url)}"

    out = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            line = sealed(line)
        elif line.startswith("#"):
            line = URI_ATTRIBUTE.sub(lambda m: f'URI="{sealed(m.group(1))}"', line)
        out.append(line)
    return "\n".join(out) + "\n"


def segment(url: str, timeout: float) -> tuple[Iterator[bytes], str]:
    """The upstream bytes as a stream, and the content type their extension says."""
    response = get(url, timeout, stream=True)

    def chunks() -> Iterator[bytes]:
        with response:
            yield from response.iter_content(CHUNK)

    return chunks(), TYPES[extension(url)]
