"""Database engine, sessions and migrations (SQLAlchemy 2 + Alembic).

SQLite is the embedded default (WAL, foreign keys on); PostgreSQL is the scale-out store.
"""

from __future__ import annotations

import fcntl
import os
import select
import sqlite3
import threading
import time
from collections import namedtuple
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    Connection,
    Engine,
    Executable,
    TextClause,
    create_engine,
    event,
    exc,
    make_url,
    text,
)
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"
# Seconds a caller is told to wait (Retry-After) while the database cannot be reached: the pool
# checks each connection before use (Liveness), so service resumes with the database.
UNAVAILABLE_RETRY_AFTER = 5
# Seconds a SQLite writer waits for the write lock (in WriteQueue, then in SQLite's busy handler).
BUSY_TIMEOUT = 15


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
        # On PostgreSQL a reading unit of work runs without BEGIN and ROLLBACK (two round trips
        # fewer): at READ COMMITTED, the default, each statement takes its own snapshot inside a
        # transaction too, so it sees exactly what it would there.
        self.reader = self.engine.execution_options(
            camvoice_read_only=True,
            **({} if self.is_sqlite else {"isolation_level": "AUTOCOMMIT"}),
        )
        self.readers = sessionmaker(self.reader, class_=ReadOnlySession, expire_on_commit=False)
        self.prepared: dict[int, Prepared] = {}  # id(statement) -> its compiled form here

    @contextmanager
    def driver(self) -> Iterator[Driver]:
        """A pooled connection used through the driver (Driver): for the hot paths' reads and
        writes, whose few short statements SQLAlchemy's per-call machinery cost several times
        over. Each statement commits by itself unless it runs in Driver.transaction()."""
        dbapi_error = self.engine.dialect.loaded_dbapi.Error
        try:
            fairy = self.engine.raw_connection()
        except dbapi_error as error:  # the server cannot be reached: what Connection raises
            raise exc.DBAPIError.instance(
                None, None, error, dbapi_error, dialect=self.engine.dialect
            ) from error
        connection = fairy.dbapi_connection
        try:
            if not self.is_sqlite:
                connection.autocommit = True  # SQLite's connections are (isolation_level None)
            yield Driver(self, fairy)
        finally:
            if not self.is_sqlite and fairy.is_valid:
                try:
                    connection.autocommit = False  # as the pool's other users expect it
                except dbapi_error as error:
                    fairy.invalidate(error)
            fairy.close()

    def prepare(self, statement: Executable) -> Prepared:
        """`statement` compiled for this database once (a module-level constant: the cache is
        keyed by identity and keeps the statement alive)."""
        prepared = self.prepared.get(id(statement))
        if prepared is None:
            prepared = self.prepared[id(statement)] = Prepared(statement, self.engine.dialect)
        return prepared

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
        never queue behind writers (WAL lets them see the last commit meanwhile); on PostgreSQL
        it begins no transaction at all."""
        with self.readers() as session, session.begin():
            yield session

    def upgrade(self) -> None:
        """Apply every pending migration."""
        with self.engine.begin() as conn:
            cfg = alembic_config(self.url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def pending_migrations(self) -> bool:
        """True when the database is behind the newest migration (or empty)."""
        head = ScriptDirectory.from_config(alembic_config(self.url)).get_current_head()
        with self.reader.connect() as conn:  # never queues behind writers (readyz)
            current = MigrationContext.configure(conn).get_current_revision()
        return current != head

    def ping(self) -> None:
        with self.reader.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()


class Prepared:
    """A Core statement compiled once for one dialect, with the conversions SQLAlchemy applies
    to its parameters and columns (the types' own bind and result processors).

    Connection.execute does the same for a cached statement, but its per-call machinery
    (events, an execution context, a Result) costs several times what a short statement costs
    the database: on the directives' paths, more than all their statements together. For
    module-level statements (Database.prepare keeps one per statement object) whose values are
    bound parameters, never rendered into the SQL."""

    def __init__(self, statement: Executable, dialect: Any) -> None:
        compiled = statement.compile(dialect=dialect)
        if compiled.escaped_bind_names:
            raise ValueError("a bound parameter's name needs escaping: rename it")
        if getattr(compiled, "implicit_returning", None):
            raise ValueError("an INSERT that returns its new key unasked: make it .inline()")
        self.statement = statement  # keeps id(statement) from being reused while cached
        self.sql = str(compiled)
        self.defaults = dict(compiled.params)  # literal values the statement binds itself
        self.order = list(compiled.positiontup or ()) if compiled.positional else None
        self.binds = {}  # by the name the driver gets (a literal's is made up)
        self.required = set()  # bindparam()s without a value: the caller must give them
        for bind, name in compiled.bind_names.items():
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                self.binds[name] = process
            if bind.required:
                self.required.add(name)
        columns = list(getattr(statement, "exported_columns", ()))
        # Whether it returns rows (a SELECT, a RETURNING) is known here for a Core statement,
        # where asking the cursor (its description) builds a column object per column on every
        # statement (psycopg); a text() one is asked (None).
        self.returns_rows = (
            True if columns else None if isinstance(statement, TextClause) else False
        )
        self.row = namedtuple("Row", [column.key for column in columns], rename=True)  # type: ignore[misc]
        self.results = []
        for index, column in enumerate(columns):
            process = column.type.dialect_impl(dialect).result_processor(dialect, None)
            if process is not None:
                self.results.append((index, process))

    def parameters(self, params: Mapping[str, Any]) -> Any:
        """The driver's parameters: defaults, then the caller's, each converted for the driver."""
        if not self.required.issubset(params):
            missing = ", ".join(sorted(self.required.difference(params)))
            raise exc.ArgumentError(f"a value is required for bound parameters: {missing}")
        values = {**self.defaults, **params}
        for name, process in self.binds.items():
            values[name] = process(values[name])
        return values if self.order is None else tuple(values[name] for name in self.order)

    def converted(self, raw: Any) -> Any:
        """A driver's row as the statement's named row, with SQLAlchemy's values (a text()
        statement's, which names no columns, as the driver's tuple)."""
        if self.returns_rows is None:
            return tuple(raw)
        if self.results:
            raw = list(raw)
            for index, process in self.results:
                raw[index] = process(raw[index])
        return self.row._make(raw)


class Driver:
    """One pooled connection, in autocommit mode, for Prepared statements (Database.driver).

    `execute` is Connection.execute for the few shapes the hot paths use: each statement
    commits by itself, unless it runs inside `transaction()`. Errors are SQLAlchemy's, as
    Connection raises them (unavailable() reads them the same way), and a connection the server
    dropped is thrown away rather than put back in the pool; the engine's before_cursor_execute
    listeners hear each statement (with no Connection). On SQLite a write waits its turn in the
    WriteQueue and leaves it once its statement (or transaction) is done."""

    def __init__(self, db: Database, fairy: Any) -> None:
        self.db = db
        self.fairy = fairy
        self.connection = fairy.dbapi_connection
        self.queued = isinstance(self.connection, QueuedConnection)
        self.in_transaction = False

    def execute(
        self, statement: Executable, params: Mapping[str, Any] | list[Mapping[str, Any]]
    ) -> Rows:
        """Run `statement` (for each of a list of parameter sets: executemany)."""
        if not (self.queued and statement.is_dml and not self.in_transaction):
            return self.run(self.db.prepare(statement), params)
        self.connection.enter_queue()
        try:
            return self.run(self.db.prepare(statement), params)
        finally:
            self.connection.leave_queue()

    @contextmanager
    def transaction(self) -> Iterator[Driver]:
        """A writing transaction: committed when the block ends, rolled back on any error. On
        SQLite it takes the write lock at BEGIN, after its turn in the WriteQueue."""
        if self.queued:
            self.connection.enter_queue()
        try:
            self.run(self.db.prepare(BEGIN_WRITING[self.db.is_sqlite]), {})
            self.in_transaction = True
            try:
                yield self
            except BaseException:
                self.run(self.db.prepare(ROLLBACK), {})
                raise
            self.run(self.db.prepare(COMMIT), {})
        finally:
            self.in_transaction = False
            if self.queued:
                self.connection.leave_queue()

    def run(self, prepared: Prepared, params: Mapping[str, Any] | list[Mapping[str, Any]]) -> Rows:
        many = isinstance(params, list)
        cursor = self.connection.cursor()
        parameters = (
            [prepared.parameters(each) for each in params] if many else prepared.parameters(params)
        )
        heard = self.db.engine.dispatch.before_cursor_execute
        if heard:  # what counts statements (tests, benches) hears these too
            heard(None, cursor, prepared.sql, parameters, None, many)
        try:
            if many:
                cursor.executemany(prepared.sql, parameters)
            else:
                cursor.execute(prepared.sql, parameters)
            # Every row is read, so SQLite's statement ends (and its write commits) here.
            rows = prepared.returns_rows and not many  # executemany returns no rows here
            if rows is None:
                rows = cursor.description is not None
            raw = cursor.fetchall() if rows else []
            count = cursor.rowcount
        except self.db.engine.dialect.loaded_dbapi.Error as error:
            raise self.failed(error, prepared, cursor) from error
        finally:
            cursor.close()
        return Rows([prepared.converted(row) for row in raw], count)

    def failed(self, error: Exception, prepared: Prepared, cursor: Any) -> exc.DBAPIError:
        dialect = self.db.engine.dialect
        lost = dialect.is_disconnect(error, self.connection, cursor)
        if lost:
            self.fairy.invalidate(error)
        return exc.DBAPIError.instance(
            prepared.sql, None, error, dialect.loaded_dbapi.Error,
            connection_invalidated=lost, dialect=dialect,
        )  # fmt: skip


# A writing transaction's BEGIN by dialect (is_sqlite): SQLite's takes the write lock at once.
BEGIN_WRITING = {True: text("BEGIN IMMEDIATE"), False: text("BEGIN")}
COMMIT = text("COMMIT")
ROLLBACK = text("ROLLBACK")


@dataclass(frozen=True)
class Rows:
    """What Driver.execute returns: the rows, converted, and the driver's row count."""

    rows: list[Any]
    rowcount: int

    def one_or_none(self) -> Any | None:
        if len(self.rows) > 1:
            raise exc.MultipleResultsFound("more than one row where one at most was expected")
        return self.rows[0] if self.rows else None

    def first(self) -> Any | None:
        return self.rows[0] if self.rows else None


def connection_of(session: Session | Connection | Driver) -> Connection | Driver:
    """What runs a Core statement for a caller given a session, a Connection or a Driver: the
    session's connection (in its transaction), or the one given."""
    return session.connection() if isinstance(session, Session) else session


def make_engine(url: str) -> Engine:
    """Create an engine; SQLite gets WAL, foreign keys, a busy timeout and a write queue."""
    kwargs: dict[str, Any] = {}
    queue: WriteQueue | None = None
    if url.startswith("sqlite"):
        path = make_url(url).database or ""  # "sqlite://" and ":memory:": a memory database
        connect_args: dict[str, Any] = {"timeout": BUSY_TIMEOUT, "check_same_thread": False}
        kwargs = {"connect_args": connect_args}
        if path and path != ":memory:" and not path.startswith("file:"):
            # Memory databases (one per connection: nothing to queue for) and URI filenames
            # (which may name one too) keep SQLite's busy handler alone.
            private_file(Path(path))
            queue = WriteQueue(Path(path + "-writelock"))
            connect_args["factory"] = QueuedConnection
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        if queue is not None:
            event.listen(engine, "connect", queue.join)
    else:
        liveness = Liveness(engine.dialect)
        event.listen(engine.pool, "checkin", liveness.checkin)
        event.listen(engine.pool, "checkout", liveness.checkout)
    return engine


class Liveness:
    """Checks a pooled server connection before use, as pool_pre_ping does, without its round
    trip (a SELECT 1 per checkout: several per directive) while the connection is in steady use.

    A server that restarts, fails over or ends a session (pg_terminate_backend, an idle timeout)
    sends its goodbye and closes the socket, so an idle connection with bytes to read is dead:
    that check costs no round trip and is made at every checkout. A connection that sat idle
    longer than PING_AFTER_IDLE is pinged too (a silently dropped one: a firewall, a NAT
    timeout). A dead connection is replaced before the caller gets it (DisconnectionError makes
    the pool connect anew); one that breaks mid-statement invalidates the whole pool, as before.
    """

    PING_AFTER_IDLE = 1.0  # seconds

    def __init__(self, dialect: Any) -> None:
        self.dialect = dialect

    def checkin(self, _dbapi_conn: Any, record: Any) -> None:
        record.info["camvoice_idle_since"] = time.monotonic()

    def checkout(self, dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("camvoice_idle_since")
        if idle_since is None:
            return  # connected just now
        if self.hung_up(dbapi_conn):
            raise exc.DisconnectionError("the server closed the connection")
        if time.monotonic() - idle_since >= self.PING_AFTER_IDLE:
            try:
                self.dialect.do_ping(dbapi_conn)
            except Exception as error:
                raise exc.DisconnectionError("the connection failed its ping") from error

    @staticmethod
    def hung_up(dbapi_conn: Any) -> bool:
        """Whether an idle connection's socket has anything to read (or is closed)."""
        fileno = getattr(dbapi_conn, "fileno", None)
        if fileno is None:
            return False
        try:
            fd = fileno()
        except Exception:  # the driver knows it is closed
            return True
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))


def private_file(path: Path) -> None:
    """Create the SQLite file 0600 in a 0700 folder before SQLite opens it: SQLite gives its
    -wal and -shm files the database file's mode, so all three stay private."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.touch(mode=0o600, exist_ok=True)
    if path.stat().st_mode & 0o077 and path.stat().st_uid == os.getuid():
        path.chmod(0o600)  # made before camvoice created its files private


class WriteQueue:
    """Where SQLite writers of one database wait for the write lock, in the kernel.

    SQLite's own busy handler sleep-polls (sleeps of 1 to 100 ms) while another connection
    holds the write lock, so a waiter wakes late and the CPU idles meanwhile. Here a writer first
    takes this process's lock (threads wake the moment it is released; after BUSY_TIMEOUT the
    writer fails with "database is locked", as it did in the busy handler), then an exclusive
    flock on a file beside the database (one thread per process waits there, until the other
    process's transaction ends; the kernel drops the flock if a process dies), and only then
    BEGIN IMMEDIATE. Both are released once the COMMIT or ROLLBACK has finished
    (QueuedConnection). A thread that already holds the queue (a write opened inside another
    write) does not wait on it again: it goes to the busy handler, as a process that does not use
    the queue (an older camvoice, the sqlite3 CLI) always does.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.threads = threading.Lock()
        self.owner: int | None = None  # thread holding the queue
        self.fd: int | None = None
        self.pid = 0  # process that opened fd (a forked child opens its own)

    def join(self, dbapi_conn: Any, _record: Any) -> None:
        """On connect: the connection enters the queue before each write (the "begin" hook)."""
        dbapi_conn.queue = self

    def enter(self) -> bool:
        """Wait for this database's write turn; False when this thread holds it already."""
        if self.owner == threading.get_ident():
            return False
        if not self.threads.acquire(timeout=BUSY_TIMEOUT):
            # What SQLite's busy handler says after busy_timeout: the caller answers 503.
            locked = sqlite3.OperationalError("database is locked")
            raise exc.OperationalError("BEGIN IMMEDIATE", None, locked)
        try:
            fd = self.file()
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)  # waits with the GIL released
        except BaseException:
            self.threads.release()
            raise
        self.owner = threading.get_ident()
        return True

    def leave(self) -> None:
        self.owner = None
        try:
            if self.fd is not None and self.pid == os.getpid():
                fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            self.threads.release()

    def file(self) -> int | None:
        """The lock file's descriptor for this process; None when it cannot be opened (a
        read-only folder): then processes queue on SQLite's busy handler, threads still here."""
        if self.pid != os.getpid():
            self.pid = os.getpid()
            try:
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError:
                self.fd = None
        return self.fd


class QueuedConnection(sqlite3.Connection):
    """A pysqlite connection that leaves the write queue once its COMMIT or ROLLBACK is done
    (SQLAlchemy's commit and rollback events fire before them; the pool's reset on checkin is a
    rollback too; a Driver leaves it itself)."""

    queue: WriteQueue | None = None
    queued = False

    def enter_queue(self) -> None:
        if self.queue is not None and not self.queued:
            self.queued = self.queue.enter()

    def leave_queue(self) -> None:
        if self.queued and self.queue is not None:
            self.queued = False
            self.queue.leave()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.leave_queue()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.leave_queue()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.leave_queue()


def _sqlite_begin(conn: Any) -> None:
    """A writing transaction takes the write lock at BEGIN, so two writers queue (WriteQueue,
    then busy_timeout) rather than failing with "database is locked" when a read turns into a
    write; a reading one (Database.reading) takes no lock at all. (A Driver's writes queue and
    begin by themselves: they go round SQLAlchemy's Connection.)"""
    options = conn.get_execution_options()
    if options.get("camvoice_read_only", False):
        conn.exec_driver_sql("BEGIN")
        return
    dbapi_conn = conn.connection.dbapi_connection
    if isinstance(dbapi_conn, QueuedConnection):
        dbapi_conn.enter_queue()
    try:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    except BaseException:
        if isinstance(dbapi_conn, QueuedConnection):
            dbapi_conn.leave_queue()
        raise


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # let the "begin" listener issue BEGIN itself
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # With WAL, NORMAL syncs at checkpoints, not at every commit: still crash-safe (no
    # corruption), and a power cut can lose only the last commits. FULL costs an fsync a write.
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    # The backstop behind WriteQueue: for writers outside it (another program, a nested write).
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT * 1000}")
    cur.close()


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg
