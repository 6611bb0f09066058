"""The EZVIZ Open Platform backend: an owner's own EZVIZ cameras, synced into the registry.

camvoice keeps each owner's appKey and sealed appSecret, and copies the account's cameras and the
settings the readiness rules read (online, Image Encryption, microphone, lens cover) into the
cameras table (sync.py). Directives read that copy; a stream request asks the platform again with
one bounded call (recheck), and owners' fixes are pushed to the platform (push).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from backends.ezviz.client import Client, EzvizError, Kind, keys_in_use, obj
from backends.ezviz.models import EzvizLink
from backends.ezviz.sync import CLOUD_SOURCE, link_account
from camvoice.cameras import CameraError, CameraGone, CloudLink, StreamUnavailable
from camvoice.models import Account, Camera
from camvoice.services import Services
from camvoice.tickets import Protocol

log = logging.getLogger(__name__)

LIVE_SECONDS = 600  # lifetime asked for a platform HLS address; camvoice's own ticket is shorter


class EzvizBackend:
    """Reads come from the synced copy; changes and stream checks go to the platform.

    Every method is called with no transaction open: each platform call is bracketed by short
    transactions of its own (keys in, a renewed token out, what was learnt recorded).
    """

    name = "ezviz"
    # camvoice's own fields: where it plays the camera from and what that stream measures
    LOCAL = frozenset({"room", "nicknames", "source", "width", "height"})

    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings
        self._live: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def call(self, camera: Camera, path: str, **form: Any) -> dict[str, Any]:
        """One bounded platform call about a camera, keeping a token renewed on the way."""
        with keys_in_use(self.services.db, self.settings, camera.owner_id) as keys:
            client = Client(
                keys,
                self.settings.ezviz_api_url,
                self.settings.ezviz_live_timeout,
                self.settings.ezviz_area_domains,
            )
            return client.call(path, deviceSerial=camera.serial, **form)

    def push(self, camera: Camera, changes: dict[str, Any], code: str | None) -> None:
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
                self.call(camera, path, **form)
            except EzvizError as exc:
                if exc.kind is Kind.WRONG_CODE:
                    raise CameraError("the verification code is wrong: it is the 6 capital "
                                      "letters on the camera's label") from None  # fmt: skip
                if exc.kind is not Kind.ALREADY:
                    raise CameraError(f"EZVIZ did not make the change ({exc})") from None

    def recheck(self, camera: Camera, protocol: Protocol) -> bool:
        """One bounded call before a stream is handed out; the answer updates the synced copy.

        For the platform's HLS it is the live-address call itself (kept for the playlist); for
        the relay it is the device info. A slow or failing platform leaves the last synced state.
        """
        try:
            if protocol is Protocol.HLS and camera.source == CLOUD_SOURCE:
                self.live_url(camera, fresh=True)
                changes = {"online": True, "image_encryption": False, "sleep_mode": False}
            else:
                data = obj(self.call(camera, "/api/lapp/device/info").get("data"))
                changes = {
                    "online": str(data.get("status")) == "1",
                    "image_encryption": str(data.get("isEncrypt")) == "1",
                }
        except EzvizError as exc:
            if not self.learn(camera, exc):
                log.warning("EZVIZ check of %s failed (%s); using the last sync", camera.id, exc)
            return True
        self.remember(camera, changes)
        return True

    def remember(self, camera: Camera, changes: dict[str, Any]) -> None:
        """Record what the platform said about a camera (if it is still there)."""
        with self.services.db.session() as session:
            fresh = session.get(Camera, camera.id)
            if fresh is not None:
                self.services.registry.record(session, fresh, changes, actor="ezviz")

    def learn(self, camera: Camera, exc: EzvizError) -> bool:
        """Record what an error says about the camera; False when it says nothing about it.
        A device that left the owner's account is removed, and CameraGone raised."""
        found = {
            Kind.OFFLINE: {"online": False},
            Kind.ENCRYPTED: {"image_encryption": True},
            Kind.PRIVACY: {"sleep_mode": True},
        }.get(exc.kind)
        if exc.kind is Kind.NOT_FOUND:
            with self.services.db.session() as session:
                fresh = session.get(Camera, camera.id)
                if fresh is not None:
                    self.services.registry.remove(session, fresh, actor="ezviz")
            raise CameraGone(camera.id)
        if found is None:
            return False
        self.remember(camera, found)
        return True

    def upstream_hls(self, camera: Camera) -> str | None:
        """The platform's HLS for a cloud-streamed camera; a refusal updates its state first."""
        if camera.source != CLOUD_SOURCE:
            return None
        try:
            return self.live_url(camera)
        except EzvizError as exc:
            try:
                self.learn(camera, exc)
            except CameraGone:
                raise StreamUnavailable("the camera left the owner's EZVIZ account") from None
            raise StreamUnavailable(str(exc)) from None

    def live_url(self, camera: Camera, fresh: bool = False) -> str:
        """The platform's HLS address for a camera, asked for only once readiness has passed."""
        with self._lock:
            cached = self._live.get(camera.id)
        if cached and not fresh and cached[1] > time.monotonic():
            return cached[0]
        body = self.call(camera, "/api/lapp/v2/live/address/get",
                         channelNo=1, protocol=2, quality=1, expireTime=LIVE_SECONDS)  # fmt: skip
        url = obj(body.get("data")).get("url")
        # https on the real platform; plain http only when the API itself is (a local fake).
        api_scheme = urlsplit(self.settings.ezviz_api_url).scheme
        if not isinstance(url, str) or urlsplit(url).scheme != api_scheme:
            raise EzvizError("live", Kind.TRANSIENT, "live address answer without an HLS URL")
        with self._lock:
            self._live[camera.id] = (url, time.monotonic() + LIVE_SECONDS * 0.8)
        return url

    def link(self, owner: Account, credentials: dict[str, str], actor: str) -> None:
        """An owner's Open Platform keys (appKey, appSecret): checked, kept, imported later."""
        link_account(self.services, owner, credentials.get("app_key", ""),
                     credentials.get("app_secret", ""), actor)  # fmt: skip

    def link_of(self, account_id: str) -> CloudLink | None:
        """The owner's EZVIZ link as the console shows it."""
        with self.services.db.reading() as session:
            link = session.get(EzvizLink, account_id)
            if link is None:
                return None
            return CloudLink(
                label=link.app_key,
                importing=link.last_sync_at is None and link.last_error is None,
                last_error=link.last_error,
            )
