"""The outbox on SQLite and PostgreSQL: delivery, retries with backoff, dead letters, leases,
and two workers draining one outbox without delivering anything twice.

Delivery is at least once; these tests hold what keeps repeats out in practice: a lease per
event that outlasts the slowest delivery, a write-back fenced by the lease's owner and token, a
stopped worker that finishes only the event in hand, and message ids that stay the same when an
event is delivered again."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from pydantic import SecretStr
from sqlalchemy import select, update

from camvoice import outbox
from camvoice.accounts import create_account
from camvoice.db import Database
from camvoice.models import Camera, OutboxEvent, utcnow
from camvoice.outbox import Outbox
from camvoice.services import Services
from camvoice.settings import Settings
from fulfillment.homegraph import HomeGraph
from service.wiring import build_services
from skills.events import accept_grant
from tests.conftest import wait_for
from tests.fake_amazon import CLIENT_ID, CLIENT_SECRET, FakeAmazon
from tests.fake_google import FakeGoogle


class Receiver:
    """An HTTP endpoint on 127.0.0.1 that counts what it is sent."""

    def __init__(self) -> None:
        self.received: Counter[int] = Counter()
        lock = threading.Lock()
        received = self.received

        class Handle(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    received[body["n"]] += 1
                self.send_response(202)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handle)
        self.url = f"http://127.0.0.1:{self.server.server_port}/events"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def box() -> Outbox:
    """A bare outbox with no subscribers; each test subscribes what it needs."""
    return Outbox()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


def publish_many(db: Database, box: Outbox, topic: str, n: int) -> None:
    with db.session() as session:
        for i in range(n):
            box.publish(session, topic, {"n": i})


def statuses(db: Database) -> Counter[str]:
    with db.session() as session:
        return Counter(session.scalars(select(OutboxEvent.status)))


def test_publish_without_subscribers_writes_nothing(db: Database, box: Outbox) -> None:
    publish_many(db, box, "camera.changed", 3)
    assert statuses(db) == Counter()


def test_two_workers_deliver_each_event_once(
    db: Database, db_url: str, box: Outbox, receiver: Receiver
) -> None:
    box.subscribe("camera.changed", "webhook", lambda t, p: _post(receiver.url, p))
    total = 120
    publish_many(db, box, "camera.changed", total)

    def work() -> None:
        mine = Database(db_url)  # its own engine and connections, like a separate process
        while outbox.drain_once(mine, box, max_attempts=3, batch=5):
            pass
        mine.dispose()

    workers = [threading.Thread(target=work) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert sorted(receiver.received) == list(range(total))
    assert set(receiver.received.values()) == {1}
    assert statuses(db) == Counter({"delivered": total})


def _post(url: str, payload: dict[str, Any]) -> None:
    requests.post(url, json=payload, timeout=5).raise_for_status()


def make_due(db: Database) -> None:
    with db.session() as session:
        session.execute(update(OutboxEvent).values(next_attempt_at=utcnow() - timedelta(seconds=1)))


def test_failure_backs_off_then_succeeds(db: Database, box: Outbox) -> None:
    calls: list[int] = []

    def flaky(topic: str, payload: dict[str, Any]) -> None:
        calls.append(payload["n"])
        if len(calls) < 3:
            raise ConnectionError("gateway said 503")

    box.subscribe("camera.changed", "flaky", flaky)
    publish_many(db, box, "camera.changed", 1)
    assert outbox.drain_once(db, box, max_attempts=5) == 1
    with db.session() as session:
        event = session.scalars(select(OutboxEvent)).one()
        assert event.status == "pending"
        assert event.last_error == "ConnectionError: gateway said 503"
        first_wait = event.next_attempt_at - utcnow()
    assert timedelta(seconds=0.5) < first_wait <= timedelta(seconds=2)
    assert outbox.drain_once(db, box, max_attempts=5) == 0  # not due yet
    make_due(db)
    outbox.drain_once(db, box, max_attempts=5)
    make_due(db)
    outbox.drain_once(db, box, max_attempts=5)
    assert calls == [0, 0, 0]
    with db.session() as session:
        event = session.scalars(select(OutboxEvent)).one()
        assert (event.status, event.attempts, event.last_error) == ("delivered", 3, None)


def test_exhausted_retries_go_to_dead_letter(db: Database, box: Outbox) -> None:
    def broken(topic: str, payload: dict[str, Any]) -> None:
        raise ValueError("rejected")

    box.subscribe("camera.changed", "broken", broken)
    publish_many(db, box, "camera.changed", 1)
    for _ in range(3):
        make_due(db)
        outbox.drain_once(db, box, max_attempts=3)
    make_due(db)
    assert outbox.drain_once(db, box, max_attempts=3) == 0
    assert statuses(db) == Counter({"dead": 1})


def test_backoff_grows_and_is_capped() -> None:
    assert all(0.5 <= outbox.backoff(0) <= 1 for _ in range(20))
    assert all(32 <= outbox.backoff(6) <= 64 for _ in range(20))
    assert outbox.backoff(40) <= outbox.MAX_BACKOFF


def test_crashed_worker_lease_expires_and_event_is_redelivered(db: Database, box: Outbox) -> None:
    got: list[int] = []
    box.subscribe("camera.changed", "recorder", lambda t, p: got.append(p["n"]))
    publish_many(db, box, "camera.changed", 1)
    assert outbox.claim_one(db, "dead-worker") is not None  # claims, then dies before delivering
    assert outbox.drain_once(db, box, max_attempts=5) == 0  # leased to the dead worker
    with db.session() as session:
        session.execute(update(OutboxEvent).values(locked_until=utcnow() - timedelta(seconds=1)))
    assert outbox.drain_once(db, box, max_attempts=5) == 1
    assert got == [0]


# --- leases per event, the fenced write-back, stable message ids, stopping -------------------


SHORT_LEASE = timedelta(seconds=5)
DEADLINE = 60.0


def alexa_services(settings: Settings, db: Database, amazon: FakeAmazon) -> Services:
    """The wiring a worker builds, with Alexa events going to the fake Amazon."""
    configured = settings.model_copy(update={
        "alexa_client_id": CLIENT_ID, "alexa_client_secret": SecretStr(CLIENT_SECRET),
        "alexa_lwa_token_url": amazon.url + "/auth/o2/token",
        "alexa_event_gateway_url": amazon.url + "/v3/events",
    })  # fmt: skip
    return build_services(configured, db)


def linked_camera(services: Services, amazon: FakeAmazon) -> str:
    """An owner with one camera and a live AcceptGrant; the camera.added event is drained
    before the grant, so the outbox holds nothing for Alexa afterwards."""
    with services.db.session() as session:
        owner = create_account(session, "owner@camvoice.example", "owner-password-1")
        camera = services.registry.add(
            session, owner, "Front Door", actor="test", model="C6N", firmware="5.3.0"
        )
        camera_id = camera.id
        owner_id = owner.id
    while outbox.drain_once(services.db, services.outbox, max_attempts=3):
        pass
    accept_grant(services, owner_id, amazon.new_code())
    return camera_id


def toggle_online(services: Services, camera_id: str, times: int) -> None:
    """`times` camera.changed events on "online": one ChangeReport each."""
    with services.db.session() as session:
        camera = session.get(Camera, camera_id)
        assert camera is not None
        for i in range(times):
            services.registry.record(session, camera, {"online": i % 2 == 1}, actor="test")


def change_reports(amazon: FakeAmazon) -> list[str]:
    """The messageId of every ChangeReport the gateway accepted, in arrival order."""
    return [
        m["event"]["header"]["messageId"]
        for m in amazon.events
        if m["event"]["header"]["name"] == "ChangeReport"
    ]


def expected_ids(db: Database, name: str) -> set[str]:
    """The ids the camera.changed events must have sent: one per event, from its stable key."""
    with db.session() as session:
        stmt = select(OutboxEvent).where(OutboxEvent.topic == "camera.changed")
        events = session.scalars(stmt).all()
    return {str(uuid.uuid5(uuid.UUID(outbox.event_key(e)), name)) for e in events}


@pytest.fixture
def amazon() -> Iterator[FakeAmazon]:
    fake = FakeAmazon()
    yield fake
    fake.close()


def test_two_workers_and_a_slow_gateway_send_each_event_once(
    db: Database, db_url: str, settings: Settings, amazon: FakeAmazon
) -> None:
    """While one worker's delivery hangs at the gateway, the other delivers every other event
    and never that one; released, the first finishes it: each of 20 events is sent once. (A
    lease over a whole batch left the second worker nothing to do until it ran out, and then
    it sent the batch again.)"""
    camera_id = linked_camera(alexa_services(settings, db, amazon), amazon)
    total = 20
    toggle_online(alexa_services(settings, db, amazon), camera_id, total)
    held, release = threading.Event(), threading.Event()

    def hold_the_first() -> None:
        if not held.is_set():  # only the first worker runs until this is set
            held.set()
            release.wait(DEADLINE)

    amazon.gateway_hold = hold_the_first
    stop = threading.Event()

    def work() -> None:
        mine = Database(db_url)  # its own engine and wiring, like a separate process
        services = alexa_services(settings, mine, amazon)
        outbox.run_worker(mine, services.outbox, 3, 0.05, stop, lease=outbox.LEASE)
        mine.dispose()

    workers = [threading.Thread(target=work) for _ in range(2)]
    try:
        workers[0].start()
        wait_for(held.is_set, "the first worker's delivery to reach the gateway")
        workers[1].start()
        wait_for(lambda: len(change_reports(amazon)) == total - 1, "the other 19 deliveries")
        # The gateway has them all; the second worker records each just after: wait for that.
        # Left pending: the held one, still leased to the first worker.
        wait_for(lambda: statuses(db)["pending"] == 1, "the other 19 to be recorded")
        release.set()
        wait_for(lambda: statuses(db)["pending"] == 0, "every event to be delivered")
    finally:
        release.set()
        stop.set()
        for w in workers:
            if w.ident is not None:  # started
                w.join(DEADLINE)
    assert not any(w.is_alive() for w in workers)
    sent = change_reports(amazon)
    assert len(sent) == total, "an event was sent twice"
    assert set(sent) == expected_ids(db, "Alexa.ChangeReport")
    assert amazon.problems == []
    assert statuses(db) == Counter({"delivered": total + 1})  # and the camera.added


def test_a_worker_that_lost_its_lease_cannot_record(
    db: Database, box: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker whose lease ran out and was taken cannot mark the event delivered or failed,
    nor release the new holder's lease (a third worker would send it again)."""
    sends: list[str | None] = []

    def send(topic: str, payload: dict[str, Any]) -> None:
        sends.append(outbox.delivery_key())

    box.subscribe("camera.changed", "recorder", send)
    publish_many(db, box, "camera.changed", 1)
    slow = outbox.claim_one(db, "slow-worker", SHORT_LEASE)
    assert slow is not None
    expire_leases(db)
    fast = outbox.claim_one(db, "fast-worker", SHORT_LEASE)
    assert fast is not None and fast.id == slow.id and fast.lease_token != slow.lease_token
    with caplog.at_level(logging.WARNING, logger="camvoice.outbox"):
        assert outbox.deliver(db, box, slow, max_attempts=1) is False  # the fence holds
    assert "lease lost to another worker" in caplog.text
    with db.session() as session:
        row = session.get(OutboxEvent, slow.id)
        assert row is not None
        assert (row.status, row.lease_owner, row.lease_token) == (
            "pending", "fast-worker", fast.lease_token,
        )  # fmt: skip
        assert row.locked_until is not None and row.locked_until > utcnow()
    assert outbox.claim_one(db, "third-worker", SHORT_LEASE) is None  # still leased
    assert outbox.deliver(db, box, fast, max_attempts=1) is True
    assert statuses(db) == Counter({"delivered": 1})

    # A late failure cannot turn a delivered event back into a retry either.
    def broken(topic: str, payload: dict[str, Any]) -> None:
        raise ConnectionError("gateway timed out")

    box.subscribe("camera.changed", "recorder", broken)
    assert outbox.deliver(db, box, slow, max_attempts=5) is False
    assert statuses(db) == Counter({"delivered": 1})
    assert sends == [outbox.event_key(slow)] * 2  # both sends carried the event's key


def test_a_redelivered_alexa_event_keeps_its_message_id(
    db: Database, settings: Settings, amazon: FakeAmazon
) -> None:
    """Two workers send one event (the first lost its lease mid-delivery): Amazon gets the same
    messageId twice, and only the lease holder records the outcome."""
    services = alexa_services(settings, db, amazon)
    toggle_online(services, linked_camera(services, amazon), 1)
    first = outbox.claim_one(db, "worker-1", SHORT_LEASE)
    assert first is not None
    expire_leases(db)
    second = outbox.claim_one(db, "worker-2", SHORT_LEASE)
    assert second is not None and second.id == first.id
    assert outbox.deliver(db, services.outbox, first, max_attempts=3) is False
    assert outbox.deliver(db, services.outbox, second, max_attempts=3) is True
    sent = change_reports(amazon)
    key = outbox.event_key(first)
    assert sent == [str(uuid.uuid5(uuid.UUID(key), "Alexa.ChangeReport"))] * 2
    assert outbox.event_key(second) == key
    assert amazon.problems == []


@pytest.fixture
def google() -> Iterator[FakeGoogle]:
    fake = FakeGoogle()
    yield fake
    fake.close()


def test_a_retried_report_state_keeps_its_request_id(
    db: Database, box: Outbox, google: FakeGoogle, tmp_path: Path
) -> None:
    """reportState sent, then the delivery fails (as if the answer had been lost): the retry
    carries the same requestId."""
    client = HomeGraph(google.key_file(tmp_path), google.url)
    failures: list[int] = []

    def report(topic: str, payload: dict[str, Any]) -> None:
        client.report_state("owner-1", {"cam-1": {"online": False}})
        if not failures:
            failures.append(1)
            raise ConnectionError("lost the answer")

    box.subscribe("camera.changed", "homegraph", report)
    publish_many(db, box, "camera.changed", 1)
    assert outbox.drain_once(db, box, max_attempts=3) == 1
    make_due(db)
    assert outbox.drain_once(db, box, max_attempts=3) == 1
    ids = [body["requestId"] for path, body in google.calls]
    with db.session() as session:
        key = outbox.event_key(session.scalars(select(OutboxEvent)).one())
    assert ids == [str(uuid.uuid5(uuid.UUID(key), "reportStateAndNotification"))] * 2
    assert statuses(db) == Counter({"delivered": 1})


def test_the_delivery_key_is_the_same_on_every_attempt(db: Database, box: Outbox) -> None:
    keys: list[tuple[int, str | None]] = []

    def flaky(topic: str, payload: dict[str, Any]) -> None:
        keys.append((payload["n"], outbox.delivery_key()))
        if len([n for n, _ in keys if n == payload["n"]]) < 3:
            raise ConnectionError("gateway said 503")

    box.subscribe("camera.changed", "flaky", flaky)
    publish_many(db, box, "camera.changed", 2)
    for _ in range(3):
        make_due(db)
        assert outbox.drain_once(db, box, max_attempts=5) == 2
    assert statuses(db) == Counter({"delivered": 2})
    by_event = {n: {k for m, k in keys if m == n} for n in (0, 1)}
    assert all(len(k) == 1 and None not in k for k in by_event.values())
    assert by_event[0] != by_event[1]
    assert outbox.delivery_key() is None  # outside a delivery


def test_a_stopped_worker_finishes_only_the_event_in_hand(db: Database, box: Outbox) -> None:
    """SIGTERM sets `stop` while an event is being sent: that one is finished and recorded,
    nothing else is claimed, and the periodic work does not start."""
    started, release = threading.Event(), threading.Event()
    got: list[int] = []
    periodic_runs: list[int] = []

    def slow(topic: str, payload: dict[str, Any]) -> None:
        started.set()
        assert release.wait(DEADLINE)
        got.append(payload["n"])

    def periodic() -> int:
        periodic_runs.append(1)
        return 0

    box.subscribe("camera.changed", "slow", slow)
    publish_many(db, box, "camera.changed", 3)
    stop = threading.Event()
    worker = threading.Thread(
        target=outbox.run_worker, args=(db, box, 3, 0.05, stop), kwargs={"periodic": periodic}
    )
    worker.start()
    try:
        assert started.wait(DEADLINE), "the worker never started a delivery"
        stop.set()  # what the SIGTERM handler of `camvoice worker` does
    finally:
        release.set()
        worker.join(DEADLINE)
    assert not worker.is_alive()
    assert got == [0] and periodic_runs == []
    assert statuses(db) == Counter({"delivered": 1, "pending": 2})
    with db.session() as session:
        left = session.scalars(select(OutboxEvent).where(OutboxEvent.status == "pending")).all()
    assert all(e.attempts == 0 and e.locked_until is None for e in left)  # never claimed


def test_lease_outlasts_the_slowest_delivery() -> None:
    """LEASE against the subscribers' own timeouts and retries (see camvoice/outbox.py): if one
    of them grows, this fails until the lease and its derivation are updated."""
    from google.auth import _exponential_backoff as google_backoff

    from fulfillment import homegraph
    from skills import events

    lock_wait = 15.0  # SQLite busy_timeout (camvoice/db.py), per writing transaction
    alexa = 2 * 2 * (2 * events.LWA_TIMEOUT + 2 * events.GATEWAY_TIMEOUT) + 6 * lock_wait
    tries = google_backoff._DEFAULT_RETRY_TOTAL_ATTEMPTS
    waits = sum(
        google_backoff._DEFAULT_INITIAL_INTERVAL_SECONDS * google_backoff._DEFAULT_MULTIPLIER**i
        for i in range(tries - 1)
    ) * (1 + google_backoff._DEFAULT_RANDOMIZATION_FACTOR)
    refresh = tries * 2 * homegraph.TIMEOUT + waits  # the refresh is given HomeGraph's timeout
    google = refresh + 2 * 2 * homegraph.TIMEOUT + 2 * lock_wait
    assert (alexa, round(google, 1)) == (194.0, 133.3)  # the figures the docstring gives
    assert outbox.LEASE.total_seconds() > max(alexa, google)
    assert timedelta(minutes=4) == outbox.LEASE  # what README says


def expire_leases(db: Database) -> None:
    """Make every lease run out now, as if its worker had been slower than the lease."""
    with db.session() as session:
        session.execute(update(OutboxEvent).values(locked_until=utcnow() - timedelta(seconds=1)))
