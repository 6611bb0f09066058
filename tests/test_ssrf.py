"""SSRF: camera sources and a camera cloud's URLs pass one address policy, at registration and
again at every connection; RTSP redirects are followed by camvoice under that policy, never by
ffmpeg; the HLS proxy reads URLs as its HTTP client does; an areaDomain must be EZVIZ's.

Fake cameras listen on loopback addresses (127.0.0.2 and 127.0.0.3 are as real as 127.0.0.1 on
Linux), so a test allows one /32 and refuses the other. A refused address is a plain listening
socket that is never accepted from: whatever connected to it is waiting in its backlog, counted
without any wait.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import select

from backends.ezviz.sync import link_account, sync_now
from camvoice.accounts import find_account
from camvoice.addresses import AddressPolicy, parse_networks
from camvoice.cameras import CameraError, Registry
from camvoice.db import Database
from camvoice.models import Camera
from camvoice.outbox import Outbox
from camvoice.settings import Settings
from camvoice.tickets import Audience, Protocol
from media import hls_proxy
from media.relay import RETRY_AFTER_FAILURE
from media.rtsp_check import SourceRefused, checked_source
from service.app import create_app
from service.wiring import build_services
from tests.conftest import (
    LiveServer,
    run_cli,
    running_relay,
    with_relay,
)
from tests.fake_ezviz import FakeEzviz
from tests.media_support import mint, play, probe_video, rtsp_camera
from tests.oauth_support import make_owner

EVERYTHING_LISTED = "127.0.0.0/8, 10.0.0.0/8, 100.64.0.0/10, 169.254.0.0/16, fc00::/7, ::1/128"


class Sink:
    """A refused address: listens, never accepts; `connections()` drains what came."""

    def __init__(self, host: str) -> None:
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.count = 0

    def connections(self) -> int:
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return self.count
            conn.close()
            self.count += 1

    def close(self) -> None:
        self.sock.close()


class FakeCamera:
    """An RTSP server on a loopback address answering every request with `status` (and a
    Location); with `digest` set it first asks for Digest credentials and checks them; with
    `honest_to` it answers a client whose User-Agent says so 200 instead (a camera telling
    camvoice's own DESCRIBE apart from ffmpeg's)."""

    def __init__(
        self, host: str, status: int, location: str = "", digest: str = "", honest_to: str = ""
    ) -> None:
        self.status, self.location, self.digest = status, location, digest
        self.honest_to = honest_to
        self.requests: list[str] = []
        self.sock = socket.create_server((host, 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"rtsp://{host}:{self.port}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            data = b""
            while True:
                try:
                    chunk = conn.recv(4096)
                except OSError:
                    return
                if not chunk:
                    return
                data += chunk
                while b"\r\n\r\n" in data:
                    head, data = data.split(b"\r\n\r\n", 1)
                    conn.sendall(self._reply(head.decode("latin-1")))

    def _reply(self, head: str) -> bytes:
        self.requests.append(head)
        cseq = re.search(r"(?im)^CSeq:\s*(\d+)", head)
        lines = [f"CSeq: {cseq.group(1) if cseq else 0}"]
        if self.digest and not self._authorized(head):
            lines.append('WWW-Authenticate: Digest realm="cam", nonce="n0nce"')
            return ("RTSP/1.0 401 Unauthorized\r\n" + "\r\n".join(lines) + "\r\n\r\n").encode()
        if self.honest_to and re.search(rf"(?im)^User-Agent:.*{self.honest_to}", head):
            return ("RTSP/1.0 200 OK\r\n" + "\r\n".join(lines) + "\r\n\r\n").encode()
        if self.location:
            lines.append(f"Location: {self.location}")
        text = {200: "OK", 302: "Moved Temporarily", 404: "Not Found"}[self.status]
        return (f"RTSP/1.0 {self.status} {text}\r\n" + "\r\n".join(lines) + "\r\n\r\n").encode()

    def _authorized(self, head: str) -> bool:
        found = re.search(r'(?im)^Authorization: Digest .*uri="([^"]+)".*response="([^"]+)"', head)
        if not found:
            return False
        user, password = self.digest.split(":")

        def md5(text: str) -> str:
            return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()

        ha1, ha2 = md5(f"{user}:cam:{password}"), md5(f"DESCRIBE:{found.group(1)}")
        return found.group(2) == md5(f"{ha1}:n0nce:{ha2}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """SQLite only: no database plays a part in where camvoice connects (conftest's fixture
    would run every test on PostgreSQL too)."""
    url = f"sqlite:///{tmp_path / 'camvoice.db'}"
    database = Database(url)
    database.upgrade()
    database.dispose()
    return url


@pytest.fixture
def sink() -> Iterator[Sink]:
    refused = Sink("127.0.0.3")
    yield refused
    refused.close()


def add_camera(db: Database, settings: Settings, source: str) -> Camera:
    """A camera registered under `settings`' policy, as the CLI and console register one."""
    with db.session() as session:
        known = find_account(session, "owner@example.com") is not None
    if not known:
        make_owner(db, "owner@example.com")
    registry = Registry(Outbox(), settings.address_policy(), settings.sealer())
    with db.session() as session:
        owner = find_account(session, "owner@example.com")
        return registry.add(session, owner, "Porch", actor="test", source=source)  # type: ignore[arg-type]


def pulls(settings: Settings, live: LiveServer, camera: Camera) -> dict[str, int]:
    """What the playlist, the snapshot and the RTSPS relay's question answer for a camera, each
    fetched as a player does (again after a 503: the start or grab, off the request, goes on)."""
    hls = mint(settings, camera, Protocol.HLS, Audience.GOOGLE).replace(settings.public_url, "")
    jpeg = mint(settings, camera, Protocol.JPEG, Audience.GOOGLE).replace(settings.public_url, "")
    rtsps = mint(settings, camera, Protocol.RTSPS, Audience.ALEXA)
    ticket = rtsps.rstrip("/").rsplit("/", 1)[-1]
    question = {"action": "read", "path": f"cam/{camera.id}", "protocol": "rtsp",
                "password": ticket, "want": "source"}  # fmt: skip
    relay = live.post("/media/auth", json=question,
                      headers={"X-Camvoice-Relay-Secret": settings.relay_secret()})  # fmt: skip
    return {
        "playlist": play(live.url + hls).status_code,
        "snapshot": play(live.url + jpeg).status_code,
        "relay": relay.status_code,
    }


# --- the policy, at registration -------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "rtsp://169.254.169.254/latest/meta-data",
        "rtsp://[fd00:ec2::254]/",
        "rtsp://100.100.100.200/",  # Alibaba's metadata, inside the listed CGNAT block
        "rtsp://168.63.129.16/",  # Azure's wire server, a public address
        "rtsp://metadata.google.internal/",
        "rtsp://[::ffff:169.254.169.254]/",
        "rtsp://0.0.0.0:554/",
        "rtsp://[::]:554/",
        "rtsp://224.0.0.1/",
        "rtsp://[fe80::1]/",
        "http://127.0.0.1/x.m3u8",
        "file:///etc/passwd",
        "rtsp://127.0.0.1:554\\@8.8.8.8/",
        "rtsp://8.8.8.8/x\nrtsp://127.0.0.1/",
    ],
)
def test_refused_even_when_every_private_network_is_listed(source: str) -> None:
    registry = Registry(Outbox(), AddressPolicy(parse_networks(EVERYTHING_LISTED)))
    with pytest.raises(CameraError):
        registry._validated(Camera(backend="local", source=None), {"source": source})


@pytest.mark.parametrize(
    "source",
    [
        "rtsp://127.0.0.1:8554/cam",
        "RTSP://localhost/cam",
        "rtsp://2130706433/cam",  # 127.0.0.1, as getaddrinfo reads a bare number
        "rtsp://0x7f.1/cam",
        "rtsp://[::1]/cam",
        "rtsp://[::ffff:10.0.0.1]/cam",
        "rtsp://10.1.2.3/cam",
        "rtsp://192.168.1.20/cam",
        "rtsp://172.16.0.9/cam",
        "rtsp://100.64.1.1/cam",
        "rtsp://[fd12:3456::1]/cam",
    ],
)
def test_loopback_and_private_only_when_listed(source: str) -> None:
    strict = Registry(Outbox(), AddressPolicy())
    with pytest.raises(CameraError):
        strict._validated(Camera(backend="local", source=None), {"source": source})
    listed = Registry(
        Outbox(), AddressPolicy(parse_networks(EVERYTHING_LISTED + ",192.168.0.0/16,172.16.0.0/12"))
    )
    assert listed._validated(Camera(backend="local", source=None), {"source": source})


def test_cli_refuses_a_metadata_source_before_probing_it(
    cli_env: dict[str, str], db: Database
) -> None:
    make_owner(db, "owner@example.com")
    done = run_cli("cameras", "add", "--owner", "owner@example.com", "--name", "Porch",
                   "--source", "rtsp://169.254.169.254:80/latest", env=cli_env, check=False)  # fmt: skip
    assert done.returncode == 2, done.stdout
    assert "metadata" in done.stderr


# --- the policy, again at every pull ---------------------------------------------------------


def test_relay_snapshot_and_rtsps_check_the_source_again(
    settings: Settings, db: Database, tmp_path: Path
) -> None:
    """Allowed when registered, refused now (the operator's list changed, or DNS answers
    otherwise): no pull connects to it."""
    refused = Sink("127.0.0.1")
    try:
        camera = add_camera(db, settings, f"rtsp://user:pw@127.0.0.1:{refused.port}/stream")
        now = settings.model_copy(update={"source_networks": "", "media_dir": tmp_path / "m"})
        app = create_app(now, db)
        with LiveServer(app) as live:
            assert pulls(now, live, camera) == {"playlist": 502, "snapshot": 502, "relay": 403}
        app.extensions["camvoice.relays"].shutdown()
        assert refused.connections() == 0
    finally:
        refused.close()


def test_rtsp_redirect_to_a_refused_address_is_not_followed(
    settings: Settings, db: Database, tmp_path: Path, sink: Sink
) -> None:
    """The camera (127.0.0.2, listed) answers 302 to 127.0.0.3 (not listed): ffmpeg would
    follow it; camvoice asks first and pulls nothing."""
    secret_service = f"rtsp://127.0.0.3:{sink.port}/internal"
    camera_server = FakeCamera("127.0.0.2", 302, location=secret_service)
    try:
        only = settings.model_copy(
            update={"source_networks": "127.0.0.2/32", "media_dir": tmp_path / "m"}
        )
        camera = add_camera(db, only, camera_server.url + "/stream")
        app = create_app(only, db)
        with LiveServer(app) as live:
            assert pulls(only, live, camera) == {"playlist": 502, "snapshot": 502, "relay": 403}
        app.extensions["camvoice.relays"].shutdown()
        assert camera_server.requests  # asked, by camvoice's own DESCRIBE
        assert sink.connections() == 0
    finally:
        camera_server.close()


def test_a_camera_that_answers_camvoice_otherwise_still_cannot_redirect_ffmpeg(
    settings: Settings, db: Database, tmp_path: Path, sink: Sink
) -> None:
    """The camera answers camvoice's DESCRIBE 200 and ffmpeg's requests 302: ffmpeg talks to
    it through the guard, which drops the redirect."""
    liar = FakeCamera("127.0.0.2", 302, location=f"rtsp://127.0.0.3:{sink.port}/x",
                      honest_to="camvoice")  # fmt: skip
    try:
        only = settings.model_copy(
            update={"source_networks": "127.0.0.2/32", "media_dir": tmp_path / "m"}
        )
        camera = add_camera(db, only, liar.url + "/stream")
        app = create_app(only, db)
        with LiveServer(app) as live:
            hls = mint(only, camera, Protocol.HLS, Audience.GOOGLE).replace(only.public_url, "")
            assert play(live.url + hls).status_code == 502
            jpeg = mint(only, camera, Protocol.JPEG, Audience.GOOGLE).replace(only.public_url, "")
            assert play(live.url + jpeg).status_code == 502
        app.extensions["camvoice.relays"].shutdown()
        assert any("Lavf" in r for r in liar.requests)  # ffmpeg did ask, and got no redirect
        assert sink.connections() == 0
    finally:
        liar.close()


def test_a_refused_start_is_remembered_for_a_while_not_retried_by_every_fetch(
    settings: Settings, db: Database, tmp_path: Path, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    """Twenty players at once on a camera whose redirect is refused: its one pre-flight DESCRIBE
    (in the start pool) is shared, every player is told 502 without the address, and the next
    fetches are told so at once, asking the camera nothing, until RETRY_AFTER_FAILURE has
    passed; then one fetch asks again. Snapshots likewise. The log says the source was refused."""
    camera_server = FakeCamera("127.0.0.2", 302, location=f"rtsp://127.0.0.3:{sink.port}/x")
    try:
        only = settings.model_copy(
            update={"source_networks": "127.0.0.2/32", "media_dir": tmp_path / "m"}
        )
        camera = add_camera(db, only, camera_server.url + "/stream")
        app = create_app(only, db)
        hls = mint(only, camera, Protocol.HLS, Audience.GOOGLE).replace(only.public_url, "")
        jpeg = mint(only, camera, Protocol.JPEG, Audience.GOOGLE).replace(only.public_url, "")
        with LiveServer(app) as live, ThreadPoolExecutor(20) as pool:
            for path in (hls, jpeg):
                asked = len(camera_server.requests)
                answers = list(pool.map(play, [live.url + path] * 20))
                assert {a.status_code for a in answers} == {502}
                assert not any("127.0.0" in a.text for a in answers)
                assert len(camera_server.requests) == asked + 1  # one pre-flight for all
            started = time.monotonic()
            while len(camera_server.requests) == 2:  # until the backoff ends
                assert play(live.url + hls).status_code == 502
                assert time.monotonic() - started < 30, "the camera was not asked again"
                time.sleep(0.2)
            assert time.monotonic() - started >= RETRY_AFTER_FAILURE - 1  # not at once
            assert len(camera_server.requests) == 3  # one fetch asked again
        app.extensions["camvoice.relays"].shutdown()
        assert sink.connections() == 0
        refusal = f"relay for camera {camera.id} refused its source: the host resolves to a"
        assert sum(r.getMessage().startswith(refusal) for r in caplog.records) == 2
    finally:
        camera_server.close()


@pytest.fixture
def real_camera(tmp_path: Path) -> Iterator[str]:
    with rtsp_camera(tmp_path) as url:
        yield url


def test_a_real_camera_plays_through_the_guards(
    settings: Settings,
    db: Database,
    tmp_path: Path,
    real_camera: str,
    sink: Sink,
) -> None:
    """HLS (ffmpeg) and RTSPS (GStreamer's rtspsrc, which follows redirects as ffmpeg does)
    play a real camera through their guards; a camera that answers camvoice 200 and the RTSPS
    relay 302 is played to nobody, and redirects it nowhere."""
    from tests.test_rtsps import play_rtsps, refused

    liar = FakeCamera("127.0.0.2", 302, location=f"rtsp://127.0.0.3:{sink.port}/x",
                      honest_to="camvoice")  # fmt: skip
    try:
        only = with_relay(settings, tmp_path, source_networks="127.0.0.2/32")
        real, lying = add_camera(db, only, real_camera), add_camera(db, only, liar.url + "/s")
        app = create_app(only, db)
        with LiveServer(app) as live, running_relay(only, live.url):
            hls = mint(only, real, Protocol.HLS, Audience.GOOGLE).replace(only.public_url, "")
            assert probe_video(live.url + hls) == "h264"
            assert play_rtsps(mint(only, real, Protocol.RTSPS, Audience.ALEXA), only) == "h264"
            assert refused(mint(only, lying, Protocol.RTSPS, Audience.ALEXA), only)
        app.extensions["camvoice.relays"].shutdown()
        assert sink.connections() == 0
    finally:
        liar.close()


def test_redirects_within_the_policy_are_followed_with_digest_credentials() -> None:
    final = FakeCamera("127.0.0.2", 200)
    first = FakeCamera("127.0.0.2", 302, location=final.url + "/main", digest="admin:p w%")
    try:
        policy = AddressPolicy(parse_networks("127.0.0.2/32"))
        source = first.url.replace("rtsp://", "rtsp://admin:p%20w%25@") + "/stream"
        assert checked_source(policy, source) == final.url + "/main"
        assert any("Authorization: Digest" in r for r in first.requests)
        loop = FakeCamera("127.0.0.2", 302)
        loop.location = loop.url + "/again"
        with pytest.raises(SourceRefused):
            checked_source(policy, loop.url + "/x")
        loop.close()
        # A name is handed on as the address that was checked (no second lookup).
        assert checked_source(AddressPolicy(parse_networks("127.0.0.0/8")),
                              f"rtsp://localhost:{final.port}/x") == f"rtsp://127.0.0.1:{final.port}/x"  # fmt: skip
    finally:
        final.close()
        first.close()


# --- the HLS proxy -----------------------------------------------------------------------------


ORIGIN = "http://localhost:18495/hls/SN001/stream.m3u8"


@pytest.mark.parametrize(
    "uri",
    [
        "http://127.0.0.1:18495\\@localhost/x.ts",  # requests connects to 127.0.0.1:18495
        "http://localhost:6379/x.ts",  # same host, another port (another service)
        "http://localhost:18495@127.0.0.1:22/x.ts",
        "http://user@localhost:18495/x.ts",
        "http://localhost:18495 /x.ts",
        "https://localhost:18495/x.ts",
        "http://[::1]:18495/x.ts",
        "http://localhost.:6379/x.ts",
    ],
)
def test_hls_proxy_refuses_uris_off_the_platform(uri: str, settings: Settings) -> None:
    assert not hls_proxy.same_site(uri, ORIGIN)
    playlist = f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\n{uri}\n"
    with pytest.raises(hls_proxy.UpstreamError):
        hls_proxy.rewrite(settings, "cam_1", playlist, ORIGIN)


def test_hls_proxy_keeps_uris_on_the_platform() -> None:
    for uri in (
        "seg1.ts",
        "http://localhost:18495/hls/SN001/seg1.ts",
        "HTTP://LOCALHOST:18495/a.ts",
    ):
        assert hls_proxy.same_site(hls_proxy.urljoin(ORIGIN, uri), ORIGIN)
    cdn = "https://hls01.ezvizlife.com/live/1.m3u8"
    assert hls_proxy.same_site("https://hls02.ezvizlife.com:443/live/1.ts", cdn)
    assert not hls_proxy.same_site("https://hls02.ezvizlife.com:8443/live/1.ts", cdn)


def test_hls_proxy_connects_only_to_allowed_addresses(sink: Sink) -> None:
    """The check runs as the connection opens, on the address it then connects to."""
    url = f"http://127.0.0.3:{sink.port}/index.m3u8"
    with pytest.raises(hls_proxy.UpstreamError):
        hls_proxy.get(url, 2.0, AddressPolicy(parse_networks("127.0.0.2/32")))
    named = f"http://localhost:{sink.port}/index.m3u8"
    with pytest.raises(hls_proxy.UpstreamError):
        hls_proxy.get(named, 2.0, AddressPolicy())
    assert sink.connections() == 0


# --- the camera cloud --------------------------------------------------------------------------

APP_KEY, APP_SECRET = "k3y-ssrf", "s3cret-ssrf"


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[FakeEzviz]:
    """A fake EZVIZ whose HLS route serves `master` (set by each test) as the live playlist."""
    (tmp_path / "hls").mkdir()
    (tmp_path / "hls" / "index.m3u8").write_text("#EXTM3U\n")
    fake = FakeEzviz(APP_KEY, APP_SECRET, tmp_path / "hls")
    fake.add("SN001", "Front Door")
    yield fake
    fake.close()


def cloud_camera(settings: Settings, db: Database) -> tuple[Settings, Camera]:
    """The owner's EZVIZ camera, imported from the fake, and the settings pointing at it."""
    ez = settings
    services = build_services(ez, db)
    make_owner(db, "owner@example.com")
    with db.session() as session:
        owner = find_account(session, "owner@example.com")
    link_account(services, owner, APP_KEY, APP_SECRET, actor="test")  # type: ignore[arg-type]
    sync_now(services, owner.id)  # type: ignore[union-attr]
    with db.session() as session:
        return ez, session.scalars(select(Camera)).one()


def cloud_playlist(ez: Settings, db: Database, camera: Camera, **update: object) -> int:
    app = create_app(ez.model_copy(update=update), db)
    with LiveServer(app) as live:
        url = mint(ez, camera, Protocol.HLS, Audience.GOOGLE).replace(ez.public_url, "")
        status = live.get(url).status_code
    app.extensions["camvoice.relays"].shutdown()
    return status


def test_cloud_urls_pass_the_address_policy(
    settings: Settings, db: Database, platform: FakeEzviz, sink: Sink, tmp_path: Path
) -> None:
    """The platform's live address (on loopback) is pulled only while loopback is listed; a
    playlist URI on the platform's host but another port (another service) never."""
    ez, camera = cloud_camera(settings.model_copy(update={"ezviz_api_url": platform.url}), db)
    platform.master = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\nseg0.ts\n"
    assert cloud_playlist(ez, db, camera, media_dir=tmp_path / "a") == 200
    assert cloud_playlist(ez, db, camera, media_dir=tmp_path / "b", source_networks="") == 502
    other_port = Sink("127.0.0.1")
    try:
        platform.master = (
            f"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nhttp://127.0.0.1:{other_port.port}/x.m3u8\n"
        )
        assert cloud_playlist(ez, db, camera, media_dir=tmp_path / "c") == 502
        assert other_port.connections() == 0
    finally:
        other_port.close()


@pytest.mark.parametrize(
    "area",
    [
        "http://169.254.169.254",
        "http://localhost:{port}",  # loopback, but not the configured API's host
        "http://open.ezvizlife.com.attacker.example",
        "http://attacker.example/open.ezvizlife.com",
        "http://open.ezvizlife.com@127.0.0.2:{port}",
        "http://127.0.0.1:{port}\\@open.ezvizlife.com",
        "http://127.0.0.1:{port}/?x=.ezvizlife.com",
        "https://127.0.0.1:{port}",  # not the API's scheme
    ],
)
def test_area_domain_must_be_an_ezviz_host(
    settings: Settings, db: Database, platform: FakeEzviz, area: str
) -> None:
    """The token answer names the host that every later call (with the token) goes to."""
    platform.area = area.format(port=platform.region.server.server_port)
    ez = settings.model_copy(update={"ezviz_api_url": platform.url})
    make_owner(db, "owner@example.com")
    with db.session() as session:
        owner = find_account(session, "owner@example.com")
    with pytest.raises(CameraError, match="areaDomain"):
        link_account(build_services(ez, db), owner, APP_KEY, APP_SECRET, actor="test")  # type: ignore[arg-type]


def test_area_domain_suffixes_are_a_setting(
    settings: Settings, db: Database, platform: FakeEzviz
) -> None:
    platform.area = f"http://localhost:{platform.region.server.server_port}"
    ez = settings.model_copy(
        update={"ezviz_api_url": platform.url, "ezviz_area_domains": "ezvizlife.com,localhost"}
    )
    make_owner(db, "owner@example.com")
    with db.session() as session:
        owner = find_account(session, "owner@example.com")
    link_account(build_services(ez, db), owner, APP_KEY, APP_SECRET, actor="test")  # type: ignore[arg-type]
    assert platform.paths("global") == ["/api/lapp/token/get"]
