"""Database engine, sessions and migrations (SQLAlchemy 2 + Alembic).

SQLite is the embedded default (WAL, foreign keys on); PostgreSQL is the scale-out store.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, exc, text
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"
# Seconds a caller is told to wait (Retry-After) while the database cannot be reached: the pool
# checks each connection before use (pool_pre_ping), so service resumes with the database.
UNAVAILABLE_RETRY_AFTER = 5


def unavailable(error: BaseException) -> bool:
    """Whether `error` says the database cannot be reached now (down, restarting, the
    connection lost, the pool exhausted) rather than that a statement is wrong: the caller should
    come back later, and nothing was written."""
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(error, exc.OperationalError | exc.InterfaceError | exc.TimeoutError)


class ReadOnlySession(Session):
    """A session that must not write: flushing one is a bug, caught at once."""

    def flush(self, objects: Any = None) -> None:
        if self.new or self.dirty or self.deleted:
            raise RuntimeError("a reading() session must not write")
        super().flush(objects)


class Database:
    """An engine plus a session factory, one per process."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Each statement its own transaction, committed when it returns: a one-statement write
        # (a single-use claim) in one round trip instead of BEGIN, the statement and COMMIT.
        self.autocommit = self.engine.execution_options(
            **(
                {"camvoice_autocommit": True}
                if self.is_sqlite
                else {"isolation_level": "AUTOCOMMIT"}
            )
        )
        self.readers = sessionmaker(
            self.engine.execution_options(camvoice_read_only=True),
            class_=ReadOnlySession,
            expire_on_commit=False,
        )

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: commit on success, roll back on any error."""
        with self.sessions() as session, session.begin():
            yield session

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A unit of work that only reads. On SQLite it begins without the write lock, so reads
        never queue behind writers (WAL lets them see the last commit meanwhile)."""
        with self.readers() as session, session.begin():
            yield session

    @contextmanager
    def reading_connection(self) -> Iterator[Connection]:
        """Database.reading for Core statements alone: the same reading transaction, without
        the cost of an ORM session (the token endpoint's read, on every refresh)."""
        with self.readers.kw["bind"].connect() as connection, connection.begin():
            yield connection

    def upgrade(self) -> None:
        """Apply every pending migration."""
        with self.engine.begin() as conn:
            cfg = alembic_config(self.url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def pending_migrations(self) -> bool:
        """True when the database is behind the newest migration (or empty)."""
        head = ScriptDirectory.from_config(alembic_config(self.url)).get_current_head()
        with self.engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
        return current != head

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()


def make_engine(url: str) -> Engine:
    """Create an engine; SQLite gets WAL, foreign keys and a busy timeout for concurrent use."""
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            private_file(Path(path))
        kwargs = {"connect_args": {"timeout": 15, "check_same_thread": False}}
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
    return engine


def private_file(path: Path) -> None:
    """Create the SQLite file 0600 in a 0700 folder before SQLite opens it: SQLite gives its
    -wal and -shm files the database file's mode, so all three stay private."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.touch(mode=0o600, exist_ok=True)
    if path.stat().st_mode & 0o077 and path.stat().st_uid == os.getuid():
        path.chmod(0o600)  # made before camvoice created its files private


def _sqlite_begin(conn: Any) -> None:
    """A writing transaction takes the write lock at BEGIN, so two writers queue on busy_timeout
    rather than failing with "database is locked" when a read turns into a write; a reading one
    (Database.reading) takes no lock at all, and Database.autocommit begins none."""
    options = conn.get_execution_options()
    if options.get("camvoice_autocommit"):
        return  # Database.autocommit: no BEGIN, so SQLite commits each statement by itself
    read_only = options.get("camvoice_read_only", False)
    conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # let the "begin" listener issue BEGIN itself
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # With WAL, NORMAL syncs at checkpoints, not at every commit: still crash-safe (no
    # corruption), and a power cut can lose only the last commits. FULL costs an fsync a write.
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=15000")
    cur.close()


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg
