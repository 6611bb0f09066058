"""The outbox on SQLite and PostgreSQL: delivery, retries with backoff, dead letters, leases,
and two workers draining one outbox without delivering anything twice."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from sqlalchemy import select, update

from camvoice import outbox
from camvoice.db import Database
from camvoice.models import OutboxEvent, utcnow
from camvoice.outbox import Outbox


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
    assert len(outbox.claim(db)) == 1  # a worker claims, then dies before delivering
    assert outbox.drain_once(db, box, max_attempts=5) == 0  # leased to the dead worker
    with db.session() as session:
        session.execute(update(OutboxEvent).values(locked_until=utcnow() - timedelta(seconds=1)))
    assert outbox.drain_once(db, box, max_attempts=5) == 1
    assert got == [0]
