"""A camera cloud's HLS passed through camvoice, so a player only ever sees camvoice's URLs.

The upstream playlist is fetched on each playlist request and every URI in it is rewritten to
`p/<sealed>.<ext>` under the ticketed path, `sealed` being the upstream URL encrypted and bound to
the camera. A segment fetch checks the ticket like any other, unseals, and streams the bytes
through. So unlinking or turning Image Encryption on stops a cloud stream just as it stops a
relayed one, and the platform's addresses, which carry its credentials, never reach a player.

A playlist is the platform's (or a tampered one's) word: every URI in it must stay on the live
address's site (same scheme, host and port as requests itself parses them, no userinfo, no
backslash) and every fetch passes the address policy at the moment its connection is opened,
to the address that was checked (PinnedAdapter), so a DNS answer that changes between the check
and the connection cannot aim camvoice at loopback or a metadata service.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import PurePosixPath
from urllib.parse import urljoin, urlsplit

import requests
from cryptography.fernet import InvalidToken
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import NewConnectionError

from camvoice.addresses import (
    CLOUD_SCHEMES,
    DEFAULT_PORTS,
    AddressPolicy,
    AddressRefused,
    http_url,
)
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
    """Whether a URI stays on the platform: the live address's scheme, port and host or, for a
    named host, a sibling under its parent domain (CDN segment hosts). Anything else, an
    internal address above all, is refused: camvoice must not fetch whatever a tampered
    playlist points at. Both are read with the parser the HTTP client connects with."""
    a, b = http_url(url), http_url(origin)
    if a is None or b is None or a.scheme != b.scheme or not a.host or not b.host:
        return False
    default = DEFAULT_PORTS[b.scheme or "https"]
    if (a.port or default) != (b.port or default):
        return False
    host, origin_host = a.host.rstrip(".").lower(), b.host.rstrip(".").lower()
    if host == origin_host:
        return True
    named = not origin_host.replace(".", "").isdigit() and ":" not in origin_host
    parent = origin_host.split(".", 1)[-1]
    return named and "." in parent and host.endswith("." + parent)


def pinned_connection(base: type[HTTPConnection], policy: AddressPolicy) -> type[HTTPConnection]:
    """`base` connecting only to an address the policy allows for its host, looked up and
    checked as the connection opens: the socket goes to that very address (urllib3 connects to
    `_dns_host`; the Host header, SNI and certificate check keep the name)."""
    scheme = "https" if issubclass(base, HTTPSConnection) else "http"

    def _new_conn(self: HTTPConnection) -> object:
        host = self._dns_host
        shown = f"[{host}]" if ":" in host else host
        try:
            target = policy.check(f"{scheme}://{shown}:{self.port}/", CLOUD_SCHEMES)
        except AddressRefused as exc:
            raise NewConnectionError(self, f"address refused: {exc}") from None
        self._dns_host = target.addresses[0]
        return base._new_conn(self)

    return type(f"Pinned{base.__name__}", (base,), {"_new_conn": _new_conn})


class PinnedAdapter(HTTPAdapter):
    """requests' adapter whose connections pass the address policy (pinned_connection)."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: object, **kwargs: object) -> None:
        super().init_poolmanager(*args, **kwargs)  # type: ignore[arg-type]
        pools = {}
        for scheme, pool in (("http", HTTPConnectionPool), ("https", HTTPSConnectionPool)):
            connection = pinned_connection(pool.ConnectionCls, self.policy)  # type: ignore[arg-type]
            pools[scheme] = type(f"Pinned{pool.__name__}", (pool,), {"ConnectionCls": connection})
        self.poolmanager.pool_classes_by_scheme = pools


def get(
    url: str, timeout: float, addresses: AddressPolicy, stream: bool = False
) -> requests.Response:
    """One GET of a platform URL: no redirects, no proxies from the environment, and a
    connection only to an address the policy allows."""
    if http_url(url) is None:
        raise UpstreamError("upstream URL refused")
    session = requests.Session()  # not closed here: a streamed segment is still being read
    session.trust_env = False
    session.mount("http://", PinnedAdapter(addresses))
    session.mount("https://", PinnedAdapter(addresses))
    try:
        response = session.get(url, timeout=timeout, stream=stream, allow_redirects=False)
    except requests.RequestException as exc:
        raise UpstreamError(type(exc).__name__) from None
    if response.status_code != 200:
        response.close()
        raise UpstreamError(f"upstream answered {response.status_code}")
    return response


def media_playlist(url: str, timeout: float, addresses: AddressPolicy) -> tuple[str, str]:
    """The media playlist at `url` and its address; a master playlist leads to its first variant."""
    origin = url
    for _ in range(2):
        if not same_site(url, origin):
            raise UpstreamError("variant playlist off the platform's host")
        text = get(url, timeout, addresses).text
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


def segment(url: str, timeout: float, addresses: AddressPolicy) -> tuple[Iterator[bytes], str]:
    """The upstream bytes as a stream, and the content type their extension says."""
    response = get(url, timeout, addresses, stream=True)

    def chunks() -> Iterator[bytes]:
        with response:
            yield from response.iter_content(CHUNK)

    return chunks(), TYPES[extension(url)]
