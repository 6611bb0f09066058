"""Purging what is no longer needed, in bounded batches, on the worker's schedule.

Every table that grows with use has a rule saying which of its rows can go: a rule names the
table's primary-key column and a condition on "now". The core adds its own rules (`add_core`);
an adapter that keeps rows of its own adds its rules to the same `Purger`, which the composition
root builds once per process (service/wiring.py) and the worker runs every
CAMVOICE_PURGE_INTERVAL seconds (`camvoice purge` runs it once).

Rows go in batches of at most BATCH, each batch its own short transaction, so a purge of a big
backlog never holds a table's locks (or SQLite's write lock) for long; a web request waits at
most for one batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, delete, select
from sqlalchemy.orm import InstrumentedAttribute

from camvoice.db import Database
from camvoice.models import AuditEvent, OutboxEvent, utcnow
from camvoice.once import UsedOnce
from camvoice.ratelimit import RateLimit
from camvoice.settings import Settings
from camvoice.streams import VIEW_GAP, StreamView

log = logging.getLogger(__name__)

BATCH = 1000  # rows per DELETE statement (and per transaction)
Expired = Callable[[datetime], ColumnElement[bool]]  # now -> which rows may go

# A stream view is over for good once its ticket has expired and its player has been gone
# longer than VIEW_GAP (Streams.admit refuses it then). Tickets live at most an hour (the upper
# bound of CAMVOICE_STREAM_TICKET_TTL), and a view starts after its ticket was issued, so a view
# last seen more than an hour and VIEW_GAP ago can never be admitted again.
ENDED_VIEW = timedelta(hours=1) + VIEW_GAP
# Rate-limit windows are at most a day (or CAMVOICE_LOGIN_WINDOW if longer): a row whose window
# began before that counts nothing any more.
RATE_WINDOW_MAX = timedelta(days=1)


@dataclass(frozen=True)
class Rule:
    """Rows of one table that may go: `key` is its primary key, `expired(now)` the condition."""

    name: str
    key: InstrumentedAttribute[Any]
    expired: Expired


class Purger:
    """The purge rules of one process, run together."""

    def __init__(self) -> None:
        self.rules: list[Rule] = []

    def add(self, name: str, key: InstrumentedAttribute[Any], expired: Expired) -> None:
        """Purge rows of `key`'s table for which `expired(now)` holds. The hook for adapters."""
        self.rules.append(Rule(name, key, expired))

    def run(self, db: Database, now: datetime | None = None, batch: int = BATCH) -> dict[str, int]:
        """Apply every rule once; returns how many rows each removed."""
        now = now or utcnow()
        removed = {rule.name: delete_in_batches(db, rule, now, batch) for rule in self.rules}
        if any(removed.values()):
            log.info("purged %s", ", ".join(f"{n} {k}" for k, n in removed.items() if n))
        return removed


def delete_in_batches(db: Database, rule: Rule, now: datetime, batch: int) -> int:
    """DELETE ... WHERE key IN (SELECT key ... LIMIT batch), one transaction per batch, until a
    batch comes back short. Works the same on SQLite and PostgreSQL."""
    total = 0
    while True:
        chosen = select(rule.key).where(rule.expired(now)).limit(batch)
        stmt = delete(rule.key.class_).where(rule.key.in_(chosen.scalar_subquery()))
        with db.session() as session:
            result = cast("CursorResult[Any]", session.execute(
                stmt.execution_options(synchronize_session=False)))  # fmt: skip
            count = result.rowcount
        total += count
        if count < batch:
            return total


def add_core(purger: Purger, settings: Settings) -> None:
    """The core's rules. Kept: outbox rows not yet delivered (pending, or leased to a worker)."""
    outbox_keep = timedelta(days=settings.outbox_retention_days)
    audit_keep = timedelta(days=settings.audit_retention_days)
    rate_keep = max(RATE_WINDOW_MAX, timedelta(seconds=settings.login_window))
    delivered, dead = OutboxEvent.status == "delivered", OutboxEvent.status == "dead"
    purger.add("outbox.delivered", OutboxEvent.id,
               lambda now: delivered & (OutboxEvent.delivered_at < now - outbox_keep))  # fmt: skip
    # Dead letters are the record of what never reached Amazon or Google: kept like audit rows.
    purger.add("outbox.dead", OutboxEvent.id,
               lambda now: dead & (OutboxEvent.created_at < now - audit_keep))  # fmt: skip
    purger.add("stream_views", StreamView.ticket_id,
               lambda now: StreamView.last_seen < now - ENDED_VIEW)  # fmt: skip
    purger.add("rate_limits", RateLimit.key, lambda now: RateLimit.window_start < now - rate_keep)
    purger.add("audit_events", AuditEvent.id, lambda now: AuditEvent.at < now - audit_keep)
    purger.add("used_once", UsedOnce.key, lambda now: UsedOnce.expires_at < now)


class PurgeSchedule:
    """The worker's periodic purge: at start, then every `interval` seconds. A failed run (the
    database away) is logged and tried again after a minute at most."""

    RETRY = 60.0

    def __init__(self, purger: Purger, db: Database, interval: float) -> None:
        self.purger, self.db, self.interval = purger, db, interval
        self.next_run = time.monotonic()

    def __call__(self) -> int:
        """Run the purge if its time has come. Returns 0: purging is no reason to poll faster."""
        if time.monotonic() < self.next_run:
            return 0
        try:
            self.purger.run(self.db)
        except Exception as exc:
            log.warning("purge failed (%s); retrying", type(exc).__name__)
            self.next_run = time.monotonic() + min(self.interval, self.RETRY)
            return 0
        self.next_run = time.monotonic() + self.interval
        return 0
