"""Where camvoice may connect on a camera's behalf: one address policy for every outbound pull.

A camera source is typed in by an owner, and a camera cloud hands back URLs: either could point
camvoice's relays, snapshot grabs and HLS proxy at the host's own services (a database on
loopback, a cloud's metadata endpoint, the LAN behind the server). So every URL camvoice pulls a
stream from passes `AddressPolicy.check`: an allowed scheme, no backslash or blank inside, and
every address its host resolves to (all of getaddrinfo's answers, so a name with one good and
one bad record is refused) a public one, or inside a network the operator listed in
CAMVOICE_SOURCE_NETWORKS (LAN cameras over a VPN; loopback for a MediaMTX on the same host).
Cloud metadata addresses, link-local, unspecified, multicast and reserved addresses are refused
even when a listed network contains them.

The check runs when a source is registered and again just before each connection (DNS answers
change); callers then connect to the address that was checked (`Target.pinned`), not to a second
lookup of the name, which closes DNS rebinding between the check and the connection.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from urllib3.exceptions import LocationParseError
from urllib3.util import Url, parse_url

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

CAMERA_SCHEMES = frozenset({"rtsp", "rtsps"})
CLOUD_SCHEMES = frozenset({"http", "https"})
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}
RESOLVE_TIMEOUT = 2.0  # seconds a name may take to resolve; a request thread must not hang on it

# Instance metadata services: AWS (and most clouds: GCP, Azure, DigitalOcean, Oracle) on
# 169.254.169.254, AWS IPv6 on fd00:ec2::254, ECS task metadata on 169.254.170.2, Alibaba on
# 100.100.100.200 (inside CGNAT space an operator may list), Azure's wire server 168.63.129.16
# (a public address), Oracle Cloud's 192.0.0.192.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200",
        "168.63.129.16", "192.0.0.192",
    )
)  # fmt: skip
METADATA_NAMES = frozenset({
    "metadata", "metadata.google.internal", "metadata.goog", "instance-data",
    "instance-data.ec2.internal", "metadata.azure.internal",
})  # fmt: skip
HOSTNAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})$")
FORBIDDEN_CHARACTERS = re.compile(r"[\\\s\x00-\x1f\x7f]")
CONTROL_CHARACTERS = re.compile(r"[\\\x00-\x1f\x7f]")


class AddressRefused(ValueError):
    """A URL camvoice must not connect to; the message names why, never a credential."""


@dataclass(frozen=True)
class Target:
    """A URL that passed the policy, and the addresses its host resolved to when it did."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]

    @property
    def pinned(self) -> str:
        """The URL with its host replaced by the first checked address, so the connection goes
        where the check looked (a second lookup could answer otherwise). Credentials, path and
        query are kept. Not for TLS URLs, whose certificate names the host."""
        parts = urlsplit(self.url)
        address = self.addresses[0]
        host = f"[{address}]" if ":" in address else address
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@{host}:{self.port}" if userinfo else f"{host}:{self.port}"
        return parts._replace(scheme=self.scheme, netloc=netloc).geturl()


def http_url(url: str) -> Url | None:
    """An http(s) URL as requests (urllib3) will connect to it, or None when parsers could
    disagree about its host: a backslash, blanks or control characters, userinfo, no host.
    Compare hosts and ports of what this returns, never of another parser's reading."""
    if not isinstance(url, str) or CONTROL_CHARACTERS.search(url) or any(c.isspace() for c in url):
        return None
    try:
        parts = parse_url(url)
        authority = urlsplit(url).netloc
    except (LocationParseError, ValueError):
        return None
    if parts.auth is not None or "@" in authority:
        return None
    if parts.scheme not in CLOUD_SCHEMES or not parts.host:
        return None
    return parts


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """CAMVOICE_SOURCE_NETWORKS: CIDR blocks separated by commas or blanks."""
    networks = []
    for item in re.split(r"[\s,]+", text.strip()):
        if item:
            networks.append(ipaddress.ip_network(item, strict=False))
    return tuple(networks)


def plain(address: IPAddress) -> IPAddress:
    """An IPv4 address written as IPv6 (::ffff:a.b.c.d, or NAT64's 64:ff9b::a.b.c.d) is judged
    as the IPv4 address it reaches."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in ipaddress.ip_network("64:ff9b::/96"):
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


class AddressPolicy:
    """Which addresses a camera source or a camera cloud's URL may resolve to."""

    def __init__(
        self, networks: Iterable[IPNetwork] = (), resolve_timeout: float = RESOLVE_TIMEOUT
    ) -> None:
        self.networks = tuple(networks)
        self.resolve_timeout = resolve_timeout

    def refusal(self, address: IPAddress) -> str | None:
        """Why an address is refused, or None when camvoice may connect to it."""
        address = plain(address)
        if address in METADATA_ADDRESSES:
            return "a cloud metadata address"
        if address.is_unspecified or address.is_multicast or address.is_link_local:
            return "an unspecified, multicast or link-local address"
        if any(address in network for network in self.networks):
            return None
        if address.is_loopback:
            return "a loopback address"
        if address.is_reserved or not address.is_global:
            return "a private or reserved address not in CAMVOICE_SOURCE_NETWORKS"
        return None

    def check(self, url: str, schemes: frozenset[str] = CAMERA_SCHEMES) -> Target:
        """The URL's target, every address it resolves to checked; AddressRefused otherwise."""
        parts = self._parts(url, schemes)
        host = (parts.hostname or "").rstrip(".").lower()
        scheme = parts.scheme.lower()
        try:
            port = parts.port or DEFAULT_PORTS[scheme]
        except ValueError:
            raise AddressRefused("the port is not a number from 1 to 65535") from None
        if host in METADATA_NAMES:
            raise AddressRefused("the host is a cloud metadata name")
        addresses = self.resolve(host, port)
        for address in addresses:
            reason = self.refusal(address)
            if reason is not None:
                raise AddressRefused(f"the host resolves to {reason}")
        return Target(url, scheme, host, port, tuple(str(a) for a in addresses))

    @staticmethod
    def _parts(url: str, schemes: frozenset[str]) -> SplitResult:
        """The URL's parts, refusing what parsers disagree about (backslashes, blanks, control
        characters) and schemes not allowed here (case-insensitively)."""
        if not isinstance(url, str) or url != url.strip() or CONTROL_CHARACTERS.search(url):
            raise AddressRefused("the URL holds a backslash, a blank or a control character")
        try:
            parts = urlsplit(url)
            hostname = parts.hostname
        except ValueError:
            raise AddressRefused("the URL cannot be parsed") from None
        # A password may hold a blank; nothing may hold a backslash or a control character, and
        # the rest no blank either: those are where URL parsers disagree about the host.
        hostport = parts.netloc.rpartition("@")[2]
        rest = parts._replace(netloc=hostport).geturl()
        if FORBIDDEN_CHARACTERS.search(rest):
            raise AddressRefused("the URL holds a backslash, a blank or a control character")
        if parts.scheme.lower() not in schemes:
            raise AddressRefused(f"the scheme must be one of {', '.join(sorted(schemes))}")
        if not hostname:
            raise AddressRefused("the URL names no host")
        return parts

    def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Every address the host resolves to (an IP literal is itself), within the timeout."""
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        if not HOSTNAME.match(host):
            raise AddressRefused("the host name is not a valid DNS name")
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="resolve")
        try:
            future = pool.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
            infos = future.result(timeout=self.resolve_timeout)
        except FutureTimeout:
            raise AddressRefused("the host name did not resolve in time") from None
        except (OSError, UnicodeError):
            raise AddressRefused("the host name does not resolve") from None
        finally:
            pool.shutdown(wait=False)
        addresses = []
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise AddressRefused("the host name does not resolve")
        return addresses
