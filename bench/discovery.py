"""Alexa Discover and Google SYNC of an owner with 300 cameras, one client, this code beside
another checkout (the code before the discovery cache), in one run.

For each tree: a child process with that tree's modules seeds a fresh database (an owner with 300
local demo cameras, an Alexa and a Google token), counts the SQL statements of one Discover and
one SYNC in-process (the first request after a camera change, which builds the answer, and the
next, which may find it kept), and `camvoice serve` from that tree serves it (gunicorn, 2 gthread workers x 4 threads).
One client then sends Discover and SYNC to each server in turn, over keep-alive HTTP, each answer
checked to list all 300 cameras before it is timed. Prints p50 and p90 per case and tree, the
statements, and the RSS of each server's workers after the run.

    .venv/bin/python bench/discovery.py --base /path/to/checkout [--runs 200] [--postgres]
    .venv/bin/python bench/discovery.py --smoke   # this tree, SQLite, 10 cameras, 5 runs
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]
TREE = Path(os.environ.get("BENCH_TREE") or HERE)  # whose modules a seeding child imports
SECRET = "bench-forwarder-secret-0123456789"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
CAMERAS = int(os.environ.get("BENCH_CAMERAS", "300"))  # the smoke mode's owner has 10


class BenchFailure(Exception):
    """A case did not answer all 300 cameras: its figure would time something else."""


# --- the child: seed one database and count statements, with one tree's code -----------------


def seed(db_url: str, out: Path) -> None:
    """Runs under BENCH_TREE's modules: migrate, make the owner and tokens, count statements."""
    sys.path.insert(0, str(TREE))
    from sqlalchemy import event

    from camvoice.accounts import create_account
    from camvoice.cameras import Registry
    from camvoice.db import Database
    from camvoice.outbox import Outbox
    from camvoice.settings import load_settings
    from oauth.models import Grant
    from oauth.tokens import new_secret, store_tokens
    from service.app import create_app
    from tests.oauth_support import ALEXA_URIS, GOOGLE_URIS, register

    scratch = Path(tempfile.mkdtemp(prefix="camvoice-bench-seed-"))
    settings = load_settings(**server_settings(scratch, db_url))  # type: ignore[arg-type]
    db = Database(settings.sqlalchemy_url)
    db.upgrade()
    with db.session() as session:
        owner = create_account(session, "many@example.com", "bench-password")
        registry = Registry(Outbox())
        for i in range(CAMERAS):
            registry.add(session, owner, f"Camera {i:03d}", actor="bench", model="C6N",
                         firmware="1.0.0", nicknames=[f"cam {i}"], room="Hall")  # fmt: skip
        owner_id = owner.id
    tokens = {}
    for assistant, uris in (("alexa", ALEXA_URIS), ("google", GOOGLE_URIS)):
        client = register(db, f"Bench {assistant}", uris, assistant)
        with db.session() as session:
            grant = Grant(account_id=owner_id, client_id=client.client_id, scope="cameras")
            session.add(grant)
            session.flush()
            tokens[assistant] = new_secret()
            store_tokens(session, grant, tokens[assistant], None, 3600)
    http = create_app(settings, db).test_client()
    statements: list[str] = []
    event.listen(db.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    counts = {}
    for case in CASES:
        ask(http, case, tokens)  # a first use of a grant also writes its last use: not counted
        with db.session() as session:  # a camera change: the next answer is built again
            camera = registry.owned_cameras(session, owner_id)[0]
            registry.record(session, camera, {"firmware": f"{case}-1.0.1"}, actor="bench")
        counts[case] = [ask(http, case, tokens, statements) for _ in range(2)]
    out.write_text(json.dumps({"tokens": tokens, "counts": counts}))
    db.dispose()


def ask(http: Any, case: str, tokens: dict[str, str], statements: list[str] | None = None) -> int:
    """Send one request in-process, check it, and say how many statements it ran."""
    if statements is not None:
        statements.clear()
    path, body, headers = request(case, tokens)
    answer = http.post(path, data=body, headers=headers)
    judge(case, answer.status_code, answer.get_data())
    return len(statements) if statements is not None else 0


def server_settings(scratch: Path, db_url: str) -> dict[str, str]:
    """What both trees are given: RTSPS on 443 is advertised, so endpoints list every interface."""
    return {
        "data_dir": str(scratch), "database_url": db_url,
        "secret_key": "bench-secret-key-" + "x" * 40, "log_level": "WARNING",
        "alexa_forwarder_secret": SECRET,
        "rtsps_url_template": "rtsps://cameras.example:443/cam/{camera_id}/{ticket}",
    }  # fmt: skip


# --- the cases ----------------------------------------------------------------------------------

CASES = ("alexa Discover", "google SYNC")


def request(case: str, tokens: dict[str, str]) -> tuple[str, bytes, dict[str, str]]:
    """(path, body, headers) of one request; an Alexa directive is new and signed each time."""
    if case == "google SYNC":
        body = json.dumps({"requestId": "bench", "inputs": [{"intent": "action.devices.SYNC"}]})
        return "/google/fulfillment", body.encode(), {
            "Authorization": f"Bearer {tokens['google']}", "Content-Type": "application/json"}  # fmt: skip
    raw = json.dumps({"directive": {
        "header": {"namespace": "Alexa.Discovery", "name": "Discover", "payloadVersion": "3",
                   "messageId": str(uuid.uuid4())},
        "payload": {"scope": {"type": "BearerToken", "token": tokens["alexa"]}}}}).encode()  # fmt: skip
    stamp = str(int(time.time()))
    mac = hmac.new(SECRET.encode(), stamp.encode() + b"." + raw, hashlib.sha256).hexdigest()
    return "/alexa/smart-home", raw, {"X-Camvoice-Timestamp": stamp, "X-Camvoice-Signature": mac,
                                      "Content-Type": "application/json"}  # fmt: skip


def judge(case: str, status: int, body: bytes) -> None:
    """Raise BenchFailure unless the answer lists all the owner's cameras."""
    try:
        data = json.loads(body) if status == 200 else None
    except ValueError:
        data = None
    listed = (
        (data or {}).get("event", {}).get("payload", {}).get("endpoints")
        if case == "alexa Discover"
        else (data or {}).get("payload", {}).get("devices")
    )
    if not isinstance(listed, list) or len(listed) != CAMERAS:
        got = len(listed) if isinstance(listed, list) else body[:200]
        raise BenchFailure(f"{case}: HTTP {status}, expected {CAMERAS} cameras, got {got!r}")


# --- the parent: servers and the client ---------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Tree:
    """One checkout: its seeded database, its statement counts and its running server."""

    def __init__(self, label: str, path: Path, db_url: str, scratch: Path) -> None:
        self.label, self.path, self.db_url = label, path, db_url
        out = scratch / f"{label}.json"
        env = {**os.environ, "BENCH_TREE": str(path)}
        done = subprocess.run([sys.executable, __file__, "--seed", db_url, str(out)], env=env,
                              capture_output=True, text=True, check=False)  # fmt: skip
        if done.returncode != 0:
            raise BenchFailure(f"seeding {label} failed:\n{done.stderr[-2000:]}")
        seeded = json.loads(out.read_text())
        self.tokens: dict[str, str] = seeded["tokens"]
        self.counts: dict[str, list[int]] = seeded["counts"]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        settings = server_settings(scratch / f"{label}-data", db_url)
        env = {**os.environ, "PYTHONPATH": str(path),
               **{f"CAMVOICE_{k.upper()}": v for k, v in settings.items()}}  # fmt: skip
        self.log = scratch / f"{label}.log"
        with self.log.open("wb") as log:
            self.server = subprocess.Popen(
                [str(Path(sys.executable).parent / "camvoice"), "serve", "--port", str(self.port)],
                env=env, cwd=path, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        self.wait_ready()

    def wait_ready(self) -> None:
        import requests

        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and self.server.poll() is None:
            try:
                if requests.get(self.url + "/readyz", timeout=5).ok:
                    return
            except requests.RequestException:
                time.sleep(0.2)
        self.stop()
        raise BenchFailure(f"{self.label}: camvoice serve never became ready:\n"
                           f"{self.log.read_text(errors='replace')[-1500:]}")  # fmt: skip

    def workers_rss_mb(self) -> list[float]:
        """RSS of each gunicorn worker (the server's children), in MB."""
        children = Path(f"/proc/{self.server.pid}/task/{self.server.pid}/children")
        sizes = []
        for pid in children.read_text().split():
            status = Path(f"/proc/{pid}/status").read_text()
            kb = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))
            sizes.append(int(kb) / 1024)
        return sizes

    def stop(self) -> None:
        self.server.terminate()
        try:
            self.server.wait(60)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait(10)


def time_one(http: Any, tree: Tree, case: str) -> float:
    path, body, headers = request(case, tree.tokens)
    began = time.perf_counter()
    answer = http.post(tree.url + path, data=body, headers=headers, timeout=30)
    elapsed = (time.perf_counter() - began) * 1000
    judge(case, answer.status_code, answer.content)
    return elapsed


def run(trees: list[Tree], runs: int) -> None:
    """One client, round robin over trees and cases, so the machine's load falls on all alike.
    Each server gets a few untimed requests first (every worker builds its answer once)."""
    import requests

    times: dict[tuple[str, str], list[float]] = {(t.label, c): [] for t in trees for c in CASES}
    with requests.Session() as http:
        for tree in trees:
            for case in CASES:
                for _ in range(4):
                    time_one(http, tree, case)
        for _ in range(runs):
            for tree in trees:
                for case in CASES:
                    times[(tree.label, case)].append(time_one(http, tree, case))
    print(f"  {f'case ({CAMERAS} cameras)':22} {'tree':10} {'p50 ms':>8} {'p90 ms':>8} "
          f"{'statements: built, then':>24}")  # fmt: skip
    for case in CASES:
        for tree in trees:
            got = times[(tree.label, case)]
            p90 = statistics.quantiles(got, n=10)[-1] if len(got) > 1 else got[0]
            first, second = tree.counts[case]
            print(f"  {case:22} {tree.label:10} {statistics.median(got):8.1f} {p90:8.1f} "
                  f"{first:>17} {second:>6}")  # fmt: skip
    for tree in trees:
        rss = ", ".join(f"{mb:.0f}" for mb in tree.workers_rss_mb())
        print(f"  RSS of {tree.label}'s server children (gunicorn workers, media node): {rss} MB")


def database(kind: str, label: str, scratch: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{scratch / (label + '.db')}"
    import psycopg

    name = f"camvoice_bench_{label}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def drop(db_url: str) -> None:
    """Drop a PostgreSQL database the bench made (SQLite files go with the scratch folder)."""
    if db_url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_url.rsplit("/", 1)[1]}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", type=Path, help="another checkout to measure beside this one")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL as well as SQLite")
    parser.add_argument("--smoke", action="store_true", help="this tree, SQLite, 10 cameras")
    parser.add_argument("--seed", nargs=2, metavar=("DB_URL", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.seed:
        seed(args.seed[0], Path(args.seed[1]))
        return
    runs = 5 if args.smoke else args.runs
    if args.smoke:  # the seeding children and the checks read it
        global CAMERAS
        CAMERAS = 10
        os.environ["BENCH_CAMERAS"] = str(CAMERAS)
    checkouts = [("this", HERE)] + ([("base", args.base.resolve())] if args.base else [])
    if args.smoke:
        checkouts = [("this", HERE)]
    kinds = ["sqlite"] + (["postgresql"] if args.postgres and not args.smoke else [])
    scratch = Path(tempfile.mkdtemp(prefix="camvoice-bench-discovery-"))
    for kind in kinds:
        trees: list[Tree] = []
        try:
            for label, path in checkouts:
                trees.append(Tree(label, path, database(kind, label, scratch), scratch))
            print(f"\n[{kind}] one client, {runs} timed runs per case and tree")
            run(trees, runs)
        finally:
            for tree in trees:
                tree.stop()
                drop(tree.db_url)


if __name__ == "__main__":
    try:
        main()
    except BenchFailure as exc:
        sys.exit(f"bench failed: {exc}")
