"""Transactional outbox: events written with the change that causes them, delivered by workers.

A change publishes a topic ("camera.changed"); one row is written per subscriber of that topic,
in the caller's transaction, so an event exists if and only if the change committed. `camvoice
worker` claims due rows (FOR UPDATE SKIP LOCKED on PostgreSQL; SQLite serialises writers), calls
the subscriber's handler, and retries failures with exponential backoff until a dead-letter state.
Several workers may run at once: a claimed row carries a lease, so each event goes to one worker.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from camvoice.db import Database
from camvoice.models import OutboxEvent, utcnow

log = logging.getLogger(__name__)

Handler = Callable[[str, dict[str, Any]], None]  # (topic, payload)
LEASE = timedelta(seconds=60)
MAX_BACKOFF = 3600.0


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


def backoff(attempts: int) -> float:
    """Seconds before retry number `attempts + 1`: exponential, capped, with jitter."""
    base = min(2.0**attempts, MAX_BACKOFF)
    return base * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not security


def claim(db: Database, batch: int = 20) -> list[OutboxEvent]:
    """Lease up to `batch` due events to this worker; no other worker gets them meanwhile."""
    now = utcnow()
    due = (
        select(OutboxEvent.id)
        .where(
            OutboxEvent.status == "pending",
            OutboxEvent.next_attempt_at <= now,
            or_(OutboxEvent.locked_until.is_(None), OutboxEvent.locked_until < now),
        )
        .order_by(OutboxEvent.id)
        .limit(batch)
    )
    if not db.is_sqlite:
        due = due.with_for_update(skip_locked=True)
    stmt = (
        update(OutboxEvent)
        .where(OutboxEvent.id.in_(due.scalar_subquery()))
        .values(locked_until=now + LEASE, attempts=OutboxEvent.attempts + 1)
        .returning(OutboxEvent)
        .execution_options(synchronize_session=False)
    )
    with db.session() as session:
        return sorted(session.scalars(stmt).all(), key=lambda e: e.id)


def deliver(db: Database, outbox: Outbox, event: OutboxEvent, max_attempts: int) -> bool:
    """Run the handler for one claimed event and record the outcome."""
    handler = outbox.handler_for(event.subscriber)
    error: str | None = None
    if handler is None:
        error = f"no handler for subscriber {event.subscriber!r} in this worker"
    else:
        try:
            handler(event.topic, event.payload)
        except Exception as exc:
            # Handlers raise messages without secrets; keep the type too for the operator.
            error = f"{type(exc).__name__}: {exc}"[:1000]
    now = utcnow()
    values: dict[str, Any] = {"locked_until": None, "last_error": error}
    if error is None:
        values.update(status="delivered", delivered_at=now)
    elif event.attempts >= max_attempts:
        values["status"] = "dead"
        log.error(
            "outbox event %s (%s) dead after %s attempts", event.id, event.topic, event.attempts
        )
    else:
        values["next_attempt_at"] = now + timedelta(seconds=backoff(event.attempts))
        log.warning("outbox event %s (%s) failed, will retry: %s", event.id, event.topic, error)
    with db.session() as session:
        session.execute(update(OutboxEvent).where(OutboxEvent.id == event.id).values(**values))
    return error is None


def drain_once(db: Database, outbox: Outbox, max_attempts: int, batch: int = 20) -> int:
    """Claim and deliver one batch; returns how many events were attempted."""
    events = claim(db, batch)
    for event in events:
        deliver(db, outbox, event, max_attempts)
    return len(events)


def run_worker(
    db: Database,
    outbox: Outbox,
    max_attempts: int,
    poll_interval: float,
    stop: threading.Event,
    periodic: Callable[[], int] | None = None,
) -> None:
    """Drain until `stop` is set, sleeping `poll_interval` whenever nothing is due.

    `periodic` (the camera-cloud sync) runs between batches and says how much it did.
    """
    log.info("worker started")
    while not stop.is_set():
        try:
            busy = drain_once(db, outbox, max_attempts)
        except Exception:
            log.exception("outbox drain failed; retrying")
            busy = 0
        if periodic is not None:
            try:
                busy += periodic()
            except Exception:
                log.exception("periodic work failed; retrying")
        if not busy:
            stop.wait(poll_interval)
    log.info("worker stopped")
