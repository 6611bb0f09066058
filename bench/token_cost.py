"""What one refresh at the token endpoint costs: statements, transactions, and time in-process.

POST /oauth/token with grant_type=refresh_token and client_secret_post, as Alexa and Google
send it, through the real app with Flask's test client, on SQLite. Each request presents a
different refresh token, used for the first time (the child of a used parent, as every refresh
after a link's first is), issued beforehand straight into the tables; each answer is checked to
carry a new access token. The counts are exact (BEGIN counts as a statement, its COMMIT does
not; a transaction is a BEGIN); the times are in-process, without HTTP: the median wall time, and the CPU time of this
process per refresh (total over the runs), which a machine shared with other work disturbs less;
and the Python function calls per refresh (cProfile over up to 200 more), which it does not
disturb at all. With --profile, cProfile's top functions (by cumulative and by own time).

    .venv/bin/python bench/token_cost.py [--runs 1000] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import event

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from camvoice.accounts import create_account  # noqa: E402
from camvoice.db import Database  # noqa: E402
from camvoice.settings import load_settings  # noqa: E402
from service.app import create_app  # noqa: E402
from tests.oauth_support import ALEXA_URIS, register, unused_refresh_tokens  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=1000, help="timed refreshes (1: smoke)")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="camvoice-bench-"))
    settings = load_settings(
        data_dir=folder, database_url=f"sqlite:///{folder / 'camvoice.db'}",
        secret_key="bench-secret-key-" + "x" * 32, public_url="http://127.0.0.1:8080",
        media_dir=folder / "media",
    )  # fmt: skip
    db = Database(settings.sqlalchemy_url)
    db.upgrade()
    with db.session() as session:
        owner_id = create_account(session, "bench@example.com", "bench-password").id
    client = register(db, "Bench Alexa", ALEXA_URIS, "alexa")
    tokens = iter(unused_refresh_tokens(db, owner_id, client.client_id, args.runs + 202))
    http = create_app(settings, db).test_client()

    def refresh() -> None:
        body = {"grant_type": "refresh_token", "refresh_token": next(tokens),
                "client_id": client.client_id, "client_secret": client.secret}  # fmt: skip
        answer = http.post("/oauth/token", data=body)
        assert answer.status_code == 200 and answer.get_json()["access_token"], answer.data

    seen = {"statements": 0, "transactions": 0}

    def counted(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if statement == "COMMIT":  # sent as a statement by Database.driver only: not counted
            return
        seen["statements"] += 1
        seen["transactions"] += statement.startswith("BEGIN")

    refresh()  # warm
    event.listen(db.engine, "before_cursor_execute", counted)
    refresh()
    event.remove(db.engine, "before_cursor_execute", counted)
    times = []
    cpu = time.process_time()
    for _ in range(args.runs):
        started = time.perf_counter()
        refresh()
        times.append(time.perf_counter() - started)
    cpu = (time.process_time() - cpu) / args.runs
    profiled = min(args.runs, 200)
    profile = cProfile.Profile()
    profile.runcall(lambda: [refresh() for _ in range(profiled)])
    stats = pstats.Stats(profile)
    calls = (stats.total_calls - 1) / profiled  # type: ignore[attr-defined]
    print(f"first-use refresh, SQLite, client_secret_post, {args.runs} timed runs")
    print(f"  {'token refresh, first use':30} statements {seen['statements']}  transactions "
          f"{seen['transactions']}  median {statistics.median(times) * 1000:.2f} ms  "
          f"cpu {cpu * 1000:.2f} ms  python calls {calls:.0f}")  # fmt: skip
    if args.profile:
        for order in ("cumulative", "tottime"):
            stats.sort_stats(order).print_stats(35)
    db.dispose()


if __name__ == "__main__":
    main()
