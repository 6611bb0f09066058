"""Faults survived, with real processes: a private PostgreSQL restarted under load, a private
Redis stopped, Amazon's and Google's gateways failing, throttling and slow, and the camera cloud
down. Each fault must cost nothing but a retry: no 500, nothing lost.

The private servers run on their own free ports (never the shared ones on 5432 and 6379), from
the Debian binaries; as root (CI), PostgreSQL runs as the `postgres` OS user, since initdb and
postgres refuse root.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from pydantic import SecretStr
from sqlalchemy import select, update

from backends.ezviz.models import EzvizLink
from backends.ezviz.sync import link_account, sync_due, sync_now
from backends.local import LocalBackend
from camvoice import outbox
from camvoice.cameras import Registry
from camvoice.db import Database, unavailable
from camvoice.models import Account, Camera, OutboxEvent, utcnow
from camvoice.outbox import Outbox
from camvoice.ratelimit import RateLimit
from camvoice.settings import Settings
from fulfillment.homegraph import HomeGraph
from service.app import create_app
from service.demo import DEMO_EMAIL, DEMO_PASSWORD, seed
from service.wiring import build_services
from skills import events
from tests.conftest import REQUIRE_PG, VENV_BIN, LiveServer, free_port, run_cli, wait_for
from tests.fake_amazon import CLIENT_ID, CLIENT_SECRET, FakeAmazon
from tests.fake_ezviz import FakeEzviz
from tests.fake_google import FakeGoogle
from tests.oauth_support import (
    ALEXA_URIS,
    GOOGLE_URIS,
    PASSWORD,
    Browser,
    csrf_of,
    link,
    make_owner,
    register,
    token_request,
)
from tests.test_outbox import alexa_services, change_reports, linked_camera, toggle_online

FORWARDER = "faults-forwarder-secret-0123456789abcdef"
DEADLINE = 60.0


# --- private servers ------------------------------------------------------------------------


class PrivatePostgres:
    """A PostgreSQL cluster of its own in a temporary folder, on a free port."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="camvoice-pg-"))  # under /tmp: postgres can reach
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self.data = self.root / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self.run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                 "--no-sync", "--no-instructions")  # fmt: skip

    def run(self, tool: str, *args: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self.as_postgres else []
        result = subprocess.run([*prefix, str(self.bindir / tool), *args], capture_output=True,
                                text=True, timeout=60, check=False)  # fmt: skip
        assert result.returncode == 0, f"{tool} failed: {result.stdout}{result.stderr}"

    def start(self) -> None:
        """Start and wait until it accepts connections."""
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c full_page_writes=off")  # fmt: skip
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-o", options,
                 "-w", "-t", "60", "start")  # fmt: skip

    def stop(self) -> None:
        """A fast shutdown: open sessions are ended, as in a restart or a failover."""
        self.run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    bindirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    if not bindirs or (os.geteuid() == 0 and shutil.which("runuser") is None):
        if REQUIRE_PG:
            pytest.fail("PostgreSQL server binaries missing and CAMVOICE_REQUIRE_POSTGRES=1")
        pytest.skip("PostgreSQL server binaries not installed (/usr/lib/postgresql/*/bin)")
    server = PrivatePostgres(bindirs[-1])
    try:
        server.start()
        yield server
    finally:
        server.remove()


class PrivateRedis:
    """A redis-server of its own on a free port, without persistence."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.folder = folder
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        wait_for(lambda: self._pings(client), "redis-server to start", 20)

    @staticmethod
    def _pings(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(20)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        if os.environ.get("CAMVOICE_REQUIRE_REDIS") == "1":
            pytest.fail("redis-server missing and CAMVOICE_REQUIRE_REDIS=1")
        pytest.skip("redis-server not installed")
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


# --- helpers ----------------------------------------------------------------------------------


def signed_directive(url: str, token: str, namespace: str, name: str,
                     **extra: Any) -> requests.Response:  # fmt: skip
    """An Alexa directive as the Lambda forwarder posts it."""
    body = json.dumps({"directive": {
        "header": {"namespace": namespace, "name": name, "payloadVersion": "3",
                   "messageId": str(uuid.uuid4()), "correlationToken": "c"},
        **extra}}).encode()  # fmt: skip
    ts = str(int(time.time()))
    sig = hmac.new(FORWARDER.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return requests.post(url + "/alexa/smart-home", data=body, timeout=10,
                         headers={"X-Camvoice-Timestamp": ts, "X-Camvoice-Signature": sig})  # fmt: skip


def discover(url: str, token: str) -> requests.Response:
    return signed_directive(url, token, "Alexa.Discovery", "Discover",
                            payload={"scope": {"type": "BearerToken", "token": token}})  # fmt: skip


class Serve:
    """`camvoice serve` under gunicorn, as production runs it."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with open(log, "wb") as stderr:
            self.process = subprocess.Popen(
                [str(VENV_BIN / "camvoice"), "serve", "--port", str(self.port), "--workers", "1"],
                env=env, stdout=subprocess.DEVNULL, stderr=stderr,
            )  # fmt: skip

    def ready(self) -> bool:
        assert self.process.poll() is None, self.log.read_text()[-2000:]
        try:
            return requests.get(self.url + "/readyz", timeout=5).ok
        except requests.RequestException:
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(20)


def change_report_ids(db: Database) -> set[str]:
    """The messageId each camera.changed event of "online" must have sent (one per event)."""
    with db.reading() as session:
        events = session.scalars(select(OutboxEvent).where(OutboxEvent.topic == "camera.changed"))
        return {str(uuid.uuid5(uuid.UUID(outbox.event_key(e)), "Alexa.ChangeReport"))
                for e in events if "online" in e.payload["changed"]}  # fmt: skip


def statuses(db: Database) -> dict[str, int]:
    with db.reading() as session:
        found: dict[str, int] = {}
        for status in session.scalars(select(OutboxEvent.status)):
            found[status] = found.get(status, 0) + 1
        return found


# --- PostgreSQL restarted mid-load -------------------------------------------------------------


@pytest.mark.postgres
def test_postgres_restart_mid_load(private_postgres: PrivatePostgres, tmp_path: Path) -> None:
    """Directives, token refreshes and camera changes run while PostgreSQL stops and starts:
    every answer is 200 or 503 with Retry-After (none 500); service is back within 5 s of the
    restart; the worker delivers every event that was committed, none lost."""
    db = Database(private_postgres.url)
    db.upgrade()
    box = Outbox()  # the test's own changes write rows for the worker's Alexa subscriber
    box.subscribe("camera.changed", "alexa.events", lambda t, p: None)
    registry = Registry(box)
    registry.register(LocalBackend())
    with db.session() as session:
        seed(session, Registry(Outbox()))
    amazon = FakeAmazon()
    env = {
        **os.environ,
        "CAMVOICE_DATABASE_URL": private_postgres.url,
        "CAMVOICE_SECRET_KEY": "faults-secret-key-" + uuid.uuid4().hex,
        "CAMVOICE_DATA_DIR": str(tmp_path / "data"),
        "CAMVOICE_ALEXA_FORWARDER_SECRET": FORWARDER,
        "CAMVOICE_ALEXA_CLIENT_ID": CLIENT_ID,
        "CAMVOICE_ALEXA_CLIENT_SECRET": CLIENT_SECRET,
        "CAMVOICE_ALEXA_LWA_TOKEN_URL": amazon.url + "/auth/o2/token",
        "CAMVOICE_ALEXA_EVENT_GATEWAY_URL": amazon.url + "/v3/events",
        "CAMVOICE_WORKER_POLL_INTERVAL": "0.1",
    }
    serve = Serve(env, tmp_path / "serve.log")
    with open(tmp_path / "worker.log", "wb") as log:
        worker = subprocess.Popen([str(VENV_BIN / "camvoice"), "worker"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=log)  # fmt: skip
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        wait_for(serve.ready, "camvoice serve to be ready", 120)
        client = register(db, "Amazon Alexa", ALEXA_URIS, "alexa")
        _, token = link(serve, client, DEMO_EMAIL, password=DEMO_PASSWORD)  # type: ignore[arg-type]
        access = token["access_token"]
        grant = signed_directive(serve.url, access, "Alexa.Authorization", "AcceptGrant", payload={
            "grant": {"type": "OAuth2.AuthorizationCode", "code": amazon.new_code()},
            "grantee": {"type": "BearerToken", "token": access}})  # fmt: skip
        assert grant.json()["event"]["header"]["name"] == "AcceptGrant.Response"

        answers: list[tuple[str, float, requests.Response]] = []
        unexpected: list[str] = []

        def keep(kind: str, call: Callable[[], requests.Response]) -> None:
            while not stop.is_set():
                try:
                    answers.append((kind, time.monotonic(), call()))
                except requests.RequestException as exc:  # a lost connection is a failure too
                    unexpected.append(f"{kind}: {exc!r}")
                stop.wait(0.02)  # pacing the load, not waiting for anything

        refresh = {"token": token["refresh_token"]}

        def refresh_once() -> requests.Response:
            reply = token_request(serve, client, grant_type="refresh_token",  # type: ignore[arg-type]
                                  refresh_token=refresh["token"])  # fmt: skip
            if reply.status_code == 200:
                refresh["token"] = reply.json()["refresh_token"]
            return reply

        def change_cameras() -> None:
            flip = False
            while not stop.is_set():
                flip = not flip
                try:
                    with db.session() as session:
                        for camera in session.scalars(select(Camera)):
                            registry.record(session, camera, {"online": flip}, actor="test")
                except Exception as exc:  # the database is away: this change never committed
                    if not unavailable(exc):
                        raise
                stop.wait(0.05)

        threads = [
            threading.Thread(target=keep, args=("alexa", lambda: discover(serve.url, access))),
            threading.Thread(target=keep, args=("oauth", refresh_once)),
            threading.Thread(target=change_cameras),
        ]
        for thread in threads:
            thread.start()

        def seen(kind: str, status: int, after: float = 0.0) -> int:
            return sum(1 for k, at, r in answers
                       if k == kind and r.status_code == status and at > after)  # fmt: skip

        def failed() -> list[str]:
            return [f"{kind} {reply.status_code} {reply.text[:200]}" for kind, _, reply in answers
                    if reply.status_code not in (200, 503) or (kind == "alexa" and
                    reply.status_code == 200 and "Discover.Response" not in reply.text)]  # fmt: skip

        def load_ran(alexa: int, oauth: int, status: int = 200, after: float = 0.0) -> bool:
            assert failed() == []
            return seen("alexa", status, after) >= alexa and seen("oauth", status, after) >= oauth

        wait_for(lambda: load_ran(5, 3), "load to run")
        wait_for(lambda: len(change_report_ids(db)) >= 10, "camera changes to be published")
        # One delivery is held at the gateway while PostgreSQL stops: its outcome must be
        # recorded once the database is back, not left leased to nobody for the whole lease.
        held, release = threading.Event(), threading.Event()

        def hold_one() -> None:
            if not held.is_set():
                held.set()
                release.wait(DEADLINE)

        amazon.gateway_hold = hold_one
        wait_for(held.is_set, "a delivery to reach the gateway")
        private_postgres.stop()
        release.set()
        wait_for(lambda: load_ran(3, 3, status=503), "requests to meet the outage")
        private_postgres.start()
        restarted = time.monotonic()
        wait_for(lambda: discover(serve.url, access).status_code == 200,
                   "service to recover within 5 s of the restart", seconds=5)  # fmt: skip
        wait_for(lambda: load_ran(3, 3, after=restarted), "load to go on after the restart")
        stop.set()
        for thread in threads:
            thread.join(30)
        wait_for(lambda: statuses(db).keys() == {"delivered"}, "the worker to deliver all")
    finally:
        stop.set()
        amazon.gateway_hold = lambda: None
        for thread in threads:
            thread.join(30)
        worker.terminate()
        worker.wait(20)
        serve.stop()
        amazon.close()
        db.dispose()

    assert unexpected == [] and failed() == []
    for kind, _, reply in answers:
        if reply.status_code == 503:
            assert reply.headers.get("Retry-After") == "5"
            error = reply.json()["error"]
            assert error == (
                "temporarily_unavailable" if kind == "oauth" else "service_unavailable"
            )
    sent = {m["event"]["header"]["messageId"] for m in amazon.events
            if m["event"]["header"]["name"] == "ChangeReport"}  # fmt: skip
    assert change_report_ids(db) <= sent  # every committed change reached Amazon
    assert amazon.problems == []


# --- Redis stopped -----------------------------------------------------------------------------


def test_redis_stopped_rate_limits_fall_back_to_the_database(
    settings: Settings, db: Database, private_redis: PrivateRedis
) -> None:
    """With Redis gone, sign-in failures are counted in the database (still limited, across
    instances), never a 500; /readyz stays ready and says Redis is unreachable."""
    email = f"redis-{uuid.uuid4().hex[:8]}@example.com"
    make_owner(db, email)
    app = create_app(settings.model_copy(update={"redis_url": SecretStr(private_redis.url)}), db)
    with LiveServer(app) as live:

        def sign_in(password: str) -> int:
            browser = Browser(live)
            return browser.sign_in(
                browser.open(live.url + "/oauth/login"), email, password
            ).status_code

        assert sign_in("wrong password") == 401
        keys = redis.Redis.from_url(private_redis.url).keys("camvoice:limit:*")
        assert keys  # counted in Redis while it runs
        private_redis.stop()
        ready = live.get("/readyz")
        assert (ready.status_code, ready.json()["redis"]) == (200, "unreachable")
        codes: list[int] = []
        while 429 not in codes:  # whatever the policy's numbers, the limit is still enforced
            assert len(codes) <= 2 * settings.login_max_failures_account, codes
            codes.append(sign_in("wrong password"))
        assert set(codes) == {401, 429}
    with db.reading() as session:
        counted = session.scalars(select(RateLimit).where(RateLimit.key.contains(email))).all()
        assert counted and max(row.count for row in counted) >= 2  # counted in the database


# --- Amazon's event gateway and HomeGraph failing, throttling, slow ----------------------------


@pytest.fixture
def amazon() -> Iterator[FakeAmazon]:
    fake = FakeAmazon()
    yield fake
    fake.close()


def attempt(db: Database, box: Outbox, max_attempts: int) -> tuple[OutboxEvent, timedelta]:
    """Make the one event due, let a worker try it once; the row after, and its wait."""
    with db.session() as session:
        session.execute(update(OutboxEvent).values(next_attempt_at=utcnow() - timedelta(seconds=1)))
    assert outbox.drain_once(db, box, max_attempts) == 1
    with db.reading() as session:
        row = session.scalars(
            select(OutboxEvent).where(OutboxEvent.topic == "camera.changed")
        ).one()
    return row, row.next_attempt_at - utcnow()


def test_alexa_gateway_500_429_and_slow_cost_retries_not_events(
    db: Database, settings: Settings, amazon: FakeAmazon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ChangeReport meets a 500, a 429 asking for two minutes, a 503, and a reply slower than
    the timeout: each is retried with backoff (the 429 after its Retry-After), the event stays
    pending until its last attempt, which delivers it, and every send carried one messageId."""
    services = alexa_services(settings, db, amazon)
    toggle_online(services, linked_camera(services, amazon), 1)
    box, last = services.outbox, 5
    amazon.gateway_faults = [(500, {}), (429, {"Retry-After": "120"}), (503, {})]
    waits = []
    for tries in (1, 2, 3):
        row, wait = attempt(db, box, last)
        assert (row.status, row.attempts) == ("pending", tries)
        waits.append(wait.total_seconds())
    assert 0.5 < waits[0] <= 2  # backoff(1): 1 to 2 s
    assert 115 < waits[1] <= 120  # Retry-After, though backoff(2) is at most 4 s
    assert 3.5 < waits[2] <= 8  # backoff(3) again: 4 to 8 s
    # Slower than the worker waits: Amazon takes it, the worker cannot know, and retries.
    monkeypatch.setattr(events, "GATEWAY_TIMEOUT", 0.5)
    amazon.gateway_hold = lambda: time.sleep(1.5)
    row, _ = attempt(db, box, last)
    assert (row.status, row.attempts) == ("pending", 4) and "Timeout" in (row.last_error or "")
    wait_for(lambda: len(change_reports(amazon)) == 1, "the slow gateway to take it")
    # Slow, but in time, on the last attempt allowed: delivered, not dead.
    monkeypatch.undo()
    amazon.gateway_hold = lambda: time.sleep(0.3)
    row, _ = attempt(db, box, last)
    assert (row.status, row.attempts) == ("delivered", last)
    assert change_reports(amazon) == [next(iter(change_report_ids(db)))] * 2
    assert amazon.problems == []


def test_homegraph_500_429_and_slow_cost_retries_not_events(db: Database, tmp_path: Path) -> None:
    """reportState meets a 500 and a 429 whose Retry-After is an HTTP date, then a slow
    HomeGraph: retried with backoff and the asked-for wait, delivered once it answers."""
    google = FakeGoogle()
    try:
        client = HomeGraph(google.key_file(tmp_path), google.url)
        box = Outbox()
        box.subscribe("camera.changed", "homegraph", lambda topic, payload: client.report_state(
            "owner-1", {payload["camera_id"]: {"online": payload["online"]}}))  # fmt: skip
        with db.session() as session:
            box.publish(session, "camera.changed", {"camera_id": "cam-1", "online": False})
        when = format_datetime(utcnow() + timedelta(seconds=90), usegmt=True)
        google.faults = [(500, {}), (429, {"Retry-After": when})]
        row, wait = attempt(db, box, 3)
        assert (row.status, wait <= timedelta(seconds=2)) == ("pending", True)
        row, wait = attempt(db, box, 3)
        assert row.status == "pending" and timedelta(seconds=85) < wait <= timedelta(seconds=91)
        google.http.observers.append(lambda path: time.sleep(0.3))
        row, _ = attempt(db, box, 3)
        assert (row.status, row.attempts) == ("delivered", 3)
        assert [path for path, _ in google.calls] == ["/v1/devices:reportStateAndNotification"]
    finally:
        google.close()


# --- the camera cloud down ---------------------------------------------------------------------

APP_KEY, APP_SECRET = "f3b1c0de5a7e4c1b9d2e", "s3cr3t-" + uuid.uuid4().hex
OWNER = "cloud.owner@example.com"


def google_request(live: LiveServer, token: str, intent: str, payload: Any) -> requests.Response:
    body = {"requestId": "r1", "inputs": [{"intent": intent, "payload": payload}]}
    return requests.post(live.url + "/google/fulfillment", json=body, timeout=30,
                         headers={"Authorization": f"Bearer {token}"})  # fmt: skip


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the fault is the cloud's
def test_camera_cloud_down_the_last_sync_stands(
    db: Database, settings: Settings, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """EZVIZ refusing connections: assistants, the console, the sync CLI and the worker's sync
    answer from the last synced state, and none of them with a 5xx or a traceback."""
    platform = FakeEzviz(APP_KEY, APP_SECRET)
    platform.add("SN001", "Front Door")
    platform.add("SN002", "Garage", encrypt=True)
    ez = settings.model_copy(update={"ezviz_api_url": platform.url,
                                     "alexa_forwarder_secret": SecretStr(FORWARDER)})  # fmt: skip
    services = build_services(ez, db)
    make_owner(db, OWNER)
    with db.reading() as session:
        owner = session.scalars(select(Account).where(Account.email == OWNER)).one()
    link_account(services, owner, APP_KEY, APP_SECRET, actor="test")
    sync_now(services, owner.id)
    synced = cloud_cameras(db)
    assert set(synced) == {"SN001", "SN002"}
    for host in (platform.region, platform.global_host):  # down: connections refused
        host.close()
        host.server.server_close()

    app = create_app(ez, db)
    with LiveServer(app) as live:
        google = register(db, "Google Home", GOOGLE_URIS, "google")
        _, token = link(live, google, OWNER, "client_secret_post", PASSWORD)
        devices = google_request(live, token["access_token"], "action.devices.SYNC", {})
        assert devices.status_code == 200 and len(devices.json()["payload"]["devices"]) == 2
        front, garage = synced["SN001"]["id"], synced["SN002"]["id"]
        execute = google_request(live, token["access_token"], "action.devices.EXECUTE", {
            "commands": [{"devices": [{"id": front}, {"id": garage}], "execution": [{
                "command": "action.devices.commands.GetCameraStream",
                "params": {"StreamToChromecast": True, "SupportedStreamProtocols": ["hls"]}}]}]})  # fmt: skip
        assert execute.status_code == 200
        results = {c["ids"][0]: c for c in execute.json()["payload"]["commands"]}
        assert results[front]["status"] == "SUCCESS"  # the cloud unasked: the last sync stands
        assert results[garage]["status"] == "ERROR"  # still encrypted, as last synced

        alexa = register(db, "Amazon Alexa", ALEXA_URIS, "alexa")
        _, alexa_token = link(live, alexa, OWNER, password=PASSWORD)
        found = discover(live.url, alexa_token["access_token"])
        assert found.status_code == 200
        assert len(found.json()["event"]["payload"]["endpoints"]) == 2

        browser = Browser(live)
        browser.sign_in(browser.http.get(live.url + "/console", timeout=10), OWNER, PASSWORD)
        page = browser.http.get(live.url + "/console", timeout=10)
        assert page.status_code == 200 and 'data-camera="Garage"' in page.text
        fix = browser.http.post(f"{live.url}/console/cameras/{garage}/fix", timeout=30, data={
            "csrf_token": csrf_of(page.text), "fix": "encryption", "confirm": "yes",
            "code": "ABCDEF"})  # fmt: skip
        assert fix.status_code == 400 and "EZVIZ did not make the change" in fix.text
    app.extensions["camvoice.relays"].shutdown()

    cli = run_cli("backends", "sync", "--owner", OWNER, check=False,
                  env={**cli_env, "CAMVOICE_EZVIZ_API_URL": platform.url})  # fmt: skip
    assert cli.returncode == 2 and "sync failed" in cli.stderr and "Traceback" not in cli.stderr
    with db.session() as session:  # the worker's turn comes: it fails, keeps the cameras
        session.execute(update(EzvizLink).values(next_sync_at=utcnow() - timedelta(seconds=1)))
    assert sync_due(services) == 1
    with db.reading() as session:
        kept = session.get(EzvizLink, owner.id)
        assert kept is not None and kept.failures == 2 and kept.last_error
    assert cloud_cameras(db) == synced


def cloud_cameras(db: Database) -> dict[str | None, dict[str, Any]]:
    """The EZVIZ cameras as synced: what the readiness rules read."""
    with db.reading() as session:
        cameras = session.scalars(select(Camera).where(Camera.backend == "ezviz"))
        return {c.serial: {"id": c.id, "name": c.name, "online": c.online,
                           "image_encryption": c.image_encryption, "audio": c.audio,
                           "sleep_mode": c.sleep_mode} for c in cameras}  # fmt: skip
