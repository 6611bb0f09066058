"""SQLite writers wait for the write lock in the kernel (camvoice/db.py WriteQueue), not in
SQLite's sleep-polling busy handler: a write waits on the flock of a file beside the database
without holding SQLite's lock, runs once the flock is released, and two processes writing at
once both get through even with the busy handler turned off.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.exc import OperationalError

import camvoice.db
from camvoice.db import Database, unavailable
from camvoice.once import DatabaseOnce, UsedOnce
from tests.conftest import wait_for, write_held

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'camvoice.db'}")
    database.upgrade()
    yield database
    database.dispose()


def flock_waiters(path: Path) -> int:
    """Blocked flock requests on `path`, as the kernel lists them ("->" lines of /proc/locks)."""
    inode = f":{os.stat(path).st_ino} "
    lines = Path("/proc/locks").read_text().splitlines()
    return sum(1 for line in lines if "->" in line and "FLOCK" in line and inode in line)


def sqlite_write_lock_free(path: Path) -> bool:
    conn = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()


def write_session(db: Database) -> None:
    with db.session() as session:
        session.execute(text("UPDATE accounts SET email = email"))


def claim(db: Database) -> None:
    assert DatabaseOnce(db).claim("key-1", 60)


@pytest.mark.parametrize("write", [write_session, claim], ids=["transaction", "autocommit"])
def test_a_write_waits_on_the_lock_file_and_runs_when_it_is_released(
    db: Database, tmp_path: Path, write: Callable[[Database], None]
) -> None:
    lock_file = tmp_path / "camvoice.db-writelock"
    assert lock_file.exists()  # made by the engine's first connection (db.upgrade)
    assert lock_file.stat().st_mode & 0o777 == 0o600
    fd = os.open(lock_file, os.O_RDWR)
    done = threading.Event()
    failures: list[BaseException] = []

    def writer() -> None:
        try:
            write(db)
            done.set()
        except BaseException as error:  # reported by the test thread
            failures.append(error)

    fcntl.flock(fd, fcntl.LOCK_EX)  # as another process's writer would hold it
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        wait_for(lambda: flock_waiters(lock_file) == 1, "the writer to wait on the flock", 10)
        assert not done.is_set()
        # It waits without SQLite's write lock: nobody else queues behind it in SQLite.
        assert sqlite_write_lock_free(tmp_path / "camvoice.db")
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    thread.join(30)
    assert not failures and done.is_set()
    assert flock_waiters(lock_file) == 0
    assert sqlite_write_lock_free(tmp_path / "camvoice.db")  # released after the commit


def test_reads_take_no_turn_in_the_queue(db: Database, tmp_path: Path) -> None:
    fd = os.open(tmp_path / "camvoice.db-writelock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with db.reading() as session:  # would wait on the flock if it queued
            assert session.execute(select(func.count()).select_from(UsedOnce)).scalar() == 0
        db.ping()  # /readyz's checks read only too
        assert not db.pending_migrations()
    finally:
        os.close(fd)


def test_a_write_inside_a_write_does_not_wait_on_itself(db: Database) -> None:
    """A thread already in the queue goes to SQLite's busy handler (here set to give up at once)
    rather than waiting on the queue it holds."""
    event.listen(db.engine, "connect", lambda conn, _record: conn.execute("PRAGMA busy_timeout=0"))
    db.engine.dispose()  # new connections get the listener
    with db.session() as session:
        session.execute(text("UPDATE accounts SET email = email"))
        with pytest.raises(Exception, match="database is locked"):
            DatabaseOnce(db).claim("inner", 60)
    assert DatabaseOnce(db).claim("after", 60)  # and the queue is free again


WRITER = """
import sys, threading
from datetime import timedelta
from sqlalchemy import event
import camvoice.db
from camvoice.db import Database, unavailable
from camvoice.models import utcnow
from camvoice.once import DatabaseOnce, UsedOnce

url, name = sys.argv[1], sys.argv[2]
db = Database(url)
# No busy handler: a writer that reached SQLite while another held its lock fails at once.
event.listen(db.engine, "connect", lambda conn, _record: conn.execute("PRAGMA busy_timeout=0"))
once = DatabaseOnce(db)

failures = []

def work(thread):
    try:
        for i in range(40):
            assert once.claim(f"{name}-{thread}-{i}", 60)
            with db.session() as session:
                later = utcnow() + timedelta(minutes=5)  # not purged by the other's claims
                session.add(UsedOnce(key=f"{name}-{thread}-{i}-row", expires_at=later))
    except BaseException as error:
        failures.append(error)
        raise

threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
for t in threads: t.start()
for t in threads: t.join()
sys.exit(1 if failures else 0)
"""


def test_two_processes_writing_at_once_both_get_through(db: Database, tmp_path: Path) -> None:
    script = textwrap.dedent(WRITER)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, db.url, name],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    errors = [process.communicate(timeout=120)[1] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], errors
    assert not any("database is locked" in error for error in errors)
    with db.reading() as session:
        assert session.execute(select(func.count()).select_from(UsedOnce)).scalar() == 2 * 4 * 80


def test_memory_and_bare_file_databases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    memory = Database("sqlite://")
    memory.upgrade()
    assert DatabaseOnce(memory).claim("k", 60) and not DatabaseOnce(memory).claim("k", 60)
    memory.dispose()
    monkeypatch.chdir(tmp_path)
    bare = Database("sqlite:///bare.db")  # no folder: the lock file sits beside it
    bare.upgrade()
    assert DatabaseOnce(bare).claim("k", 60)
    bare.dispose()
    assert (tmp_path / "bare.db-writelock").exists()


def test_a_writer_gives_up_after_the_busy_timeout_with_database_is_locked(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As it did in SQLite's busy handler: the app answers 503 (unavailable), not 500."""
    monkeypatch.setattr(camvoice.db, "BUSY_TIMEOUT", 0.1)
    with write_held(db), pytest.raises(OperationalError, match="database is locked") as raised:
        write_session(db)
    assert unavailable(raised.value)
    write_session(db)  # the queue is free again
