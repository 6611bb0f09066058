"""Whether camvoice holds a database transaction open while it waits on another service.

Called from a fake's observer while the fake is being asked: on PostgreSQL, any connection of
the test database that sits "idle in transaction" is one; on SQLite, a writer holding the lock
is one (a second connection cannot BEGIN IMMEDIATE).
"""

from __future__ import annotations

import sqlite3

import psycopg


def open_transactions(db_url: str) -> int:
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.split("///", 1)[1], timeout=0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return 0
        except sqlite3.OperationalError:
            return 1
        finally:
            conn.close()
    url = db_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()"
        ).fetchone()
    return int(row[0]) if row else 0
