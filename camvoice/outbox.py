"""Transactional outbox: events written with the change that causes them, delivered at least once.

A change publishes a topic ("camera.changed"); one row is written per subscriber of that topic,
in the caller's transaction, so an event exists if and only if the change committed. `camvoice
worker` claims one due row at a time (FOR UPDATE SKIP LOCKED on PostgreSQL; SQLite serialises
writers) under its own lease, calls the subscriber's handler, and records the outcome, retrying
failures with exponential backoff until a dead-letter state.

Delivery is at least once, not exactly once: a worker that dies, or whose delivery outlasts the
lease, leaves the event to be delivered again. Three things keep that rare and harmless:

- the lease (LEASE) is longer than the slowest single delivery, and is taken per event, so a
  worker never holds an event it is not working on;
- the write-back is fenced by the lease's owner and token, so a worker whose lease passed to
  another cannot overwrite the newer holder's outcome (it logs and moves on);
- each event has a stable key (`delivery_key()`, the same on every attempt), from which the
  subscribers derive the message ids they send, so a re-delivery is the same message again.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, cast

from sqlalchemy import CursorResult, or_, select, update
from sqlalchemy.orm import Session

from camvoice.db import Database, unavailable
from camvoice.models import OutboxEvent, utcnow

log = logging.getLogger(__name__)

Handler = Callable[[str, dict[str, Any]], None]  # (topic, payload)
MAX_BACKOFF = 3600.0

# The lease one worker holds on one event. It must outlast the slowest single delivery, or a
# second worker re-delivers an event the first is still sending. requests' `timeout=t` bounds
# the connect and each wait for data, so a call whose server answers at a normal pace takes at
# most 2t (one that trickles its reply byte by byte can take longer: then the fence and the
# stable message ids below make the repeat harmless); on SQLite a writing transaction may also
# wait busy_timeout (15 s) for the write lock.
# - Alexa (skills/events.py), one event: at most two messages (AddOrUpdateReport and
#   ChangeReport), each tried twice (a 401 refreshes and resends), each try a possible LWA refresh
#   (LWA_TIMEOUT 3 s: 6 s) and a gateway POST (GATEWAY_TIMEOUT 10 s: 20 s): 2 x 2 x 26 = 104 s,
#   plus six writing transactions on SQLite (90 s): 194 s.
# - HomeGraph (fulfillment/homegraph.py), one event: requestSync and reportState (TIMEOUT 10 s:
#   20 s each, 40 s) and at most one service-account token refresh, which google-auth makes with
#   the same 10 s timeout, up to 3 tries on 5xx, 1 s and 2 s apart (+10 % jitter):
#   3 x 20 + 3.3 = 63.3 s; plus two writing transactions on SQLite (30 s): 133.3 s.
# 240 s covers the slowest (Alexa) with a margin for the database calls; it is also how long
# the event of a worker that died mid-delivery waits for another. tests/test_outbox.py checks
# the bound against those constants.
LEASE = timedelta(seconds=240)
KEY_NAMESPACE = uuid.UUID("5f6d2c4e-8c1a-4a57-9b0e-2f1c3d7a9e10")  # for delivery keys only
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
RECORD_RETRY_MAX = 2.0
# A payload's secrets its handler needs once (an erased owner's Alexa tokens): dropped from the
# row when the event is delivered or dead, so no copy outlives the delivery.
SEALED = "sealed"  # seconds between tries to record an outcome while the database is away

_delivering: ContextVar[str | None] = ContextVar("camvoice_outbox_delivery", default=None)


class Outbox:
    """Who hears which topic. The composition root builds one and subscribes the adapters;
    the registry publishes through it, and the worker delivers through it."""

    def __init__(self) -> None:
        self._subscribers: dict[str, dict[str, Handler]] = {}  # topic -> name -> handler

    def subscribe(self, topic: str, name: str, handler: Handler) -> None:
        self._subscribers.setdefault(topic, {})[name] = handler

    def handler_for(self, subscriber: str) -> Handler | None:
        for handlers in self._subscribers.values():
            if subscriber in handlers:
                return handlers[subscriber]
        return None

    def publish(self, session: Session, topic: str, payload: dict[str, Any]) -> int:
        """Write one outbox row per subscriber of topic in the caller's transaction."""
        names = sorted(self._subscribers.get(topic, {}))
        for name in names:
            session.add(OutboxEvent(topic=topic, subscriber=name, payload=payload))
        return len(names)

    def publish_to(self, session: Session, topic: str, payloads: dict[str, dict[str, Any]]) -> int:
        """Write one row per named subscriber of topic, each with its own payload: what one
        subscriber's event carries (its sealed credentials, under SEALED) reaches no other.
        Names not subscribed to topic get nothing."""
        subscribed = self._subscribers.get(topic, {})
        names = sorted(name for name in payloads if name in subscribed)
        for name in names:
            session.add(OutboxEvent(topic=topic, subscriber=name, payload=payloads[name]))
        return len(names)


class RetryLater(Exception):
    """Raised by a handler whose receiver asked to be left alone for `after` seconds (a 429 or
    503 with Retry-After): the next attempt waits that long if it is longer than the backoff."""

    def __init__(self, message: str, after: float | None) -> None:
        super().__init__(message)
        self.after = min(max(after or 0.0, 0.0), MAX_BACKOFF)


def retry_after_seconds(value: str | None) -> float | None:
    """An HTTP Retry-After header (delay-seconds or an HTTP-date) in seconds; None if absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value[:8])
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - utcnow()).total_seconds())


def backoff(attempts: int) -> float:
    """Seconds before retry number `attempts + 1`: exponential, capped, with jitter."""
    base = min(2.0**attempts, MAX_BACKOFF)
    return base * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not security


def event_key(event: OutboxEvent) -> str:
    """A UUID for the event that every attempt shares: the row's id never changes, and its
    creation time (to the microsecond) keeps keys apart when a new database reuses ids."""
    created = (event.created_at - EPOCH) // timedelta(microseconds=1)
    return str(uuid.uuid5(KEY_NAMESPACE, f"{event.id}:{created}"))


def delivery_key() -> str | None:
    """The key of the event whose handler is running in this thread, None outside a delivery.

    Handlers keep their (topic, payload) signature; those that send messages with an id the
    receiver can use to recognise a repeat (Alexa's messageId, HomeGraph's requestId) derive it
    from this key, so every delivery of one event sends the same ids.
    """
    return _delivering.get()


def message_id(name: str) -> str:
    """The id of the message called `name` that the event being delivered sends: the same on
    every delivery of that event (each event sends at most one message of each name), random
    outside a delivery."""
    key = delivery_key()
    return str(uuid.uuid5(uuid.UUID(key), name)) if key is not None else str(uuid.uuid4())


@contextmanager
def _delivering_event(event: OutboxEvent) -> Iterator[None]:
    """Expose the event's key to its handler for the duration of the call."""
    token = _delivering.set(event_key(event))
    try:
        yield
    finally:
        _delivering.reset(token)


def worker_id() -> str:
    """A name for one worker, shown as the lease owner: host and pid for the operator, and a
    random part so that two workers in one process (tests, threads) are told apart."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"


def claim_one(db: Database, owner: str, lease: timedelta = LEASE) -> OutboxEvent | None:
    """Lease the oldest due event to `owner` for `lease`, or return None if none is due.

    One event at a time, so a lease covers only the delivery in hand; the new token makes any
    earlier holder's write-back miss (see `record`).
    """
    now = utcnow()
    due = (
        select(OutboxEvent.id)
        .where(
            OutboxEvent.status == "pending",
            OutboxEvent.next_attempt_at <= now,
            or_(OutboxEvent.locked_until.is_(None), OutboxEvent.locked_until < now),
        )
        .order_by(OutboxEvent.id)
        .limit(1)
    )
    if not db.is_sqlite:
        due = due.with_for_update(skip_locked=True)
    stmt = (
        update(OutboxEvent)
        .where(OutboxEvent.id.in_(due.scalar_subquery()))
        .values(
            locked_until=now + lease,
            lease_owner=owner,
            lease_token=secrets.token_hex(16),
            attempts=OutboxEvent.attempts + 1,
        )
        .returning(OutboxEvent)
        .execution_options(synchronize_session=False)
    )
    with db.session() as session:
        return session.scalars(stmt).one_or_none()


def run_handler(outbox: Outbox, event: OutboxEvent) -> tuple[str | None, float]:
    """Call the event's handler: the error to record (None when it succeeded), and the seconds
    the receiver asked us to wait before the next attempt (RetryLater; 0 otherwise)."""
    handler = outbox.handler_for(event.subscriber)
    if handler is None:
        return f"no handler for subscriber {event.subscriber!r} in this worker", 0.0
    try:
        with _delivering_event(event):
            handler(event.topic, event.payload)
    except Exception as exc:
        # Handlers raise messages without secrets; keep the type too for the operator.
        wait = exc.after if isinstance(exc, RetryLater) else 0.0
        return f"{type(exc).__name__}: {exc}"[:1000], wait
    return None, 0.0


def outcome(
    event: OutboxEvent, error: str | None, max_attempts: int, not_before: float = 0.0
) -> dict[str, Any]:
    """The columns that record one attempt: delivered, dead, or due again after a backoff (or
    after `not_before` seconds, when the receiver asked for longer)."""
    now = utcnow()
    values: dict[str, Any] = {
        "locked_until": None,
        "lease_owner": None,
        "lease_token": None,
        "last_error": error,
    }
    if error is None:
        values.update(status="delivered", delivered_at=now)
    elif event.attempts >= max_attempts:
        values["status"] = "dead"
    else:
        wait = max(backoff(event.attempts), not_before)
        values["next_attempt_at"] = now + timedelta(seconds=wait)
    if "status" in values and SEALED in event.payload:
        values["payload"] = {k: v for k, v in event.payload.items() if k != SEALED}
    return values


def record(db: Database, event: OutboxEvent, values: dict[str, Any]) -> bool:
    """Write an attempt's outcome only if this worker still holds the event's lease.

    The fence is the owner and the token taken at claim time: a worker whose lease ran out and
    was taken by another matches no row, so it cannot mark delivered, dead or due an event that
    the new holder is still working on. No expiry check is needed: only a new claim replaces
    the token, and until then nobody else is delivering the event.
    """
    fenced = (
        update(OutboxEvent)
        .where(
            OutboxEvent.id == event.id,
            OutboxEvent.lease_owner == event.lease_owner,
            OutboxEvent.lease_token == event.lease_token,
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    with db.session() as session:
        result = cast("CursorResult[Any]", session.execute(fenced))
        return result.rowcount == 1


def record_while_leased(db: Database, event: OutboxEvent, values: dict[str, Any]) -> bool:
    """`record`, tried again while the database is away (a restart, a failover) and the lease
    still holds: an outcome dropped here would leave a sent event leased to nobody until the
    lease ran out, and then send it again. Other errors, or a lease about to end, raise."""
    delay = 0.25
    while True:
        try:
            return record(db, event, values)
        except Exception as exc:
            left = (event.locked_until or utcnow()) - utcnow()
            if not unavailable(exc) or left < timedelta(seconds=2 * RECORD_RETRY_MAX):
                raise
            log.warning("outbox event %s: database unavailable (%s); recording again in %.2f s",
                        event.id, type(exc).__name__, delay)  # fmt: skip
            time.sleep(delay)
            delay = min(delay * 2, RECORD_RETRY_MAX)


def deliver(db: Database, outbox: Outbox, event: OutboxEvent, max_attempts: int) -> bool:
    """Run the handler for one claimed event and record the outcome under the lease's fence.

    Returns True when this worker delivered the event and recorded it.
    """
    error, not_before = run_handler(outbox, event)
    values = outcome(event, error, max_attempts, not_before)
    if not record_while_leased(db, event, values):
        log.warning(
            "outbox event %s (%s): lease lost to another worker before the outcome was "
            "recorded (%s); leaving it to the new holder",
            event.id,
            event.topic,
            "delivered" if error is None else "failed",
        )
        return False
    if values.get("status") == "dead":
        log.error(
            "outbox event %s (%s) dead after %s attempts", event.id, event.topic, event.attempts
        )
    elif error is not None:
        log.warning("outbox event %s (%s) failed, will retry: %s", event.id, event.topic, error)
    return error is None


def drain_once(
    db: Database,
    outbox: Outbox,
    max_attempts: int,
    batch: int = 20,
    *,
    lease: timedelta = LEASE,
    owner: str | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Deliver up to `batch` due events, each claimed just before it is delivered; returns how
    many were attempted. With `stop` set it claims nothing more: only the event in hand is
    finished."""
    owner = owner or worker_id()
    done = 0
    while done < batch and not (stop is not None and stop.is_set()):
        event = claim_one(db, owner, lease)
        if event is None:
            break
        deliver(db, outbox, event, max_attempts)
        done += 1
    return done


def run_worker(
    db: Database,
    outbox: Outbox,
    max_attempts: int,
    poll_interval: float,
    stop: threading.Event,
    periodic: Callable[[], int] | None = None,
    lease: timedelta = LEASE,
) -> None:
    """Drain until `stop` is set, sleeping `poll_interval` whenever nothing is due.

    SIGTERM sets `stop`: the worker finishes the event in hand, claims no other, and returns
    without starting the periodic work. `periodic` (the camera-cloud sync) runs between batches
    and says how much it did.
    """
    owner = worker_id()
    log.info("worker %s started", owner)
    while not stop.is_set():
        try:
            busy = drain_once(db, outbox, max_attempts, lease=lease, owner=owner, stop=stop)
        except Exception:
            log.exception("outbox drain failed; retrying")
            busy = 0
        if stop.is_set():
            break
        if periodic is not None:
            try:
                busy += periodic()
            except Exception:
                log.exception("periodic work failed; retrying")
        if not busy:
            stop.wait(poll_interval)
    log.info("worker %s stopped", owner)
