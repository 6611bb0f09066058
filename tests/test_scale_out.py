"""Scale-out: two gunicorn instances and two workers on one PostgreSQL and one Redis.

Runs real `camvoice serve` and `camvoice worker` processes. Needs PostgreSQL and Redis on
127.0.0.1; CI (CAMVOICE_REQUIRE_POSTGRES / CAMVOICE_REQUIRE_REDIS) makes their absence a failure.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from sqlalchemy import select

from backends.local import LocalBackend
from camvoice.cameras import Registry
from camvoice.db import Database
from camvoice.models import Camera, OutboxEvent
from camvoice.outbox import Outbox
from service.demo import DEMO_EMAIL, DEMO_PASSWORD, seed
from tests.conftest import (
    VENV_BIN,
    _pg_url,
    drop_pg_database,
    free_port,
    new_pg_database,
)
from tests.fake_amazon import CLIENT_ID, CLIENT_SECRET, FakeAmazon
from tests.oauth_support import ALEXA_URIS, Browser, link, register, token_request

pytestmark = pytest.mark.postgres
REDIS_URL = os.environ.get("CAMVOICE_TEST_REDIS", "redis://127.0.0.1:6379/0")
FORWARDER = "scale-out-forwarder-secret-0123456789"


def local_registry(box: Outbox | None = None) -> Registry:
    """A registry in this test process: local cameras, and only the subscribers `box` has."""
    registry = Registry(box if box is not None else Outbox())
    registry.register(LocalBackend())
    return registry


class Instance:
    """A `camvoice serve` (or `worker`) process, addressed like LiveServer."""

    def __init__(
        self, args: list[str], env: dict[str, str], port: int | None = None, log: Path | None = None
    ) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}" if port else ""
        self.log = log  # gunicorn's own log (its stderr), when asked for
        with open(log or os.devnull, "wb") as stderr:
            self.process = subprocess.Popen([str(VENV_BIN / "camvoice"), *args], env=env,
                                            stdout=subprocess.DEVNULL, stderr=stderr)  # fmt: skip

    def wait_ready(self) -> None:
        # Generous: gunicorn and two workers importing the app take long on a loaded machine.
        deadline = time.monotonic() + 120
        last = "no answer"
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"{self.url} exited\n{self.log_tail()}"
            try:
                ready = requests.get(self.url + "/readyz", timeout=5)
                if ready.ok:
                    assert ready.json()["redis"] == "ok"
                    return
                last = f"{ready.status_code} {ready.text[:200]}"
            except (requests.ConnectionError, requests.Timeout) as exc:
                last = type(exc).__name__
            time.sleep(0.2)
        raise AssertionError(f"{self.url} never became ready ({last})\n{self.log_tail()}")

    def log_tail(self) -> str:
        return self.log.read_text()[-2000:] if self.log else ""

    def get(self, path: str, **kw: Any) -> requests.Response:
        return requests.get(self.url + path, timeout=10, **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        return requests.post(self.url + path, timeout=10, **kw)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(20)


@pytest.fixture
def cluster(pg_template: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError:
        if os.environ.get("CAMVOICE_REQUIRE_REDIS") == "1":
            pytest.fail(f"Redis unreachable at {REDIS_URL} and CAMVOICE_REQUIRE_REDIS=1")
        pytest.skip(f"Redis unreachable at {REDIS_URL}")
    name = new_pg_database(pg_template)
    url = _pg_url(name).replace("postgresql://", "postgresql+psycopg://")
    amazon = FakeAmazon()
    env = {
        **os.environ,
        "CAMVOICE_DATABASE_URL": url,
        "CAMVOICE_REDIS_URL": REDIS_URL,
        "CAMVOICE_SECRET_KEY": "shared-secret-key-" + uuid.uuid4().hex,
        "CAMVOICE_DATA_DIR": str(tmp_path / "data"),
        "CAMVOICE_ALEXA_FORWARDER_SECRET": FORWARDER,
        "CAMVOICE_ALEXA_CLIENT_ID": CLIENT_ID,
        "CAMVOICE_ALEXA_CLIENT_SECRET": CLIENT_SECRET,
        "CAMVOICE_ALEXA_LWA_TOKEN_URL": amazon.url + "/auth/o2/token",
        "CAMVOICE_ALEXA_EVENT_GATEWAY_URL": amazon.url + "/v3/events",
        "CAMVOICE_WORKER_POLL_INTERVAL": "0.2",
        "CAMVOICE_LOGIN_MAX_FAILURES_ACCOUNT": "5",
    }
    db = Database(url)
    with db.session() as session:
        seed(session, local_registry())
    a = Instance(["serve", "--port", str(port_a := free_port()), "--workers", "2"], env, port_a,
                 log=tmp_path / "a.log")  # fmt: skip
    b = Instance(["serve", "--port", str(port_b := free_port()), "--workers", "2"], env, port_b,
                 log=tmp_path / "b.log")  # fmt: skip
    a.wait_ready()
    b.wait_ready()
    yield {"a": a, "b": b, "db": db, "env": env, "amazon": amazon}
    for instance in (a, b):
        instance.stop()
    amazon.close()
    db.dispose()
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter("camvoice:limit:*"):
        client.delete(key)
    drop_pg_database(name)


def directive(
    live: Instance, token: str, namespace: str, name: str, **extra: Any
) -> dict[str, Any]:
    body = json.dumps({"directive": {
        "header": {"namespace": namespace, "name": name, "payloadVersion": "3",
                   "messageId": str(uuid.uuid4()), "correlationToken": "c"},
        **extra}}).encode()  # fmt: skip
    ts = str(int(time.time()))
    sig = hmac.new(FORWARDER.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    reply = live.post("/alexa/smart-home", data=body,
                      headers={"X-Camvoice-Timestamp": ts, "X-Camvoice-Signature": sig})  # fmt: skip
    assert reply.status_code == 200
    return reply.json()  # type: ignore[no-any-return]


def pending(db: Database) -> int:
    with db.session() as session:
        return len(
            session.scalars(select(OutboxEvent).where(OutboxEvent.status == "pending")).all()
        )


def discover(live: Instance, token: str) -> dict[str, str]:
    answer = directive(live, token, "Alexa.Discovery", "Discover",
                       payload={"scope": {"type": "BearerToken", "token": token}})  # fmt: skip
    return {e["friendlyName"]: e["endpointId"] for e in answer["event"]["payload"]["endpoints"]}


def test_two_instances_share_everything(cluster: dict[str, Any]) -> None:
    a, b, db = cluster["a"], cluster["b"], cluster["db"]
    client = register(db, "Amazon Alexa", ALEXA_URIS, "alexa")

    # Linked through A, used at B.
    _, token = link(a, client, DEMO_EMAIL, password=DEMO_PASSWORD)  # type: ignore[arg-type]
    cameras = discover(b, token["access_token"])
    assert "Front Door" in cameras

    # Refresh at B twice (r1 -> r2 -> r3): r1 is now superseded, and A refuses it.
    r2 = token_request(
        b, client, grant_type="refresh_token", refresh_token=token["refresh_token"]
    ).json()  # type: ignore[arg-type]
    r3 = token_request(b, client, grant_type="refresh_token", refresh_token=r2["refresh_token"])  # type: ignore[arg-type]
    assert r3.status_code == 200
    old = token_request(a, client, grant_type="refresh_token", refresh_token=token["refresh_token"])  # type: ignore[arg-type]
    assert (old.status_code, old.json()["error"]) == (400, "invalid_grant")

    # Sign-in failures counted across both instances hit the limit (5 per account).
    for instance in (a, b, a, b, a):
        browser = Browser(instance)  # type: ignore[arg-type]
        page = browser.http.get(instance.url + "/oauth/login", timeout=10)
        assert browser.sign_in(page, DEMO_EMAIL, "wrong password").status_code == 401
    browser = Browser(b)  # type: ignore[arg-type]
    page = browser.http.get(b.url + "/oauth/login", timeout=10)
    assert browser.sign_in(page, DEMO_EMAIL, DEMO_PASSWORD).status_code == 429


def test_camera_change_and_outbox_across_instances_and_workers(cluster: dict[str, Any]) -> None:
    a, b, db, env, amazon = (
        cluster["a"],
        cluster["b"],
        cluster["db"],
        cluster["env"],
        cluster["amazon"],
    )
    client = register(db, "Amazon Alexa", ALEXA_URIS, "alexa")
    _, token = link(a, client, DEMO_EMAIL, password=DEMO_PASSWORD)  # type: ignore[arg-type]
    access = token["access_token"]
    granted = directive(a, access, "Alexa.Authorization", "AcceptGrant", payload={
        "grant": {"type": "OAuth2.AuthorizationCode", "code": amazon.new_code()},
        "grantee": {"type": "BearerToken", "token": access}})  # fmt: skip
    assert granted["event"]["header"]["name"] == "AcceptGrant.Response"

    # A camera change made through A's process shows in Discovery at B, which kept the answer
    # from before (each of B's workers answers the same owner twice first).
    front = discover(a, access)["Front Door"]
    for _ in range(4):
        assert "Front Door" in discover(b, access)
    subprocess.run([str(VENV_BIN / "camvoice"), "cameras", "set", front, "--name", "Front Porch"],
                   env=env, check=True, capture_output=True)  # fmt: skip
    assert "Front Porch" in discover(b, access)

    # Many changes, two workers, one of them stopped halfway: every event arrives exactly once.
    box = Outbox()
    for topic in ("camera.added", "camera.removed", "camera.changed"):
        box.subscribe(topic, "alexa.events", lambda t, p: None)  # names only: workers deliver
    registry = local_registry(box)
    with db.session() as session:
        cameras = session.query(Camera).all()
        for round_ in range(10):
            for camera in cameras:
                registry.record(session, camera, {"online": round_ % 2 == 0}, actor="test")
    queued = pending(db)
    workers = [Instance(["worker"], env) for _ in range(2)]
    wait_until(lambda: pending(db) < queued, 120, "the workers to start delivering")
    workers[0].stop()  # graceful: finishes the event in hand, leaves the rest to the other
    deadline = time.monotonic() + 90
    while pending(db) and time.monotonic() < deadline:
        time.sleep(0.5)
    workers[1].stop()
    assert pending(db) == 0
    with db.session() as session:
        online_changes = [
            e
            for e in session.scalars(
                select(OutboxEvent).where(OutboxEvent.topic == "camera.changed")
            )
            if "online" in e.payload["changed"]
        ]
        assert {e.status for e in session.scalars(select(OutboxEvent))} == {"delivered"}
    ids = [e["event"]["header"]["messageId"] for e in amazon.events]
    assert len(ids) == len(set(ids))
    changes = [e for e in amazon.events if e["event"]["header"]["name"] == "ChangeReport"]
    assert len(changes) == len(online_changes) > 40  # each delivered once, none lost
    assert amazon.problems == []


def wait_until(condition: Callable[[], object], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def unread_bytes(server_port: int, client_port: int) -> int | None:
    """Bytes the server has not read yet on the connection from `client_port` (/proc/net/tcp),
    or None while the kernel shows no such established connection."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if (state == "01" and int(local.split(":")[1], 16) == server_port
                and int(remote.split(":")[1], 16) == client_port):  # fmt: skip
            return int(fields[4].split(":")[1], 16)
    return None


def test_stopping_an_instance_answers_every_request_it_accepted(cluster: dict[str, Any]) -> None:
    """SIGTERM to one of two instances under load (gunicorn's graceful stop, graceful_timeout
    10 s): a request it had accepted is still answered, every answer from either instance is a
    200 "ok", the other instance never fails one, and the stopping one fails only at the
    connection, only once it is being stopped (refused, or reset while waiting in the listen
    backlog: never processed, so a load balancer may retry it elsewhere)."""
    a, b = cluster["a"], cluster["b"]
    # (instance, started, ended, HTTP status or None for a connection error, answer is "ok")
    outcomes: list[tuple[str, float, float, int | None, bool]] = []
    unexpected: list[str] = []  # a timeout or a garbled answer: a request lost, not refused
    stop = threading.Event()

    def load(instance: Instance) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                reply = instance.get("/readyz")
                ok = reply.status_code == 200 and reply.json().get("status") == "ok"
                outcomes.append((instance.url, started, time.monotonic(), reply.status_code, ok))
            except requests.ConnectionError:
                outcomes.append((instance.url, started, time.monotonic(), None, False))
                time.sleep(0.05)  # pace retries against a closed port
            except Exception as exc:
                unexpected.append(f"{instance.url}: {exc!r}")

    def answered(instance: Instance, after: float = 0.0) -> int:
        return sum(1 for url, start, _, code, _ in outcomes if url == instance.url and
                   code is not None and start > after)  # fmt: skip

    threads = [threading.Thread(target=load, args=(i,)) for i in (a, b, a, b)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: answered(a) >= 10 and answered(b) >= 10, 30, "both instances to answer")

        # A request B has accepted and is reading when the stop comes: its headers arrive in two
        # parts, and the second part is sent only once B's arbiter has begun to stop.
        held = socket.create_connection(("127.0.0.1", b.port), timeout=30)
        held.sendall(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        client_port = held.getsockname()[1]
        wait_until(lambda: unread_bytes(b.port, client_port) == 0, 30, "B to read the request")

        stopped_at = time.monotonic()
        b.process.send_signal(signal.SIGTERM)
        wait_until(lambda: "Handling signal: term" in b.log.read_text(), 30, "B to stop")
        held.sendall(b"Connection: close\r\n\r\n")
        reply = http.client.HTTPResponse(held, method="GET")
        reply.begin()
        in_flight = (reply.status, json.loads(reply.read())["status"])
        held.close()

        assert b.process.wait(30) == 0
        exited_at = time.monotonic()
        wait_until(lambda: answered(a, after=exited_at) >= 10, 30, "A to answer after B left")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not any(t.is_alive() for t in threads)

    assert in_flight == (200, "ok")  # accepted before the stop: answered, not dropped
    assert unexpected == []
    assert all(code == 200 and ok for _, _, _, code, ok in outcomes if code is not None)
    assert [o for o in outcomes if o[0] == a.url and o[3] is None] == []  # A failed none
    refused = [o for o in outcomes if o[0] == b.url and o[3] is None]
    assert [o for o in refused if o[2] < stopped_at] == []  # B failed none before its stop


def test_redis_limiter_counts_and_forgives() -> None:
    from datetime import timedelta

    from camvoice.ratelimit import RedisLimiter

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        if os.environ.get("CAMVOICE_REQUIRE_REDIS") == "1":
            pytest.fail(f"Redis unreachable at {REDIS_URL} and CAMVOICE_REQUIRE_REDIS=1")
        pytest.skip(f"Redis unreachable at {REDIS_URL}")
    limiter, key, window = RedisLimiter(client), f"test:{uuid.uuid4().hex}", timedelta(seconds=60)
    try:
        for _ in range(3):
            limiter.record_failure(key, window)
        assert limiter.retry_after(key, 3, window) is not None
        limiter.forgive(key)
        assert limiter.retry_after(key, 3, window) is None
        client.delete(RedisLimiter.PREFIX + key)
        limiter.forgive(key)  # nothing counted (expired): must not go negative
        assert client.get(RedisLimiter.PREFIX + key) is None
    finally:
        client.delete(RedisLimiter.PREFIX + key)
