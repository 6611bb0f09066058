"""Settings: CAMVOICE_* environment variables, an optional .env, and embedded defaults.

With no configuration at all camvoice runs on a SQLite file in ./instance and a secret key
generated once and kept there, so a newcomer needs nothing but the two README commands.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from cryptography.fernet import MultiFernet

    from camvoice.addresses import AddressPolicy
    from camvoice.tickets import TicketSigner

SECRET_KEY_FILE = "secret_key"  # noqa: S105 - a file name, not a secret


class ConfigError(Exception):
    """A setting has a bad value; the message is one line naming the variable."""


class Settings(BaseSettings):
    """Every knob of the service. Field names map to CAMVOICE_<NAME> variables."""

    model_config = SettingsConfigDict(
        env_prefix="CAMVOICE_", env_file=".env", extra="ignore", validate_default=True
    )

    data_dir: Path = Path("instance")
    database_url: SecretStr | None = None
    public_url: str = "http://127.0.0.1:8080"
    secret_key: SecretStr | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Operations (README): log lines as text or one JSON object each; /metrics's bearer token
    # (unset: /metrics answers 404).
    log_format: Literal["text", "json"] = "text"
    metrics_token: SecretStr | None = None
    access_token_ttl: int = Field(3600, ge=60, le=86400)
    # Sign-in throttling (README, "Sign-in"): one account from one address is stopped after a
    # few failures; one account from everywhere gets NIST 800-63B's ceiling of 100.
    login_max_failures_account_address: int = Field(5, ge=1)
    login_max_failures_account: int = Field(100, ge=1)
    login_max_failures_ip: int = Field(20, ge=1)
    login_window: int = Field(900, ge=1)
    session_idle_minutes: int = Field(30, ge=1)
    session_max_hours: int = Field(12, ge=1)
    proxy_hops: int = Field(0, ge=0, le=5)
    stream_keys: SecretStr = SecretStr("")
    seal_keys: SecretStr = SecretStr("")
    stream_ticket_ttl: int = Field(300, ge=30, le=3600)
    stream_max_view: int = Field(4 * 3600, ge=60)
    # How often a playing RTSPS session, and a running HLS relay, is admitted again; at most 5 s
    # so that a change that blocks a camera or ends a link ends its sessions within 10 s.
    stream_recheck_interval: float = Field(3.0, ge=0.5, le=5.0)
    media_dir: Path | None = None
    relay_idle_timeout: float = Field(30.0, gt=0)
    max_relays: int = Field(8, ge=1)
    # Relays one owner's cameras may run at once; unset: half of max_relays (at least 1).
    max_relays_per_owner: int | None = Field(None, ge=1)
    ffmpeg: str | None = None
    # WebRTC (media/webrtc.py): STUN/TURN servers as JSON ([{"urls": [...], "username": ...,
    # "credential": ...}]), live sessions per web process, and how long one may take to connect.
    ice_servers: SecretStr = SecretStr("[]")
    max_webrtc_sessions: int = Field(16, ge=1)
    webrtc_idle_timeout: float = Field(20.0, gt=0, le=300)
    hls_url_template: str | None = None
    rtsps_url_template: str | None = None
    rtsps_port: int = Field(8554, ge=1, le=65535)
    # The port stream URLs name, when a port mapping in front of the relay differs (443 -> 8554).
    rtsps_public_port: int | None = Field(None, ge=1, le=65535)
    rtsps_cert: Path | None = None
    rtsps_key: Path | None = None
    relay_enabled: bool = False
    # WebRTC networks (camvoice/ice.py): besides CAMVOICE_ICE_SERVERS, a coturn sharing
    # CAMVOICE_TURN_SECRET (use-auth-secret), whose URLs get a fresh credential per session,
    # valid CAMVOICE_TURN_TTL seconds (default: CAMVOICE_STREAM_MAX_VIEW).
    turn_urls: str = ""
    turn_secret: SecretStr | None = None
    turn_ttl: int | None = Field(None, ge=60, le=7 * 86400)
    # Media nodes (`camvoice media`) that hold WebRTC sessions for this web process, by camera
    # (media/nodes.py); unset: `camvoice serve` runs one beside its workers.
    media_urls: str = ""
    google_homegraph_key: Path | None = None
    google_homegraph_url: str = "https://homegraph.googleapis.com"
    google_receiver_app_id: str | None = None
    manufacturer: str = "camvoice"
    alexa_forwarder_secret: SecretStr | None = None
    alexa_client_id: str | None = None
    alexa_client_secret: SecretStr | None = None
    alexa_lwa_token_url: str = "https://api.amazon.com/auth/o2/token"  # noqa: S105 - a URL
    alexa_event_gateway_url: str = "https://api.amazonalexa.com/v3/events"
    alexa_skill_id: str | None = None
    alexa_verify_requests: bool = True
    redis_url: SecretStr | None = None
    # Endpoints and devices of Discovery/SYNC answers kept per process, as JSON text (~0.9 KiB
    # an endpoint, ~0.4 KiB a device; camvoice/discovery.py).
    discovery_cache_items: int = Field(3000, ge=0)
    worker_poll_interval: float = Field(1.0, gt=0)
    ezviz_api_url: str = "https://open.ezvizlife.com"
    ezviz_sync_interval: float = Field(300.0, ge=5)
    ezviz_timeout: float = Field(5.0, gt=0, le=30)
    ezviz_live_timeout: float = Field(2.0, gt=0, le=10)
    outbox_max_attempts: int = Field(8, ge=1)
    # Networks (CIDR) besides the public internet that camera sources may be on: a LAN over a
    # VPN, loopback for a MediaMTX on this host. Metadata addresses are refused even if listed.
    source_networks: str = ""
    # Host suffixes an EZVIZ token answer's areaDomain must end with (or the API's own host).
    ezviz_area_domains: str = "ezvizlife.com,ezviz.com,ys7.com"
    # What the worker purges, and how often (camvoice/purge.py).
    purge_interval: float = Field(3600.0, ge=1)
    audit_retention_days: int = Field(365, ge=1)
    outbox_retention_days: int = Field(7, ge=0)

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL, defaulting to a SQLite file in the data dir."""
        if self.database_url is not None:
            url = self.database_url.get_secret_value()
            if url.startswith(("postgres://", "postgresql://")):
                # psycopg 3 is the driver we ship; plain postgresql:// would ask for psycopg2.
                url = "postgresql+psycopg://" + url.split("://", 1)[1]
            return url
        return f"sqlite:///{(self.data_dir / 'camvoice.db').resolve()}"

    @field_validator("source_networks")
    @classmethod
    def _source_networks(cls, value: str) -> str:
        from camvoice.addresses import parse_networks

        parse_networks(value)  # a ValueError names the bad block
        return value

    def address_policy(self) -> AddressPolicy:
        """Where camera sources and camera-cloud URLs may point (camvoice/addresses.py)."""
        from camvoice.addresses import AddressPolicy, parse_networks

        return AddressPolicy(parse_networks(self.source_networks))

    @field_validator("ice_servers")
    @classmethod
    def _ice_servers(cls, value: SecretStr) -> SecretStr:
        from camvoice.ice import parse_ice_servers

        parse_ice_servers(value.get_secret_value())  # says what is wrong, never a credential
        return value

    @field_validator("turn_urls")
    @classmethod
    def _turn_urls(cls, value: str) -> str:
        from camvoice.ice import parse_turn_urls

        parse_turn_urls(value)
        return value

    @field_validator("media_urls")
    @classmethod
    def _media_urls(cls, value: str) -> str:
        parse_media_urls(value)
        return value

    @field_validator("stream_keys")
    @classmethod
    def _stream_keys(cls, value: SecretStr) -> SecretStr:
        from camvoice.tickets import parse_keys

        parse_keys(value.get_secret_value(), "x")
        return value

    @field_validator("seal_keys")
    @classmethod
    def _seal_keys(cls, value: SecretStr) -> SecretStr:
        from camvoice.tickets import parse_keys

        if value.get_secret_value().strip():
            parse_keys(value.get_secret_value(), "x")
        return value

    def ice_server_list(self) -> list[dict[str, Any]]:
        """The STUN/TURN servers one WebRTC peer gathers candidates with, as RTCIceServer
        dictionaries, TURN credentials minted for it (camvoice/ice.py): call once per peer."""
        from camvoice.ice import ice_servers

        return [server.as_json() for server in ice_servers(self)]

    @property
    def media_path(self) -> Path:
        """Where relays write HLS segments: private to this service."""
        return (self.media_dir or self.data_dir / "media").resolve()

    def signer(self) -> TicketSigner:
        from camvoice.tickets import TicketSigner, parse_keys

        return TicketSigner(parse_keys(self.stream_keys.get_secret_value(), self.key()))

    def rtsps_url_port(self) -> int:
        """The port RTSPS stream URLs name: Echo devices connect to 443 only."""
        if self.rtsps_url_template:
            sample = self.rtsps_url_template.format(base=self.public_url, camera_id="c", ticket="t")
            return urlsplit(sample).port or 322  # RTSPS's registered port (RFC 7826)
        return self.rtsps_public_port or self.rtsps_port

    def relay_secret(self) -> str:
        """Shared by the app and its RTSPS relay subprocess, derived so nobody configures it."""
        return hmac.new(self.key().encode(), b"camvoice rtsps relay", hashlib.sha256).hexdigest()

    def sealer(self, purpose: bytes = b"camvoice sealed secrets") -> MultiFernet:
        """Encrypts what camvoice reads back later (source credentials, Alexa tokens, EZVIZ
        keys). CAMVOICE_SEAL_KEYS is the key ring: the first key seals, every key opens, and
        `camvoice keys reseal` moves every sealed value to the first. The secret key's own key
        opens too, so values sealed before a ring was set stay readable until resealed. Each
        purpose gets its own derived keys."""
        from cryptography.fernet import Fernet, MultiFernet

        from camvoice.tickets import parse_keys

        ring = self.seal_keys.get_secret_value()
        secrets_ = list(parse_keys(ring, "x").values()) if ring.strip() else []
        secrets_.append(self.key().encode())
        return MultiFernet(
            [
                Fernet(base64.urlsafe_b64encode(hmac.new(s, purpose, hashlib.sha256).digest()))
                for s in dict.fromkeys(secrets_)
            ]
        )

    def key(self) -> str:
        """The secret key: configured, or generated once and kept in the data dir."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value()
        path = self.data_dir / SECRET_KEY_FILE
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            path.touch(mode=0o600)
            path.write_text(secrets.token_urlsafe(48))
        return path.read_text().strip()

    def masked(self) -> dict[str, str]:
        """The effective settings for `camvoice config`, secrets masked."""
        shown: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                text = "********"
            elif value is None:
                text = "(default)"
            else:
                text = str(value)
            shown[f"CAMVOICE_{name.upper()}"] = text
        shown["database (effective)"] = _mask_url(self.sqlalchemy_url)
        return shown


def parse_media_urls(text: str) -> tuple[str, ...]:
    """CAMVOICE_MEDIA_URLS: comma-separated http(s) base URLs of the media nodes."""
    urls = tuple(url.strip().rstrip("/") for url in text.split(",") if url.strip())
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("each media node URL must be http:// or https:// with a host")
    if len(set(urls)) != len(urls):
        raise ValueError("a media node is listed twice")
    return urls


def _mask_url(url: str) -> str:
    """Hide the password in a database URL."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"


def load_settings(**overrides: object) -> Settings:
    """Build settings, turning a validation error into one line naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors()[0]
        name = "CAMVOICE_" + str(err["loc"][0]).upper() if err["loc"] else "settings"
        raise ConfigError(f"{name}: {err['msg']}") from None
