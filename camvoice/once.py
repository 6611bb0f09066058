"""Single use: a key (a signed forward's timestamp and signature) accepted once, by every instance.

A signature is valid for its whole time window; without this, anyone who captured one signed
forward could deliver it again within the window and get fresh answers (stream URLs) for it.
So the first delivery claims the key and every later one, on any instance, is refused.

With CAMVOICE_REDIS_URL the claim is a SET NX with an expiry (one round trip); without it, an
INSERT into a table whose primary key is the key, which every instance shares too (the loser of
two concurrent claims inserts nothing). A claim is one INSERT that commits by itself, durable
before the directive is read (one round trip: no BEGIN or COMMIT around it); at most once every
PURGE_INTERVAL seconds a process's claim also deletes the expired rows, so the table holds
little more than one window's worth of forwards.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import String, bindparam, delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, mapped_column

from camvoice.db import Database
from camvoice.models import Base, utcnow

if TYPE_CHECKING:  # imported where used: a process without Redis never loads it (6 MB)
    import redis

PURGE_INTERVAL = 60.0


class UsedOnce(Base):
    __tablename__ = "used_once"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class Once(Protocol):
    def claim(self, key: str, ttl: int) -> bool:
        """True for the first claim of `key` within `ttl` seconds, False for every later one."""
        ...


PURGE = delete(UsedOnce).where(UsedOnce.expires_at < bindparam("now"))


class DatabaseOnce:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.purged = float("-inf")  # monotonic time of this process's last purge
        insert = postgresql.insert if db.engine.dialect.name == "postgresql" else sqlite.insert
        self.insert = (
            insert(UsedOnce)
            .values(key=bindparam("key"), expires_at=bindparam("expires_at"))
            .on_conflict_do_nothing(index_elements=["key"])
            .returning(UsedOnce.key)
        )

    def claim(self, key: str, ttl: int) -> bool:
        now = utcnow()
        with self.db.driver() as driver:  # each statement commits by itself
            if time.monotonic() - self.purged >= PURGE_INTERVAL:
                self.purged = time.monotonic()
                driver.execute(PURGE, {"now": now})
            values = {"key": key, "expires_at": now + timedelta(seconds=ttl)}
            # No row inserted: claimed before, by this instance or another.
            return driver.execute(self.insert, values).first() is not None


class RedisOnce:
    """Claims in Redis; while Redis is unreachable, in the database (so directives still work;
    a replay sent to another instance during that outage could then pass once)."""

    PREFIX = "camvoice:once:"

    def __init__(self, client: redis.Redis, fallback: DatabaseOnce) -> None:
        self.client = client
        self.fallback = fallback

    def claim(self, key: str, ttl: int) -> bool:
        import redis  # loaded already: self.client is a redis.Redis

        try:
            return bool(self.client.set(self.PREFIX + key, b"1", nx=True, ex=ttl))
        except redis.RedisError:
            return self.fallback.claim(key, ttl)
