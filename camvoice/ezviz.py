"""The EZVIZ Open Platform backend: an owner's own EZVIZ cameras, synced into the registry.

camvoice keeps each owner's appKey and sealed appSecret, gets the 7-day access token and the
regional API host (`areaDomain`) the token call returns, and copies the account's cameras and the
settings the readiness rules read (online, Image Encryption, microphone, lens cover) into the
cameras table. Directives read that copy; a stream request asks the platform again with one
bounded call. Every call is a form POST answered by {"code": "200", "msg": ..., "data": ...}.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import requests
from cryptography.fernet import InvalidToken
from sqlalchemy import ForeignKey, Integer, String, Text, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from camvoice import audit
from camvoice.cameras import (
    BACKENDS,
    CameraError,
    LocalBackend,
    StreamUnavailable,
    add_camera,
    remove_camera,
    update_camera,
)
from camvoice.db import Database
from camvoice.models import Account, Base, Camera, utcnow
from camvoice.settings import Settings
from camvoice.tickets import Protocol

log = logging.getLogger(__name__)

PAGE_SIZE = 50  # the platform's maximum
MAX_PAGES = 400  # the platform refuses pageStart beyond this
TOKEN_MARGIN = timedelta(hours=1)  # renew this long before the 7-day token expires
LIVE_SECONDS = 600  # lifetime asked for a platform HLS address; camvoice's own ticket is shorter
MAX_BACKOFF = 6 * 3600.0
CLOUD_SOURCE = "ezviz"  # a camera's source when it streams through the platform's HLS


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


class EzvizLink(Base):
    """One owner's Open Platform app: appKey, sealed appSecret and token, sync schedule."""

    __tablename__ = "ezviz_links"

    account_id: Mapped[str] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    app_key: Mapped[str] = mapped_column(String(64))
    app_secret: Mapped[str] = mapped_column(Text)
    access_token: Mapped[str | None] = mapped_column(Text)
    token_expires_at: Mapped[datetime | None] = mapped_column()
    area_domain: Mapped[str | None] = mapped_column(String(255))
    next_sync_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_sync_at: Mapped[datetime | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


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


class Client:
    """The Open Platform calls for one owner: token renewal, the regional host, error codes."""

    def __init__(self, keys: Keys, api_url: str, timeout: float) -> None:
        self.keys = keys
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout

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
        """The regional host for every later call; it must speak the same scheme as the API."""
        if not isinstance(area, str) or not area:
            return self.api_url  # the China platform answers without one
        try:
            parts = urlsplit(area)
            hostname = parts.hostname
        except ValueError:
            hostname = None
        if not hostname or parts.scheme != urlsplit(self.api_url).scheme:
            raise EzvizError("token", Kind.TRANSIENT, "token answer with a bad areaDomain")
        return area.rstrip("/")

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
        "model": str(item.get("deviceType") or "EZVIZ camera")[:128],
        "firmware": str(item.get("deviceVersion") or "unknown")[:64],
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


class SyncFailed(CameraError):
    """A sync that changed nothing; recorded on the link (last_error, backoff) before raising."""


@dataclass
class SyncReport:
    added: int = 0
    changed: int = 0
    removed: int = 0


def sync_account(db: Database, settings: Settings, account_id: str) -> SyncReport:
    """Read the account from the platform, then apply the differences in one short transaction.

    No transaction is open during the HTTP calls (SQLite holds its write lock for a whole one).
    A sync that fails part-way changes nothing, so a device is never removed on a partial list.
    """
    with db.session() as session:
        link = session.get(EzvizLink, account_id)
        if link is None:
            raise CameraError("no EZVIZ account is linked for this owner")
        keys = Keys.load(link, settings)
    client = Client(keys, settings.ezviz_api_url, settings.ezviz_timeout)
    try:
        read = {}
        for item in list_devices(client):
            serial = str(item.get("deviceSerial") or "")
            if serial and serial not in read:
                try:
                    read[serial] = read_device(client, item)
                except EzvizError as exc:
                    if exc.kind is not Kind.NOT_FOUND:
                        raise
                    # Unbound between the list and the read: it is gone.
    finally:
        if keys.renewed:
            with db.session() as session:
                link = session.get(EzvizLink, account_id)
                if link is not None:
                    keys.store(link, settings)
    with db.session() as session:
        return apply_sync(session, account_id, keys.app_key, read)


def apply_sync(
    session: Session, account_id: str, app_key: str, read: dict[str, dict[str, Any]]
) -> SyncReport:
    """Add, rename, update and remove cameras, with the same audit and outbox events as a person.

    The link row is locked and checked again first: an owner who unlinked (or changed keys)
    while the platform was being read must not get the old account's cameras back.
    """
    report = SyncReport()
    link = session.get(EzvizLink, account_id, with_for_update=True)
    owner = session.get(Account, account_id)
    if owner is None or link is None or link.app_key != app_key:
        return report
    stmt = select(Camera).where(Camera.owner_id == account_id, Camera.backend == "ezviz")
    known = {camera.serial: camera for camera in session.scalars(stmt)}
    for serial, fields in read.items():
        camera = known.get(serial)
        if camera is None:
            fields = dict(fields)
            name = fields.pop("name")
            add_camera(session, owner, name, actor="ezviz", backend="ezviz", source=CLOUD_SOURCE,
                       serial=serial, **fields)  # fmt: skip
            report.added += 1
        elif update_camera(session, camera, fields, actor="ezviz", push=False):
            report.changed += 1
    for serial, camera in known.items():
        if serial not in read:
            remove_camera(session, camera, actor="ezviz")
            report.removed += 1
    return report


def backoff(interval: float, failures: int) -> float:
    """Seconds until the next try: the interval, doubled per consecutive failure, capped."""
    return min(interval * 2 ** min(failures, 10), max(MAX_BACKOFF, interval))


def sync_now(db: Database, settings: Settings, account_id: str) -> SyncReport:
    """Sync one owner and schedule the next sync; a failure backs off, is kept for the owner,
    and raises SyncFailed."""
    now = utcnow()
    try:
        report = sync_account(db, settings, account_id)
    except Exception as exc:  # an odd answer must not stop the worker or skip the backoff
        if not isinstance(exc, EzvizError):
            log.exception("EZVIZ sync of %s failed unexpectedly", account_id)
        with db.session() as session:
            link = session.get(EzvizLink, account_id)
            if link is not None:
                link.failures += 1
                delay = backoff(settings.ezviz_sync_interval, link.failures)
                link.next_sync_at = now + timedelta(seconds=delay)
                link.last_error = str(exc)[:255]
                log.warning("EZVIZ sync of %s failed (%s); next try in %.0f s",
                            account_id, exc, delay)  # fmt: skip
        raise SyncFailed(str(exc)[:255]) from None
    with db.session() as session:
        link = session.get(EzvizLink, account_id)
        if link is not None:
            link.failures = 0
            link.last_error = None
            link.last_sync_at = now
            link.next_sync_at = now + timedelta(seconds=settings.ezviz_sync_interval)
    if report.added or report.changed or report.removed:
        log.info("EZVIZ sync of %s: %s", account_id, report)
    return report


def sync_due(db: Database, settings: Settings) -> int:
    """Sync every owner whose turn has come; several workers never sync the same owner twice."""
    now = utcnow()
    with db.session() as session:
        due = session.execute(
            select(EzvizLink.account_id, EzvizLink.next_sync_at)
            .where(EzvizLink.next_sync_at <= now)
            .order_by(EzvizLink.next_sync_at)
            .limit(10)
        ).all()
    synced = 0
    for account_id, when in due:
        lease = utcnow() + timedelta(seconds=settings.ezviz_sync_interval)
        with db.session() as session:
            claimed = session.execute(
                update(EzvizLink)
                .where(EzvizLink.account_id == account_id, EzvizLink.next_sync_at == when)
                .values(next_sync_at=lease)
            ).rowcount
        if claimed == 1:
            with contextlib.suppress(SyncFailed):  # recorded on the link, retried after backoff
                sync_now(db, settings, account_id)
            synced += 1
    return synced


def link_account(
    db: Database, settings: Settings, owner: Account, app_key: str, app_secret: str, actor: str
) -> SyncReport:
    """Check the keys with a token call, keep them (secret sealed), and import the cameras."""
    app_key, app_secret = app_key.strip(), app_secret.strip()
    if not app_key or not app_secret:
        raise CameraError("appKey and appSecret must not be empty")
    keys = Keys(owner.id, app_key, app_secret, None, None, None)
    try:
        Client(keys, settings.ezviz_api_url, settings.ezviz_timeout).renew()
    except EzvizError as exc:
        raise CameraError(f"EZVIZ refused these keys ({exc})") from None
    sealer = settings.sealer()
    with db.session() as session:
        link = session.get(EzvizLink, owner.id) or EzvizLink(account_id=owner.id, failures=0)
        link.app_key = app_key
        link.app_secret = sealer.encrypt(app_secret.encode()).decode()
        keys.store(link, settings)
        # The first sync runs right here; a worker's turn comes one interval later.
        link.next_sync_at = utcnow() + timedelta(seconds=settings.ezviz_sync_interval)
        session.add(link)
        audit.record(session, "ezviz.linked", actor=actor, account_id=owner.id)
    try:
        return sync_now(db, settings, owner.id)
    except SyncFailed as exc:
        raise CameraError(
            f"keys saved, but the first sync failed: {exc}; the worker retries"
        ) from None


def unlink_account(session: Session, owner: Account, actor: str) -> int:
    """Forget the keys and remove the owner's EZVIZ cameras (assistants hear DeleteReport)."""
    link = session.get(EzvizLink, owner.id)
    if link is None:
        raise CameraError(f"{owner.email} has no EZVIZ account linked")
    stmt = select(Camera).where(Camera.owner_id == owner.id, Camera.backend == "ezviz")
    removed = 0
    for camera in session.scalars(stmt):
        remove_camera(session, camera, actor=actor)
        removed += 1
    session.delete(link)
    audit.record(session, "ezviz.unlinked", actor=actor, account_id=owner.id)
    return removed


class CameraGone(LookupError):
    """The platform says the device is not (or no longer) this owner's."""


class EzvizBackend(LocalBackend):
    """Reads come from the synced copy; changes and stream checks go to the platform."""

    name = "ezviz"
    LOCAL = frozenset({"room", "nicknames", "source"})  # camvoice's own fields

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._live: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def call(self, session: Session, camera: Camera, path: str, **form: Any) -> dict[str, Any]:
        """One bounded platform call about a camera, keeping a token renewed on the way."""
        link = session.get(EzvizLink, camera.owner_id)
        if link is None:
            raise EzvizError("unlinked", Kind.TRANSIENT, "the owner's EZVIZ account is not linked")
        keys = Keys.load(link, self.settings)
        client = Client(keys, self.settings.ezviz_api_url, self.settings.ezviz_live_timeout)
        try:
            return client.call(path, deviceSerial=camera.serial, **form)
        finally:
            keys.store(link, self.settings)

    def apply(
        self, session: Session, camera: Camera, changes: dict[str, Any], code: str | None = None
    ) -> None:
        """Turn Image Encryption off (with the label's code), the microphone or lens cover."""
        calls: list[tuple[str, dict[str, Any]]] = []
        for key, value in changes.items():
            if key == "image_encryption" and value is False:
                if not code or len(code.strip()) != 6:
                    raise CameraError("turning off EZVIZ Image Encryption needs the 6-letter "
                                      "verification code from the camera's label")  # fmt: skip
                calls.append(("/api/lapp/device/encrypt/off", {"validateCode": code.strip()}))
            elif key == "audio" and value is True:
                calls.append(("/api/lapp/camera/video/sound/set", {"enable": "1"}))
            elif key == "sleep_mode" and value is False:
                calls.append(("/api/lapp/device/scene/switch/set", {"enable": 0}))
            elif key not in self.LOCAL:
                raise CameraError(f"{key} of an EZVIZ camera is changed in the EZVIZ app")
        for path, form in calls:  # each error told in the owner's terms
            try:
                self.call(session, camera, path, **form)
            except EzvizError as exc:
                if exc.kind is Kind.WRONG_CODE:
                    raise CameraError("the verification code is wrong: it is the 6 capital "
                                      "letters on the camera's label") from None  # fmt: skip
                if exc.kind is not Kind.ALREADY:
                    raise CameraError(f"EZVIZ did not make the change ({exc})") from None
        super().apply(session, camera, changes)

    def recheck(self, session: Session, camera: Camera, protocol: Protocol) -> None:
        """One bounded call before a stream is handed out; the answer updates the synced copy.

        For the platform's HLS it is the live-address call itself (kept for the playlist); for
        the relay it is the device info. A slow or failing platform leaves the last synced state.
        """
        try:
            if protocol is Protocol.HLS and camera.source == CLOUD_SOURCE:
                self.live_url(session, camera, fresh=True)
                changes = {"online": True, "image_encryption": False, "sleep_mode": False}
            else:
                data = obj(self.call(session, camera, "/api/lapp/device/info").get("data"))
                changes = {
                    "online": str(data.get("status")) == "1",
                    "image_encryption": str(data.get("isEncrypt")) == "1",
                }
        except EzvizError as exc:
            if not self.learn(session, camera, exc):
                log.warning("EZVIZ check of %s failed (%s); using the last sync", camera.id, exc)
            return
        update_camera(session, camera, changes, actor="ezviz", push=False)

    def learn(self, session: Session, camera: Camera, exc: EzvizError) -> bool:
        """Record what an error says about the camera; False when it says nothing about it."""
        found = {
            Kind.OFFLINE: {"online": False},
            Kind.ENCRYPTED: {"image_encryption": True},
            Kind.PRIVACY: {"sleep_mode": True},
        }.get(exc.kind)
        if exc.kind is Kind.NOT_FOUND:
            remove_camera(session, camera, actor="ezviz")
            raise CameraGone(camera.id)
        if found is None:
            return False
        update_camera(session, camera, found, actor="ezviz", push=False)
        return True

    def upstream_hls(self, session: Session, camera: Camera) -> str | None:
        """The platform's HLS for a cloud-streamed camera; a refusal updates its state first."""
        if camera.source != CLOUD_SOURCE:
            return None
        try:
            return self.live_url(session, camera)
        except EzvizError as exc:
            try:
                self.learn(session, camera, exc)
            except CameraGone:
                raise StreamUnavailable("the camera left the owner's EZVIZ account") from None
            raise StreamUnavailable(str(exc)) from None

    def live_url(self, session: Session, camera: Camera, fresh: bool = False) -> str:
        """The platform's HLS address for a camera, asked for only once readiness has passed."""
        with self._lock:
            cached = self._live.get(camera.id)
        if cached and not fresh and cached[1] > time.monotonic():
            return cached[0]
        body = self.call(session, camera, "/api/lapp/v2/live/address/get",
                         channelNo=1, protocol=2, quality=1, expireTime=LIVE_SECONDS)  # fmt: skip
        url = obj(body.get("data")).get("url")
        # https on the real platform; plain http only when the API itself is (a local fake).
        api_scheme = urlsplit(self.settings.ezviz_api_url).scheme
        if not isinstance(url, str) or urlsplit(url).scheme != api_scheme:
            raise EzvizError("live", Kind.TRANSIENT, "live address answer without an HLS URL")
        with self._lock:
            self._live[camera.id] = (url, time.monotonic() + LIVE_SECONDS * 0.8)
        return url


def install(settings: Settings) -> None:
    """Called by the composition root: the backend needs the settings to unseal the keys."""
    BACKENDS["ezviz"] = EzvizBackend(settings)
