"""Fixed-window counters of failures (sign-in attempts), shared by every process and instance.

A caller counts an attempt before doing the work and forgives it on success, so parallel
attempts cannot all pass the check before any of them is counted.

With CAMVOICE_REDIS_URL they live in Redis (INCR + EXPIRE, one round trip); without it, in the
database, which every instance shares too (one atomic upsert per failure, one primary-key read
per check). Either way a limit counts across all web processes. While Redis cannot be reached,
the limits are counted in the database (FallbackLimiter): a sign-in never fails for it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Integer, String, case, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

from camvoice.db import Database
from camvoice.models import Base, utcnow
from camvoice.settings import Settings

if TYPE_CHECKING:  # imported where used: a process without Redis never loads it (6 MB)
    import redis

log = logging.getLogger(__name__)
KEY_LENGTH = 200


class RateLimit(Base):
    __tablename__ = "rate_limits"

    key: Mapped[str] = mapped_column(String(KEY_LENGTH), primary_key=True)
    window_start: Mapped[datetime] = mapped_column()
    count: Mapped[int] = mapped_column(Integer)


def stored_key(key: str) -> str:
    """The key as the table holds it: one longer than the column (an email may have 254
    characters) is stored as its SHA-256."""
    if len(key) <= KEY_LENGTH:
        return key
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def retry_after(session: Session, key: str, limit: int, window: timedelta) -> int | None:
    """Seconds until `key` may try again, or None if it is under the limit."""
    row = session.get(RateLimit, stored_key(key))
    if row is None:
        return None
    ends = row.window_start + window
    now = utcnow()
    if ends <= now or row.count < limit:
        return None
    return max(1, int((ends - now).total_seconds()) + 1)


def record_failure(session: Session, key: str, window: timedelta) -> None:
    """Count one failure for `key`, starting a new window if the old one has ended."""
    now = utcnow()
    expired = RateLimit.window_start <= now - window
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = insert(RateLimit).values(key=stored_key(key), window_start=now, count=1)
    stmt = stmt.on_conflict_do_update(
        index_elements=["key"],
        set_={
            "count": case((expired, 1), else_=RateLimit.count + 1),
            "window_start": case((expired, now), else_=RateLimit.window_start),
        },
    )
    session.execute(stmt)
    session.expire_all()


def forgive(session: Session, key: str) -> None:
    """Take back one counted attempt that turned out well."""
    session.execute(
        update(RateLimit).where(RateLimit.key == stored_key(key), RateLimit.count > 0)
        .values(count=RateLimit.count - 1)
    )  # fmt: skip


class Limiter(Protocol):
    def retry_after(self, key: str, limit: int, window: timedelta) -> int | None: ...

    def record_failure(self, key: str, window: timedelta) -> None: ...

    def forgive(self, key: str) -> None: ...


def sign_in_limits(settings: Settings, email: str, address: str) -> list[tuple[str, int]]:
    """The failure limits one sign-in counts against: per account and address (a guesser stops
    only themselves), per address, and per account from everywhere (far higher, so the owner is
    slowed down, not locked out, by guesses spread over many addresses)."""
    return [
        (f"login:acct-ip:{email}|{address}", settings.login_max_failures_account_address),
        (f"login:ip:{address}", settings.login_max_failures_ip),
        (f"login:acct:{email}", settings.login_max_failures_account),
    ]


def attempt(limiter: Limiter, limits: list[tuple[str, int]], window: timedelta) -> int | None:
    """Count one attempt against each (key, limit), or say how long to wait (seconds).

    An attempt refused because a key is over its limit counts against none of them, so a caller
    who keeps trying while throttled neither keeps the limit alive nor spends another key's
    budget (an address throttled on one account cannot use up that account's own budget).
    Counted before the work and checked again after, so parallel attempts cannot all slip under
    a limit: one that finds itself over is refused and taken back.
    """
    wait = max((limiter.retry_after(key, limit, window) or 0) for key, limit in limits)
    if not wait:
        for key, _ in limits:
            limiter.record_failure(key, window)
        wait = max((limiter.retry_after(key, limit + 1, window) or 0) for key, limit in limits)
        if wait:
            for key, _ in limits:
                limiter.forgive(key)
    return wait or None


class DatabaseLimiter:
    def __init__(self, db: Database) -> None:
        self.db = db

    def retry_after(self, key: str, limit: int, window: timedelta) -> int | None:
        with self.db.session() as session:
            return retry_after(session, key, limit, window)

    def record_failure(self, key: str, window: timedelta) -> None:
        with self.db.session() as session:
            record_failure(session, key, window)

    def forgive(self, key: str) -> None:
        with self.db.session() as session:
            forgive(session, key)


class RedisLimiter:
    PREFIX = "camvoice:limit:"

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def retry_after(self, key: str, limit: int, window: timedelta) -> int | None:
        pipe = self.client.pipeline()
        pipe.get(self.PREFIX + key)
        pipe.ttl(self.PREFIX + key)
        count, ttl = pipe.execute()
        if count is None or int(count) < limit:
            return None
        return max(1, int(ttl)) if ttl and ttl > 0 else int(window.total_seconds())

    def record_failure(self, key: str, window: timedelta) -> None:
        pipe = self.client.pipeline()
        pipe.incr(self.PREFIX + key)
        pipe.expire(self.PREFIX + key, int(window.total_seconds()), nx=True)
        pipe.execute()

    def forgive(self, key: str) -> None:
        # DECR on a key that expired meanwhile would create it at -1: only touch a live one.
        self.client.eval(
            "if redis.call('exists', KEYS[1]) == 1 then return redis.call('decr', KEYS[1]) end",
            1,
            self.PREFIX + key,
        )


class FallbackLimiter:
    """Redis first; while Redis cannot be reached, the database, which every instance shares
    too. After a Redis failure Redis is left alone for REDIS_RETRY seconds, so a Redis that
    hangs costs one timeout per instance, not one per request. Counts made in one store are not
    seen in the other: across the switch a limit starts again, which is the price of staying up.
    """

    REDIS_RETRY = 10.0

    def __init__(self, primary: RedisLimiter, fallback: DatabaseLimiter) -> None:
        self.primary = primary
        self.fallback = fallback
        self._skip_redis_until = 0.0

    def _either(self, method: str, *args: Any) -> Any:
        """Call `method` on Redis, or on the database while Redis is away."""
        import redis  # loaded already: the primary's client is a redis.Redis

        if time.monotonic() >= self._skip_redis_until:
            try:
                return getattr(self.primary, method)(*args)
            except redis.RedisError as exc:
                self._skip_redis_until = time.monotonic() + self.REDIS_RETRY
                log.warning("Redis unavailable (%s); rate limits counted in the database",
                            type(exc).__name__)  # fmt: skip
        return getattr(self.fallback, method)(*args)

    def retry_after(self, key: str, limit: int, window: timedelta) -> int | None:
        return self._either("retry_after", key, limit, window)  # type: ignore[no-any-return]

    def record_failure(self, key: str, window: timedelta) -> None:
        self._either("record_failure", key, window)

    def forgive(self, key: str) -> None:
        self._either("forgive", key)
