"""The EZVIZ backend against a fake Open Platform on 127.0.0.1: import, sync, readiness, streams
through camvoice's ticketed playlist, fixes, token renewal, rate limiting, and secrets kept."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import select, text, update

from backends.ezviz.client import Client, Keys, list_devices, read_device
from backends.ezviz.models import EzvizLink
from backends.ezviz.sync import (
    SyncFailed,
    SyncReport,
    apply_sync,
    link_account,
    sync_due,
    sync_now,
    unlink_account,
)
from camvoice import outbox
from camvoice.cameras import CameraError
from camvoice.db import Database
from camvoice.models import Account, AuditEvent, Camera, utcnow
from camvoice.readiness import Assistant, Blocker, readiness
from camvoice.services import Services
from camvoice.settings import Settings
from service.app import create_app
from service.wiring import build_services
from skills import messages
from tests.conftest import LiveServer, run_cli, wiring
from tests.fake_ezviz import FakeEzviz, make_hls
from tests.media_support import probe_video
from tests.oauth_support import GOOGLE_URIS, make_owner, register
from tests.transactions import open_transactions

APP_KEY = "f3b1c0de5a7e4c1b9d2e"
APP_SECRET = "s3cr3t-" + uuid.uuid4().hex
OWNER = "ezviz.owner@example.com"


@pytest.fixture(scope="session")
def hls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_hls(tmp_path_factory.mktemp("ezviz-hls"))


@pytest.fixture
def platform(hls_dir: Path) -> Iterator[FakeEzviz]:
    fake = FakeEzviz(APP_KEY, APP_SECRET, hls_dir)
    fake.add("SN001", "Front Door")
    fake.add("SN002", "Garage", encrypt=True)
    fake.add("SN003", "Nursery", mic=False)
    yield fake
    fake.close()


@pytest.fixture
def ez(settings: Settings, platform: FakeEzviz, tmp_path: Path) -> Settings:
    return settings.model_copy(
        update={"ezviz_api_url": platform.url, "media_dir": tmp_path / "media"}
    )


@pytest.fixture
def services(ez: Settings, db: Database) -> Services:
    """The wiring as the CLI and worker build it, pointed at the fake platform."""
    return build_services(ez, db)


@pytest.fixture
def owner(db: Database) -> Account:
    make_owner(db, OWNER)
    with db.session() as session:
        return session.scalars(select(Account).where(Account.email == OWNER)).one()


def linked(services: Services, owner: Account) -> dict[str, Camera]:
    """Link the keys (one token call), then run the import the worker would run."""
    link_account(services, owner, APP_KEY, APP_SECRET, actor="test")
    sync_now(services, owner.id)
    return cameras_of(services.db, owner)


def cameras_of(db: Database, owner: Account) -> dict[str, Camera]:
    with db.session() as session:
        stmt = select(Camera).where(Camera.owner_id == owner.id)
        return {c.serial or c.name: c for c in session.scalars(stmt)}


# --- import -------------------------------------------------------------------------------


def test_cli_links_the_account_and_imports_its_cameras(
    cli_env: dict[str, str], db: Database, owner: Account, platform: FakeEzviz
) -> None:
    env = {**cli_env, "CAMVOICE_EZVIZ_API_URL": platform.url}
    wrong = run_cli("backends", "add", "ezviz", "--owner", OWNER, "--app-key", APP_KEY,
                    "--app-secret-stdin", env=env, stdin="not-the-secret\n", check=False)  # fmt: skip
    assert wrong.returncode == 2
    assert "10030" in wrong.stderr and "appSecret do not match" in wrong.stderr
    done = run_cli("backends", "add", "ezviz", "--owner", OWNER, "--app-key", APP_KEY,
                   "--app-secret-stdin", "--json", env=env, stdin=APP_SECRET + "\n")  # fmt: skip
    assert json.loads(done.stdout)["added"] == 3
    # The token comes from the global host; every later call goes to the areaDomain it named.
    assert set(platform.paths("global")) == {"/api/lapp/token/get"}
    assert "/api/lapp/device/list" in platform.paths("region")

    listed = json.loads(run_cli("cameras", "list", "--owner", OWNER, "--json", env=env).stdout)
    by_serial = {c["serial"]: c for c in listed}
    assert {c["backend"] for c in listed} == {"ezviz"}
    assert by_serial["SN001"]["readiness"]["google"]["ready"] is True
    assert by_serial["SN001"]["model"] == "CS-C6N-A0-1C2WFR"
    garage = by_serial["SN002"]["readiness"]
    assert [b["code"] for b in garage["alexa"]["blockers"]] == ["ENCRYPTION_ON"]
    nursery = by_serial["SN003"]["readiness"]
    assert nursery["alexa"]["ready"] and [b["code"] for b in nursery["google"]["blockers"]] == [
        "AUDIO_OFF"
    ]

    synced = run_cli("backends", "sync", "--owner", OWNER, "--json", env=env).stdout
    assert json.loads(synced) == {"added": 0, "changed": 0, "removed": 0}
    platform.forced = ["10029"]
    limited = run_cli("backends", "sync", "--owner", OWNER, env=env, check=False)
    assert limited.returncode == 2 and "sync failed: EZVIZ 10029" in limited.stderr
    shown = run_cli("backends", "list", "--json", env=env).stdout
    assert json.loads(shown)[0]["app_key"] == APP_KEY and json.loads(shown)[0]["region"]
    for output in (wrong.stdout, wrong.stderr, done.stdout, done.stderr, shown):
        assert APP_SECRET not in output
    with db.session() as session:
        row = session.execute(text("SELECT * FROM ezviz_links")).one()
    assert not any(APP_SECRET in str(v) or v in platform.tokens for v in row)


def test_paging_reads_every_device(
    db: Database, services: Services, owner: Account, platform: FakeEzviz
) -> None:
    for n in range(4, 56):
        platform.add(f"SN{n:03d}", f"Camera {n}")
    cameras = linked(services, owner)
    assert len(cameras) == 55
    lists = [f for _, p, f in platform.calls if p == "/api/lapp/device/list"]
    assert [(f["pageStart"], f["pageSize"]) for f in lists] == [("0", "50"), ("1", "50")]


# --- sync -------------------------------------------------------------------------------------


def test_sync_adds_renames_and_removes_with_the_usual_outbox_events(
    db: Database, services: Services, owner: Account, platform: FakeEzviz
) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    for topic in ("camera.added", "camera.changed", "camera.removed"):
        services.outbox.subscribe(topic, "recorder", lambda t, p: events.append((t, p)))
    cameras = linked(services, owner)
    while outbox.drain_once(db, services.outbox, max_attempts=3):
        pass
    assert sorted(t for t, _ in events) == ["camera.added"] * 3
    events.clear()

    platform.devices["SN001"].name = "Front Porch"
    platform.devices["SN002"].encrypt = False
    del platform.devices["SN003"]
    platform.add("SN004", "Backyard", online=False)
    report = sync_now(services, owner.id)
    assert report == SyncReport(added=1, changed=2, removed=1)
    while outbox.drain_once(db, services.outbox, max_attempts=3):
        pass
    got = {(t, p["camera_id"]): p for t, p in events}
    now = cameras_of(db, owner)
    assert set(got) == {
        ("camera.changed", cameras["SN001"].id),
        ("camera.changed", cameras["SN002"].id),
        ("camera.removed", cameras["SN003"].id),
        ("camera.added", now["SN004"].id),
    }
    assert got[("camera.changed", cameras["SN001"].id)]["changed"] == ["name"]
    assert now["SN001"].name == "Front Porch" and now["SN001"].id == cameras["SN001"].id
    assert readiness(now["SN002"], Assistant.ALEXA) == []
    assert readiness(now["SN004"], Assistant.ALEXA) == [Blocker.OFFLINE]
    with db.session() as session:
        actors = set(session.scalars(select(AuditEvent.actor).where(AuditEvent.actor == "ezviz")))
    assert actors == {"ezviz"}

    events.clear()
    assert sync_now(services, owner.id) == SyncReport()
    assert outbox.drain_once(db, services.outbox, max_attempts=3) == 0 and events == []


def test_a_sync_changes_the_next_google_sync_answer(
    db: Database, ez: Settings, services: Services, owner: Account, platform: FakeEzviz
) -> None:
    """A sync runs in the worker, not in the web process that keeps SYNC's answer: its rename
    bumps the owner's registry version, so the next SYNC answers the new name."""
    from camvoice.discovery import registry_version

    linked(services, owner)
    app = create_app(ez, db)
    with LiveServer(app) as live:
        token = google_token(live, db)

        def names() -> set[str]:
            body = {"requestId": "r", "inputs": [{"intent": "action.devices.SYNC"}]}
            answer = requests.post(live.url + "/google/fulfillment", json=body, timeout=30,
                                   headers={"Authorization": f"Bearer {token}"})  # fmt: skip
            return {d["name"]["name"] for d in answer.json()["payload"]["devices"]}

        assert names() == {"Front Door", "Garage", "Nursery"} == names()  # the second: kept
        with db.reading() as session:
            before = registry_version(session, owner.id)
        platform.devices["SN001"].name = "Front Porch"
        del platform.devices["SN003"]
        assert sync_now(services, owner.id) == SyncReport(changed=1, removed=1)
        with db.reading() as session:
            assert registry_version(session, owner.id) == (before or 0) + 2
        assert names() == {"Front Porch", "Garage"}
    app.extensions["camvoice.relays"].shutdown()


def test_expired_token_is_renewed_and_the_call_retried_once(
    db: Database, services: Services, owner: Account, platform: FakeEzviz
) -> None:
    linked(services, owner)
    with db.session() as session:
        sealed_before = session.get(EzvizLink, owner.id).access_token  # type: ignore[union-attr]
    platform.expire_tokens()
    platform.calls.clear()
    assert sync_now(services, owner.id) == SyncReport()
    assert platform.paths("global") == ["/api/lapp/token/get"]
    assert platform.paths("region")[:2] == ["/api/lapp/device/list"] * 2  # refused, then retried
    with db.session() as session:
        link = session.get(EzvizLink, owner.id)
        assert link.access_token != sealed_before and link.failures == 0  # type: ignore[union-attr]
    # The renewed token was kept: the next sync asks for none.
    platform.calls.clear()
    sync_now(services, owner.id)
    assert platform.paths("global") == []


def test_rate_limit_backs_off_and_a_failed_sync_changes_nothing(
    db: Database, ez: Settings, services: Services, owner: Account, platform: FakeEzviz
) -> None:
    linked(services, owner)
    del platform.devices["SN003"]
    platform.forced = ["10029"]
    before = utcnow()
    with pytest.raises(SyncFailed, match="10029"):
        sync_now(services, owner.id)
    with db.session() as session:
        link = session.get(EzvizLink, owner.id)
        assert link is not None and link.failures == 1 and "10029" in (link.last_error or "")
        assert link.next_sync_at - before >= timedelta(seconds=2 * ez.ezviz_sync_interval)
    assert len(cameras_of(db, owner)) == 3  # nothing removed on a failed sync

    platform.calls.clear()
    assert sync_due(services) == 0 and platform.calls == []  # still backing off
    platform.forced = ["10029"]
    with db.session() as session:
        session.execute(update(EzvizLink).values(next_sync_at=utcnow() - timedelta(seconds=1)))
    assert sync_due(services) == 1
    with db.session() as session:
        link = session.get(EzvizLink, owner.id)
        assert link is not None and link.failures == 2
        assert link.next_sync_at - utcnow() >= timedelta(seconds=3.5 * ez.ezviz_sync_interval)
        session.execute(update(EzvizLink).values(next_sync_at=utcnow() - timedelta(seconds=1)))
    assert sync_due(services) == 1
    assert "SN003" not in cameras_of(db, owner)
    with db.session() as session:
        link = session.get(EzvizLink, owner.id)
        assert link is not None and link.failures == 0 and link.last_error is None


def test_unknown_code_is_a_transient_failure_never_an_unlink(
    db: Database,
    services: Services,
    owner: Account,
    platform: FakeEzviz,
    caplog: pytest.LogCaptureFixture,
) -> None:
    linked(services, owner)
    platform.forced = ["77777"]
    with caplog.at_level(logging.WARNING), pytest.raises(SyncFailed):
        sync_now(services, owner.id)
    assert "undocumented code 77777" in caplog.text
    with db.session() as session:
        assert session.get(EzvizLink, owner.id) is not None
    assert len(cameras_of(db, owner)) == 3


def test_secrets_never_reach_the_logs(
    db: Database,
    services: Services,
    owner: Account,
    platform: FakeEzviz,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG):
        linked(services, owner)
        platform.expire_tokens()
        platform.forced = ["10029"]
        with pytest.raises(SyncFailed):  # renews the expired token, then meets 10029
            sync_now(services, owner.id)
        sync_now(services, owner.id)
    assert caplog.records, "nothing was logged: the check would prove nothing"
    assert len(platform.issued) == 2
    for secret in (APP_SECRET, *platform.issued):
        assert secret not in caplog.text


# --- fixes --------------------------------------------------------------------------------


def test_fixes_go_to_the_platform_and_need_the_verification_code(
    db: Database, services: Services, owner: Account, platform: FakeEzviz
) -> None:
    cameras = linked(services, owner)
    change = services.registry.change
    garage, nursery = cameras["SN002"].id, cameras["SN003"].id
    with pytest.raises(CameraError, match="6-letter verification code"):
        change(db, garage, {"image_encryption": False}, actor="owner")
    with pytest.raises(CameraError, match="verification code is wrong"):
        change(db, garage, {"image_encryption": False}, actor="o", code="ZZZZZZ")
    with pytest.raises(CameraError, match="changed in the EZVIZ app"):
        change(db, garage, {"online": False}, actor="owner")
    assert platform.devices["SN002"].encrypt is True
    assert cameras_of(db, owner)["SN002"].image_encryption is True  # a refused push records nothing
    changed = change(db, garage, {"image_encryption": False}, actor="owner:x", code="ABCDEF")
    assert changed.image_encryption is False
    assert change(db, nursery, {"audio": True}, actor="owner:x").audio is True
    assert platform.devices["SN002"].encrypt is False and platform.devices["SN003"].mic is True
    encrypt_off = [f for _, p, f in platform.calls if p == "/api/lapp/device/encrypt/off"]
    assert (
        encrypt_off[-1]["validateCode"] == "ABCDEF" and encrypt_off[-1]["deviceSerial"] == "SN002"
    )
    with db.session() as session:
        audited = session.scalars(
            select(AuditEvent).where(
                AuditEvent.action == "camera.changed", AuditEvent.actor == "owner:x"
            )
        ).all()
    assert {a.camera_id for a in audited} == {cameras["SN002"].id, cameras["SN003"].id}
    # The next sync agrees: nothing to change.
    assert sync_now(services, owner.id) == SyncReport()


# --- streams -------------------------------------------------------------------------------


def google_token(live: LiveServer, db: Database) -> str:
    from tests.oauth_support import PASSWORD, link

    client = register(db, "Google Home", GOOGLE_URIS, "google")
    _, token = link(live, client, OWNER, "client_secret_post", PASSWORD)
    return str(token["access_token"])


def execute(live: LiveServer, token: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    body = {"requestId": "r1", "inputs": [{"intent": "action.devices.EXECUTE", "payload": {
        "commands": [{"devices": [{"id": i} for i in ids], "execution": [{
            "command": "action.devices.commands.GetCameraStream",
            "params": {"StreamToChromecast": True, "SupportedStreamProtocols": ["hls"]}}]}]}}]}  # fmt: skip
    response = requests.post(live.url + "/google/fulfillment", json=body, timeout=30,
                             headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    assert response.status_code == 200
    return {c["ids"][0]: c for c in response.json()["payload"]["commands"]}


def test_google_plays_the_platform_hls_through_camvoice(
    db: Database,
    ez: Settings,
    services: Services,
    owner: Account,
    platform: FakeEzviz,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    cameras = linked(services, owner)
    app = create_app(ez, db)
    with LiveServer(app) as live:
        token = google_token(live, db)
        ids = {serial: camera.id for serial, camera in cameras.items()}
        got = execute(live, token, list(ids.values()))
        assert got[ids["SN002"]]["errorCode"] == "securityRestriction"
        assert got[ids["SN003"]]["errorCode"] == "deviceNotReady"
        # Blocked by the last sync: the platform was not asked for their streams.
        asked = [f["deviceSerial"] for _, p, f in platform.calls if "live/address" in p]
        assert asked == ["SN001"]
        front = got[ids["SN001"]]
        assert front["status"] == "SUCCESS"
        url = front["states"]["cameraStreamAccessUrl"]
        assert url.startswith(f"{ez.public_url}/streams/{ids['SN001']}/")
        local = url.replace(ez.public_url, live.url)
        playlist = requests.get(local, timeout=10)
        assert playlist.status_code == 200 and "#EXTINF" in playlist.text
        assert platform.region.url not in playlist.text and "key=" not in playlist.text
        assert probe_video(local) == "h264"
        assert len(platform.live_urls) == 1  # the playlist used the address the check got

        # Encryption turned on in the EZVIZ app after the last sync: the platform's 60019
        # becomes the ENCRYPTION_ON blocker, and the playlist already handed out stops.
        platform.devices["SN001"].encrypt = True
        assert execute(live, token, [ids["SN001"]])[ids["SN001"]]["errorCode"] == (
            "securityRestriction"
        )
        assert requests.get(local, timeout=10).status_code == 403
        # A device moved to another EZVIZ account: deviceNotFound, and it leaves the registry.
        platform.devices["SN001"].encrypt = False
        with db.session() as session:
            front_cam = session.get(Camera, ids["SN001"])
            wiring(app).registry.record(session, front_cam, {"image_encryption": False}, actor="t")  # type: ignore[arg-type]
        del platform.devices["SN001"]
        assert execute(live, token, [ids["SN001"]])[ids["SN001"]]["errorCode"] == "deviceNotFound"
        assert "SN001" not in cameras_of(db, owner)
    app.extensions["camvoice.relays"].shutdown()
    assert caplog.records
    for secret in (*platform.live_urls, *platform.issued, APP_SECRET):
        assert secret.split("?")[-1] not in caplog.text


def test_segments_are_sealed_to_their_camera(
    db: Database, ez: Settings, services: Services, owner: Account, platform: FakeEzviz
) -> None:
    from camvoice.tickets import Audience, Protocol
    from media import hls_proxy

    cameras = linked(services, owner)
    front, nursery = cameras["SN001"], cameras["SN003"]
    app = create_app(ez, db)
    mint = wiring(app).streams.mint
    with LiveServer(app) as live:
        with db.session() as session:
            url = mint(session.get(Camera, front.id), Protocol.HLS, Audience.WEB)  # type: ignore[arg-type]
        local = url.replace(ez.public_url, live.url)
        body = requests.get(local, timeout=10).text
        segment = next(line for line in body.splitlines() if line.startswith("p/"))
        base = local.rsplit("/", 1)[0]
        fetched = requests.get(f"{base}/{segment}", timeout=10)
        assert fetched.status_code == 200 and fetched.content[:1] == b"\x47"  # MPEG-TS sync byte
        assert fetched.headers["Content-Type"] == "video/mp2t"
        # The same sealed segment under another camera's valid ticket is refused.
        with db.session() as session:
            other = mint(session.get(Camera, nursery.id), Protocol.HLS, Audience.WEB)  # type: ignore[arg-type]
        other_base = other.replace(ez.public_url, live.url).rsplit("/", 1)[0]
        assert requests.get(f"{other_base}/{segment}", timeout=10).status_code == 404
        assert requests.get(f"{other_base}/index.m3u8", timeout=10).status_code == 200
        sealed = segment.removeprefix("p/")
        tampered = f"{base}/p/{sealed[:-8]}AAAA.ts"
        assert requests.get(tampered, timeout=10).status_code == 404
        # A tampered upstream playlist pointing at an internal address is never followed.
        fetched_before = len(platform.calls)
        platform.master = "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nhttp://169.254.169.254/latest\n"
        refused = requests.get(local, timeout=10)
        assert refused.status_code == 502 and "169.254" not in refused.text
        platform.master = "#EXTM3U\n#EXTINF:2,\nhttp://10.0.0.1/seg0.ts\n"
        assert requests.get(local, timeout=10).status_code == 502
        assert len(platform.calls) == fetched_before  # the cached live address, no new call
    assert hls_proxy.unseal(ez, nursery.id, sealed) is None
    app.extensions["camvoice.relays"].shutdown()


def test_alexa_needs_a_local_stream_for_an_ezviz_camera(
    db: Database, ez: Settings, services: Services, owner: Account, platform: FakeEzviz
) -> None:
    cameras = linked(services, owner)

    def interfaces(camera: Camera) -> set[str]:
        endpoint = messages.endpoint(camera, ez, streams=True, proactive=False)
        return {c["interface"] for c in endpoint["capabilities"]}

    front_id = cameras["SN001"].id
    with db.session() as session:
        front = session.get(Camera, front_id)
        assert "Alexa.CameraStreamController" not in interfaces(front)  # type: ignore[arg-type]
    source = "rtsp://admin:ABCDEF@192.0.2.10:554/h264/ch1/main/av_stream"
    services.registry.change(db, front_id, {"source": source}, actor="owner")
    with db.session() as session:  # not before its picture size is known (probed)
        front = session.get(Camera, front_id)
        assert "Alexa.CameraStreamController" not in interfaces(front)  # type: ignore[arg-type]
    services.registry.change(db, front_id, {"width": 1920, "height": 1080}, actor="probe")
    with db.session() as session:
        front = session.get(Camera, front_id)
        assert "Alexa.CameraStreamController" in interfaces(front)  # type: ignore[arg-type]
    with pytest.raises(CameraError):
        services.registry.change(db, front_id, {"source": "http://example.com/x.m3u8"}, actor="o")
    assert services.registry.source_url(cameras_of(db, owner)["SN001"]) == source


def test_alexa_stream_request_rechecks_the_device_once(
    db: Database, services: Services, owner: Account, platform: FakeEzviz
) -> None:
    from camvoice.streams import StreamRefused
    from camvoice.tickets import Audience, Protocol

    cameras = linked(services, owner)
    front_id = cameras["SN001"].id
    source = "rtsp://admin:ABCDEF@192.0.2.10/ch1"
    services.registry.change(db, front_id, {"source": source}, actor="o")
    platform.devices["SN001"].encrypt = True  # turned on in the EZVIZ app since the last sync
    platform.calls.clear()
    with db.session() as session:
        front = session.get(Camera, front_id)
    with pytest.raises(StreamRefused) as refused:
        services.streams.open(db, front, Audience.ALEXA, Protocol.RTSPS)  # type: ignore[arg-type]
    assert refused.value.blockers == [Blocker.ENCRYPTION_ON]
    assert platform.paths() == ["/api/lapp/device/info"]
    # Known blocked: the next request costs no platform call at all.
    with db.session() as session:
        front = session.get(Camera, front_id)
    with pytest.raises(StreamRefused) as refused:
        services.streams.open(db, front, Audience.ALEXA, Protocol.RTSPS)  # type: ignore[arg-type]
    assert refused.value.blockers
    assert platform.paths() == ["/api/lapp/device/info"]
    # A platform that does not answer in time leaves the last synced state in charge.
    platform.close()
    with db.session() as session:
        nursery = session.get(Camera, cameras["SN003"].id)
    opened = services.streams.open(db, nursery, Audience.ALEXA, Protocol.HLS)  # type: ignore[arg-type]
    assert opened.camera.id == cameras["SN003"].id
    assert opened.url.startswith(f"{services.settings.public_url}/streams/{opened.camera.id}/")


def test_worker_syncs_on_schedule(
    db: Database, services: Services, owner: Account, platform: FakeEzviz
) -> None:
    import threading
    import time

    linked(services, owner)
    platform.devices["SN001"].name = "Porch"
    with db.session() as session:
        session.execute(update(EzvizLink).values(next_sync_at=utcnow() - timedelta(seconds=1)))
    stop = threading.Event()
    worker = threading.Thread(target=outbox.run_worker, args=(db, services.outbox, 3, 0.05, stop),
                              kwargs={"periodic": lambda: sync_due(services)})  # fmt: skip
    worker.start()
    try:
        deadline = time.monotonic() + 15
        while cameras_of(db, owner)["SN001"].name != "Porch":
            assert time.monotonic() < deadline, "the worker did not sync"
            time.sleep(0.1)
    finally:
        stop.set()
        worker.join(10)
    with db.session() as session:
        link = session.get(EzvizLink, owner.id)
        assert link is not None and link.next_sync_at > utcnow()


def test_console_links_ezviz_and_fixes_with_the_label_code(
    db: Database, ez: Settings, owner: Account, platform: FakeEzviz
) -> None:
    from tests.oauth_support import PASSWORD, Browser, csrf_of

    app = create_app(ez, db)
    with LiveServer(app) as live:
        browser = Browser(live)
        browser.sign_in(browser.http.get(live.url + "/console", timeout=10), OWNER, PASSWORD)
        page = browser.http.get(live.url + "/console", timeout=10)
        form = {"csrf_token": csrf_of(page.text), "app_key": APP_KEY}
        refused = browser.http.post(live.url + "/console/ezviz", timeout=30,
                                    data={**form, "app_secret": "wrong"})  # fmt: skip
        assert refused.status_code == 400 and "10030" in refused.text
        done = browser.http.post(live.url + "/console/ezviz", timeout=30,
                                 data={**form, "app_secret": APP_SECRET}, allow_redirects=False)  # fmt: skip
        assert done.status_code == 303
        # The keys are kept; the import is the worker's, and until it runs the link says so.
        assert cameras_of(db, owner) == {}
        cloud = wiring(app).registry.cloud("ezviz")
        assert cloud is not None
        link = cloud.link_of(owner.id)
        assert link is not None and link.importing and link.label == APP_KEY
        page = browser.http.get(live.url + "/console", timeout=10)
        assert 'data-camera="Garage"' not in page.text and APP_KEY in page.text
        assert 'id="ezviz-importing"' in page.text
        assert sync_due(wiring(app)) == 1
        link = cloud.link_of(owner.id)
        assert link is not None and not link.importing and link.last_error is None
        page = browser.http.get(live.url + "/console", timeout=10)
        assert 'data-camera="Garage"' in page.text and APP_KEY in page.text
        assert 'id="ezviz-importing"' not in page.text
        assert APP_SECRET not in page.text and 'name="code"' in page.text

        garage = cameras_of(db, owner)["SN002"].id
        fix = {"csrf_token": csrf_of(page.text), "fix": "encryption", "confirm": "yes"}
        url = f"{live.url}/console/cameras/{garage}/fix"
        wrong = browser.http.post(url, data={**fix, "code": "QWERTY"}, timeout=30)
        assert wrong.status_code == 400 and "verification code is wrong" in wrong.text
        assert platform.devices["SN002"].encrypt is True
        right = browser.http.post(url, data={**fix, "code": "ABCDEF"}, timeout=30,
                                  allow_redirects=False)  # fmt: skip
        assert right.status_code == 303 and platform.devices["SN002"].encrypt is False
        assert cameras_of(db, owner)["SN002"].image_encryption is False
    app.extensions["camvoice.relays"].shutdown()


def test_odd_platform_answers_never_crash_a_request(
    db: Database, ez: Settings, services: Services, owner: Account, platform: FakeEzviz
) -> None:
    cameras = linked(services, owner)
    app = create_app(ez, db)
    with LiveServer(app) as live:
        token = google_token(live, db)
        front = cameras["SN001"].id
        platform.odd["/api/lapp/v2/live/address/get"] = None  # "200" without an address
        got = execute(live, token, [front])[front]
        # No answer is not a blocker: the last sync stands and the URL is camvoice's own...
        assert got["status"] == "SUCCESS"
        # ...and the playlist says plainly that the stream did not start.
        url = got["states"]["cameraStreamAccessUrl"].replace(ez.public_url, live.url)
        refused = requests.get(url, timeout=10)
        assert refused.status_code == 502 and refused.json()["error"] == "stream_unavailable"
    app.extensions["camvoice.relays"].shutdown()

    platform.odd["/api/lapp/device/info"] = ["not", "an", "object"]
    platform.odd["/api/lapp/device/list"] = "garbage"
    with pytest.raises(SyncFailed, match="incomplete"):  # nothing is removed
        sync_now(services, owner.id)
    assert len(cameras_of(db, owner)) == 3
    with db.session() as session:
        assert "incomplete" in (session.get(EzvizLink, owner.id).last_error or "")  # type: ignore[union-attr]


def test_unlinking_mid_sync_does_not_bring_cameras_back(
    db: Database, ez: Settings, services: Services, owner: Account, platform: FakeEzviz
) -> None:
    linked(services, owner)
    with db.session() as session:
        keys = Keys.load(session.get(EzvizLink, owner.id), ez)  # type: ignore[arg-type]
    client = Client(keys, ez.ezviz_api_url, ez.ezviz_timeout)
    read = {str(d["deviceSerial"]): read_device(client, d) for d in list_devices(client)}
    registry = services.registry
    with db.session() as session:
        assert unlink_account(session, registry, session.get(Account, owner.id), actor="t") == 3  # type: ignore[arg-type]
    with db.session() as session:
        assert apply_sync(session, registry, owner.id, APP_KEY, read) == SyncReport()
    assert cameras_of(db, owner) == {}


def test_no_transaction_is_open_while_the_platform_is_asked(
    db: Database, db_url: str, ez: Settings, services: Services, owner: Account,
    platform: FakeEzviz,
) -> None:  # fmt: skip
    """Sync, stream checks, the cloud playlist and owners' fixes all ask EZVIZ between
    transactions: a slow platform must never hold a database lock or connection."""
    seen: list[tuple[str, int]] = []
    for host in (platform.region, platform.global_host):
        host.observers.append(lambda path: seen.append((path, open_transactions(db_url))))
    cameras = linked(services, owner)
    app = create_app(ez, db)
    with LiveServer(app) as live:
        token = google_token(live, db)
        front = execute(live, token, [cameras["SN001"].id])[cameras["SN001"].id]
        local = front["states"]["cameraStreamAccessUrl"].replace(ez.public_url, live.url)
        assert requests.get(local, timeout=10).status_code == 200
        wiring(app).registry.change(
            db, cameras["SN002"].id, {"image_encryption": False}, actor="o", code="ABCDEF"
        )
    app.extensions["camvoice.relays"].shutdown()
    asked = {path.split("?")[0] for path, _ in seen}
    assert {"/api/lapp/token/get", "/api/lapp/device/list", "/api/lapp/v2/live/address/get",
            "/api/lapp/device/encrypt/off"} <= asked  # fmt: skip
    assert [(path, n) for path, n in seen if n] == []
