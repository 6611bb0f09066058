"""How long the activity page's views-per-day query takes: one owner, 10 cameras, `--rows`
stream.requested audit rows spread over 40 days, on SQLite (a temporary file) and, when it
answers, PostgreSQL (a temporary database on 127.0.0.1:5432). It checks the query counted every
row of the last 30 days before timing it.

    .venv/bin/python bench/activity_chart.py [--rows 50000] [--runs 5]
    .venv/bin/python bench/activity_chart.py --rows 500 --runs 1   # smoke
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import psycopg
from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from camvoice.accounts import create_account
from camvoice.db import Database
from camvoice.models import AuditEvent, utcnow
from console import charts

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
CAMERAS = 10


def measure(url: str, rows: int, runs: int) -> list[float]:
    """Seed one owner's views, check the charts' totals, then time view_charts `runs` times."""
    db = Database(url)
    db.upgrade()
    with db.session() as session:
        account_id = create_account(session, "bench@example.com", "bench password 1").id
    cameras = {f"cam_{i:016x}": f"Camera {i}" for i in range(CAMERAS)}
    now = utcnow()
    spread = 40 * 24 * 60  # minutes: some rows fall before the 30 days and must not count
    seeded = [
        {"action": "stream.requested", "actor": "alexa", "account_id": account_id,
         "camera_id": camera, "at": now - timedelta(minutes=(j * 37) % spread), "detail": {}}
        for j, camera in enumerate((list(cameras) * (rows // CAMERAS + 1))[:rows])
    ]  # fmt: skip
    with db.session() as session:
        session.execute(insert(AuditEvent), seeded)
    first = now.date() - timedelta(days=charts.DAYS - 1)
    expected = sum(1 for row in seeded if row["at"].date() >= first)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        with db.reading() as session:
            drawn = charts.view_charts(session, account_id, cameras, now.date())
        times.append(time.perf_counter() - started)
        assert sum(chart.total for chart in drawn) == expected, "the charts miscounted"
    db.dispose()
    return times


def postgres(rows: int, runs: int) -> list[float] | None:
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3) as conn:
            name = f"camvoice_bench_{secrets.token_hex(4)}"
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error:
        return None
    try:
        base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
        return measure(f"{base}/{name}", rows, runs)
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=50_000, help="audit rows of the owner")
    parser.add_argument("--runs", type=int, default=5, help="timed runs (1: smoke mode)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        results = {"SQLite": measure(f"sqlite:///{folder}/bench.db", args.rows, args.runs)}
    pg = postgres(args.rows, args.runs)
    if pg is not None:
        results["PostgreSQL"] = pg
    print(f"views-per-day query, {CAMERAS} cameras, {args.rows} audit rows, {args.runs} runs")
    for name, times in results.items():
        print(f"  {name:<11} median {statistics.median(times) * 1000:.1f} ms"
              f"   min {min(times) * 1000:.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
