"""The EZVIZ Open Platform API client: token renewal, the regional host, the error codes.

Every call is a form POST answered by {"code": "200", "msg": ..., "data": ...}; the token call
returns the regional API host (`areaDomain`) that every later call must use.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import requests
from cryptography.fernet import InvalidToken

from backends.ezviz.models import EzvizLink
from camvoice.addresses import http_url
from camvoice.db import Database
from camvoice.models import utcnow
from camvoice.settings import Settings

log = logging.getLogger(__name__)

PAGE_SIZE = 50  # the platform's maximum
MAX_PAGES = 400  # the platform refuses pageStart beyond this
TOKEN_MARGIN = timedelta(hours=1)  # renew this long before the 7-day token expires
# EZVIZ's own domains (open.ezvizlife.com, apius/apiisgp.ezvizlife.com, isgpopen.ezviz.com,
# open.ys7.com in China): CAMVOICE_EZVIZ_AREA_DOMAINS's default.
EZVIZ_DOMAINS = ("ezvizlife.com", "ezviz.com", "ys7.com")


class Kind(StrEnum):
    """What camvoice does about a platform error code."""

    TOKEN = "token"  # noqa: S105 - renew the access token and retry once
    CREDENTIALS = "credentials"  # appKey/appSecret rejected: the owner must fix them
    RATE_LIMITED = "rate_limited"  # back off
    NOT_FOUND = "not_found"  # not (or no longer) this owner's device
    OFFLINE = "offline"
    ENCRYPTED = "encrypted"  # Image Encryption is on
    PRIVACY = "privacy"  # lens cover (privacy mask) is on
    WRONG_CODE = "wrong_code"  # the verification code from the camera label is wrong
    UNSUPPORTED = "unsupported"
    ALREADY = "already"  # already in the state asked for: success
    TRANSIENT = "transient"  # retry later; never unlink, never crash


# The Open Platform's documented codes that camvoice can meet (open.ys7.com/help/78).
CODES: dict[str, tuple[Kind, str]] = {
    "10001": (Kind.TRANSIENT, "parameter error"),
    "10002": (Kind.TOKEN, "access token expired or invalid"),
    "10004": (Kind.CREDENTIALS, "user does not exist"),
    "10005": (Kind.CREDENTIALS, "appKey is frozen"),
    "10006": (Kind.CREDENTIALS, "calls from this IP address are restricted"),
    "10007": (Kind.RATE_LIMITED, "call limit reached"),
    "10013": (Kind.CREDENTIALS, "the app has no permission for this API"),
    "10017": (Kind.CREDENTIALS, "appKey does not exist"),
    "10018": (Kind.TOKEN, "access token does not match the appKey"),
    "10028": (Kind.RATE_LIMITED, "daily call limit reached"),
    "10029": (Kind.RATE_LIMITED, "call frequency over the limit"),
    "10030": (Kind.CREDENTIALS, "appKey and appSecret do not match"),
    "10031": (Kind.NOT_FOUND, "no permission for this device"),
    "20001": (Kind.NOT_FOUND, "channel does not exist"),
    "20002": (Kind.NOT_FOUND, "device does not exist"),
    "20006": (Kind.TRANSIENT, "network exception"),
    "20007": (Kind.OFFLINE, "device offline"),
    "20008": (Kind.TRANSIENT, "device response timeout"),
    "20010": (Kind.WRONG_CODE, "wrong verification code"),
    "20014": (Kind.NOT_FOUND, "invalid device serial"),
    "20015": (Kind.UNSUPPORTED, "function not supported"),
    "20018": (Kind.NOT_FOUND, "the account does not own this device"),
    "20032": (Kind.NOT_FOUND, "channel does not exist for this user"),
    "49999": (Kind.TRANSIENT, "data exception"),
    "50000": (Kind.TRANSIENT, "server exception"),
    "60016": (Kind.ALREADY, "encryption is already off"),
    "60019": (Kind.ENCRYPTED, "encryption is on"),
    "60020": (Kind.UNSUPPORTED, "command not supported by the device"),
    "60022": (Kind.ALREADY, "already in that state"),
    "60026": (Kind.PRIVACY, "the lens cover (privacy mask) is on"),
}


class EzvizError(Exception):
    """A refused or failed platform call. The message never holds a key, token or URL."""

    def __init__(self, code: str, kind: Kind, message: str) -> None:
        super().__init__(f"EZVIZ {code}: {message}")
        self.code = code
        self.kind = kind


def error_for(code: str, path: str) -> EzvizError:
    kind, message = CODES.get(code, (Kind.TRANSIENT, "undocumented error"))
    if code not in CODES:
        log.warning("EZVIZ answered an undocumented code %s on %s", code, path)
    return EzvizError(code, kind, message)


@dataclass
class Keys:
    """A link's credentials in the clear, held only for the calls of one unit of work."""

    account_id: str
    app_key: str
    app_secret: str
    access_token: str | None
    expires_at: datetime | None
    area_domain: str | None
    renewed: bool = False

    @classmethod
    def load(cls, link: EzvizLink, settings: Settings) -> Keys:
        """Unseal a link's keys; a changed secret key makes them unreadable: enter them again."""
        sealer = settings.sealer()
        try:
            secret = sealer.decrypt(link.app_secret.encode()).decode()
            token = (
                sealer.decrypt(link.access_token.encode()).decode() if link.access_token else None
            )
        except InvalidToken:
            raise EzvizError(
                "keys", Kind.CREDENTIALS, "stored keys unreadable: enter them again"
            ) from None
        return cls(
            link.account_id, link.app_key, secret, token, link.token_expires_at, link.area_domain
        )

    def store(self, link: EzvizLink, settings: Settings) -> None:
        """Keep a renewed token, so the next unit of work does not ask for another."""
        if self.renewed and self.access_token:
            link.access_token = settings.sealer().encrypt(self.access_token.encode()).decode()
            link.token_expires_at = self.expires_at
            link.area_domain = self.area_domain


@contextmanager
def keys_in_use(db: Database, settings: Settings, account_id: str) -> Iterator[Keys]:
    """An owner's keys for the calls of one unit of work, with no transaction open meanwhile:
    unsealed in a short read, and a token renewed on the way kept in a short write after (unless
    the owner entered other keys meanwhile)."""
    with db.reading() as session:
        link = session.get(EzvizLink, account_id)
        if link is None:
            raise EzvizError("unlinked", Kind.TRANSIENT, "no EZVIZ account is linked")
        keys = Keys.load(link, settings)
    try:
        yield keys
    finally:
        if keys.renewed:
            with db.session() as session:
                link = session.get(EzvizLink, account_id)
                if link is not None and link.app_key == keys.app_key:
                    keys.store(link, settings)


class Client:
    """The Open Platform calls for one owner: token renewal, the regional host, error codes."""

    def __init__(
        self, keys: Keys, api_url: str, timeout: float, area_domains: str | None = None
    ) -> None:
        self.keys = keys
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        suffixes = EZVIZ_DOMAINS if area_domains is None else area_domains.split(",")
        self.area_domains = tuple(s.strip().lower().strip(".") for s in suffixes if s.strip())

    def call(self, path: str, **form: Any) -> dict[str, Any]:
        """POST to the regional host; an expired token is renewed and the call retried once."""
        if self._token_stale():
            self.renew()
        try:
            return self._post(self.keys.area_domain or self.api_url, path, form, token=True)
        except EzvizError as exc:
            if exc.kind is not Kind.TOKEN:
                raise
        self.renew()
        return self._post(self.keys.area_domain or self.api_url, path, form, token=True)

    def renew(self) -> None:
        body = self._post(
            self.api_url,
            "/api/lapp/token/get",
            {"appKey": self.keys.app_key, "appSecret": self.keys.app_secret},
            token=False,
        )
        data = obj(body.get("data"))
        token, expires = data.get("accessToken"), data.get("expireTime")
        try:
            expires_at = datetime.fromtimestamp(float(expires) / 1000, UTC)  # type: ignore[arg-type]
        except (TypeError, ValueError, OverflowError, OSError):
            expires_at = None
        if not isinstance(token, str) or not token or expires_at is None:
            raise EzvizError("token", Kind.TRANSIENT, "token answer without accessToken")
        self.keys.access_token = token
        self.keys.expires_at = expires_at
        self.keys.area_domain = self._area(data.get("areaDomain"))
        self.keys.renewed = True

    def _area(self, area: Any) -> str:
        """The regional host for every later call (the access token and appSecret go there):
        an EZVIZ host (CAMVOICE_EZVIZ_AREA_DOMAINS, or the configured API's own host), with the
        API's scheme, no userinfo, path or query, read as requests will read it."""
        if not isinstance(area, str) or not area:
            return self.api_url  # the China platform answers without one
        parts, api = http_url(area), http_url(self.api_url)
        if (
            parts is None
            or api is None
            or parts.scheme != api.scheme
            or (parts.path or "/") != "/"
            or parts.query is not None
            or parts.fragment is not None
            or not self._ezviz_host(str(parts.host), str(api.host))
        ):
            raise EzvizError("token", Kind.TRANSIENT, "token answer with a bad areaDomain")
        return area.rstrip("/")

    def _ezviz_host(self, host: str, api_host: str) -> bool:
        host = host.rstrip(".").lower()
        if host == api_host.rstrip(".").lower():
            return True
        return any(host == d or host.endswith("." + d) for d in self.area_domains)

    def _token_stale(self) -> bool:
        expires = self.keys.expires_at
        return not self.keys.access_token or expires is None or expires - utcnow() < TOKEN_MARGIN

    def _post(self, base: str, path: str, form: dict[str, Any], token: bool) -> dict[str, Any]:
        if token:
            form = {"accessToken": self.keys.access_token, **form}
        try:
            response = requests.post(base + path, data=form, timeout=self.timeout)
        except requests.RequestException as exc:
            raise EzvizError("unreachable", Kind.TRANSIENT, type(exc).__name__) from None
        try:
            body = response.json()
        except ValueError:
            raise EzvizError(f"http {response.status_code}", Kind.TRANSIENT, "not JSON") from None
        code = str(body.get("code", "")) if isinstance(body, dict) else ""
        if code != "200":
            raise error_for(code or f"http {response.status_code}", path)
        return body  # type: ignore[no-any-return]


def obj(value: Any) -> dict[str, Any]:
    """A JSON object from the platform, or {} for anything else (null, a list, a string)."""
    return value if isinstance(value, dict) else {}


def enabled(data: Any) -> bool:
    """A switch status: `data` is an object or a one-item list, `enable` 0/1 as int or string."""
    if isinstance(data, list):
        data = data[0] if data else {}
    return isinstance(data, dict) and str(data.get("enable")) == "1"


def list_devices(client: Client) -> list[dict[str, Any]]:
    """Every device of the account, page by page (pageStart counts from 0)."""
    devices: list[dict[str, Any]] = []
    for page in range(MAX_PAGES):
        body = client.call("/api/lapp/device/list", pageStart=page, pageSize=PAGE_SIZE)
        data = body.get("data")
        if not isinstance(data, list):
            break  # not a page of devices: an empty account answers []
        items = [d for d in data if isinstance(d, dict)]
        devices.extend(items)
        try:
            total = int(obj(body.get("page")).get("total"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            total = None  # no count: a short page is the last one
        if total is not None:
            if len(devices) >= total:
                return devices
            if not items:
                break  # an empty page before the count was reached
        elif len(items) < PAGE_SIZE:
            return devices
    # Never return a list that may be short: the sync would remove the cameras missing from it.
    raise EzvizError("list", Kind.TRANSIENT, "device list incomplete")


def read_device(client: Client, item: dict[str, Any]) -> dict[str, Any]:
    """A listed device as camera fields; switch states are read only from an online device."""
    serial = str(item["deviceSerial"])
    fields: dict[str, Any] = {
        "name": str(item.get("deviceName") or serial).strip()[:128] or serial,
        "model": str(item["deviceType"])[:128] if item.get("deviceType") else None,
        "firmware": str(item["deviceVersion"])[:64] if item.get("deviceVersion") else None,
    }
    info = obj(client.call("/api/lapp/device/info", deviceSerial=serial).get("data"))
    fields["online"] = str(info.get("status", item.get("status"))) == "1"
    fields["image_encryption"] = str(info.get("isEncrypt")) == "1"
    if not fields["online"]:
        return fields  # a switch read would only answer 20007
    for path, key, absent in (
        ("/api/lapp/camera/video/sound/status", "audio", None),
        ("/api/lapp/device/scene/switch/status", "sleep_mode", False),
    ):
        try:
            fields[key] = enabled(client.call(path, deviceSerial=serial).get("data"))
        except EzvizError as exc:
            if exc.kind is Kind.UNSUPPORTED and absent is not None:
                fields[key] = absent  # no lens cover: never covered
            elif exc.kind not in (Kind.UNSUPPORTED, Kind.OFFLINE, Kind.TRANSIENT):
                raise
    return fields
