"""A fake EZVIZ Open Platform on 127.0.0.1, speaking its documented wire format.

Two hosts, as on the real platform: the global one only issues tokens and names the regional host
(`areaDomain`); the regional one serves every other call and the HLS live stream, which is a real
ffmpeg-made stream behind a master playlist. Requests are form POSTs; every answer is
{"code": "<string>", "msg": ..., "data": ...} with HTTP 200, the code saying what happened.
"""

from __future__ import annotations

import secrets
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from media.relay import find_ffmpeg
from tests.fake_http import GetRoute, JsonServer

WEEK_MS = 7 * 24 * 3600 * 1000
Answer = tuple[str, Any]  # (code, data)


def make_hls(folder: Path) -> Path:
    """A six-second H.264 HLS stream in 2 s segments, behind a master playlist."""
    folder.mkdir(parents=True, exist_ok=True)
    ffmpeg = find_ffmpeg()
    assert ffmpeg, "no ffmpeg"
    subprocess.run(
        [ffmpeg, "-hide_banner", "-loglevel", "error", "-f", "lavfi",
         "-i", "testsrc2=size=320x240:rate=15", "-t", "6", "-c:v", "libx264",
         "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "15", "-f", "hls",
         "-hls_time", "2", "-hls_list_size", "0",
         "-hls_segment_filename", str(folder / "seg%d.ts"), str(folder / "stream.m3u8")],
        check=True, timeout=60,
    )  # fmt: skip
    (folder / "index.m3u8").write_text(
        "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=400000,RESOLUTION=320x240\nstream.m3u8\n"
    )
    return folder


@dataclass
class Device:
    serial: str
    name: str
    model: str = "CS-C6N-A0-1C2WFR"
    version: str = "V5.3.0 build 210601"
    online: bool = True
    encrypt: bool = False
    mic: bool = True
    privacy: bool = False
    code: str = "ABCDEF"  # the verification code on the label
    mic_switch: bool = True  # some models have none: 60020
    lens_cover: bool = True


def host(post: Callable[[str, dict[str, str]], Answer], get: GetRoute) -> JsonServer:
    """One platform host: form POSTs answered in the platform's envelope, GETs for files."""

    def route(path: str, headers: Any, raw: bytes) -> tuple[int, dict[str, Any]]:
        code, data = post(urlsplit(path).path, dict(parse_qsl(raw.decode())))
        body = {"code": code, "msg": "Operate success!" if code == "200" else "error"}
        if data is not None:
            body.update(data if isinstance(data, dict) and "data" in data else {"data": data})
        return 200, body

    return JsonServer(route, get)


class FakeEzviz:
    """The platform's state for one developer app, plus a record of every call."""

    def __init__(self, app_key: str, app_secret: str, hls: Path | None = None) -> None:
        self.app_key, self.app_secret, self.hls = app_key, app_secret, hls
        self.devices: dict[str, Device] = {}
        self.tokens: set[str] = set()
        self.calls: list[tuple[str, str, dict[str, str]]] = []  # (host, path, form)
        self.forced: list[str] = []  # codes the coming regional calls answer (10029: rate limit)
        self.odd: dict[str, Any] = {}  # path -> a "200" answer's data of an unexpected shape
        self.master: str | None = None  # served instead of the real master playlist
        self.area: str | None = None  # the token answer's areaDomain instead of the region's
        self.issued: list[str] = []  # every token ever handed out
        self.live_urls: list[str] = []
        self.lock = threading.Lock()
        self.region = host(self._regional, self._stream)
        self.global_host = host(self._global, lambda path: (404, b"not found", "text/plain"))
        self.url = self.global_host.url

    def add(self, serial: str, name: str, **state: Any) -> Device:
        device = Device(serial, name, **state)
        self.devices[serial] = device
        return device

    def expire_tokens(self) -> None:
        """What a password change or the 7-day expiry does: every token answers 10002."""
        self.tokens.clear()

    def paths(self, host: str = "region") -> list[str]:
        return [path for h, path, _ in self.calls if h == host]

    def close(self) -> None:
        self.region.close()
        self.global_host.close()

    # --- hosts ---------------------------------------------------------------------------

    def _global(self, path: str, form: dict[str, str]) -> Answer:
        self.calls.append(("global", path, form))
        if path != "/api/lapp/token/get":
            return "10001", None  # the global host answers nothing but tokens
        if form.get("appKey") != self.app_key:
            return "10017", None
        if form.get("appSecret") != self.app_secret:
            return "10030", None
        token = "at." + secrets.token_hex(16)
        self.tokens.add(token)
        self.issued.append(token)
        expires = int(time.time() * 1000) + WEEK_MS
        return "200", {
            "accessToken": token,
            "expireTime": expires,
            "areaDomain": self.area or self.region.url,
        }

    def _regional(self, path: str, form: dict[str, str]) -> Answer:
        with self.lock:
            self.calls.append(("region", path, form))
            if form.get("accessToken") not in self.tokens:
                return "10002", None
            if self.forced:
                return self.forced.pop(0), None
            if path in self.odd:
                return "200", {"data": self.odd[path]}
            if path == "/api/lapp/device/list":
                return self._list(form)
            device = self.devices.get(form.get("deviceSerial", ""))
            if device is None:
                return "20018", None
            handler = ROUTES.get(path)
            return handler(self, device, form) if handler else ("10001", None)

    def _list(self, form: dict[str, str]) -> Answer:
        start, size = int(form.get("pageStart", 0)), int(form.get("pageSize", 10))
        if size > 50:
            return "10001", None
        devices = list(self.devices.values())
        page = devices[start * size : (start + 1) * size]
        data = [
            {"id": str(i), "deviceSerial": d.serial, "deviceName": d.name, "deviceType": d.model,
             "status": int(d.online), "defence": 0, "deviceVersion": d.version}
            for i, d in enumerate(page)
        ]  # fmt: skip
        return "200", {"data": data, "page": {"total": len(devices), "page": start, "size": size}}

    def _info(self, device: Device, form: dict[str, str]) -> Answer:
        return "200", {"deviceSerial": device.serial, "deviceName": device.name,
                       "model": device.model, "status": int(device.online), "defence": 0,
                       "isEncrypt": int(device.encrypt), "alarmSoundMode": 0,
                       "offlineNotify": 1}  # fmt: skip

    def _mic_status(self, device: Device, form: dict[str, str]) -> Answer:
        if not device.online:
            return "20007", None
        if not device.mic_switch:
            return "60020", None
        return "200", [
            {"deviceSerial": device.serial, "channelNo": 1, "enable": str(int(device.mic))}
        ]

    def _mic_set(self, device: Device, form: dict[str, str]) -> Answer:
        if not device.online:
            return "20007", None
        if not device.mic_switch:
            return "60020", None
        device.mic = form.get("enable") == "1"
        return "200", None

    def _privacy_status(self, device: Device, form: dict[str, str]) -> Answer:
        if not device.lens_cover:
            return "60020", None
        return "200", {"deviceSerial": device.serial, "channelNo": 1, "enable": int(device.privacy)}

    def _privacy_set(self, device: Device, form: dict[str, str]) -> Answer:
        enable = form.get("enable") == "1"
        if enable == device.privacy:
            return "60022", None
        device.privacy = enable
        return "200", None

    def _encrypt_off(self, device: Device, form: dict[str, str]) -> Answer:
        if not device.online:
            return "20007", None
        if form.get("validateCode") != device.code:
            return "20010", None
        if not device.encrypt:
            return "60016", None
        device.encrypt = False
        return "200", None

    def _live(self, device: Device, form: dict[str, str]) -> Answer:
        if form.get("protocol") != "2":
            return "10001", None
        if not device.online:
            return "20007", None
        if device.encrypt:
            return "60019", None
        if device.privacy:
            return "60026", None
        key = secrets.token_hex(8)
        url = f"{self.region.url}/hls/{device.serial}/index.m3u8?key={key}"
        self.live_urls.append(url)
        return "200", {"id": key, "url": url, "expireTime": "2026-11-23 23:59:59"}

    def _stream(self, path: str) -> tuple[int, bytes, str]:
        parts = urlsplit(path).path.strip("/").split("/")
        if self.hls is None or len(parts) != 3 or parts[0] != "hls" or "/" in parts[2]:
            return 404, b"not found", "text/plain"
        file = self.hls / parts[2]
        if parts[1] not in self.devices or not file.is_file():
            return 404, b"not found", "text/plain"
        kind = "application/vnd.apple.mpegurl" if file.suffix == ".m3u8" else "video/mp2t"
        if self.master is not None and parts[2] == "index.m3u8":
            return 200, self.master.encode(), kind
        return 200, file.read_bytes(), kind


ROUTES: dict[str, Callable[[FakeEzviz, Device, dict[str, str]], Answer]] = {
    "/api/lapp/device/info": FakeEzviz._info,
    "/api/lapp/camera/video/sound/status": FakeEzviz._mic_status,
    "/api/lapp/camera/video/sound/set": FakeEzviz._mic_set,
    "/api/lapp/device/scene/switch/status": FakeEzviz._privacy_status,
    "/api/lapp/device/scene/switch/set": FakeEzviz._privacy_set,
    "/api/lapp/device/encrypt/off": FakeEzviz._encrypt_off,
    "/api/lapp/v2/live/address/get": FakeEzviz._live,
}
