"""What camvoice costs: throughput and latency of its endpoints against the floor of the same app.

For SQLite and PostgreSQL in turn: starts `camvoice serve` (gunicorn, 2 gthread workers x 4
threads, the same for every case), links an owner, and drives each case with wrk (Debian
package) at 32 connections. Prints requests/s, p50, p99 and the ratio to the floor (a trivial
JSON endpoint, /healthz) measured in the same run. Then counts SQL queries per directive for
owners with 5 and 300 cameras, and the Lambda forwarder's added latency.

    .venv/bin/python bench/load.py [--seconds 5] [--connections 32] [--skip-postgres]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import requests
from sqlalchemy import event

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from camvoice.accounts import create_account  # noqa: E402
from camvoice.cameras import Registry  # noqa: E402
from camvoice.db import Database  # noqa: E402
from camvoice.outbox import Outbox  # noqa: E402
from camvoice.settings import load_settings  # noqa: E402
from media.rtsps import self_signed  # noqa: E402
from service.app import create_app  # noqa: E402
from tests.oauth_support import ALEXA_URIS, link, register  # noqa: E402

BIN = Path(sys.executable).parent
SECRET = "bench-forwarder-secret-0123456789"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


class Server:
    def __init__(self, env: dict[str, str], port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen([str(BIN / "camvoice"), "serve", "--port", str(port)],
                                        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/readyz", timeout=5).ok:
                    return
            except requests.RequestException:
                time.sleep(0.2)
        raise SystemExit("server did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(15)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def signed(body: bytes) -> dict[str, str]:
    ts = str(int(time.time()))
    sig = hmac.new(SECRET.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {
        "X-Camvoice-Timestamp": ts,
        "X-Camvoice-Signature": sig,
        "Content-Type": "application/json",
    }


def wrk(url: str, seconds: int, connections: int, method: str = "GET", body: str = "",
        headers: dict[str, str] | None = None) -> dict[str, float]:  # fmt: skip
    """Run wrk; returns requests/s, p50 and p99 in milliseconds, and non-2xx count."""
    script = ["wrk.method = " + json.dumps(method)]
    if body:
        script.append("wrk.body = [==[" + body + "]==]")
    for key, value in (headers or {}).items():
        script.append(f"wrk.headers[{json.dumps(key)}] = {json.dumps(value)}")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write("\n".join(script) + "\n")
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", lua.name, url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    os.unlink(lua.name)

    def ms(label: str) -> float:
        value, unit = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50": ms("50%"),
        "p99": ms("99%"),
        "errors": float(bad.group(1)) if bad else 0.0,
    }


def owner_with(db: Database, email: str, count: int) -> None:
    with db.session() as session:
        account = create_account(session, email, "bench-password-1")
        for i in range(count):
            Registry(Outbox()).add(session, account, f"Camera {i:03d}", actor="bench", model="C6N",
                       nicknames=[f"cam {i}"], room="Hall")  # fmt: skip


class Live:
    """LiveServer-shaped wrapper so the OAuth test helpers can link through a real server."""

    def __init__(self, url: str) -> None:
        self.url = url


def run_suite(
    label: str, db_url: str, seconds: int, connections: int, scratch: Path
) -> dict[str, dict[str, float]]:
    cert, key = scratch / "cert.pem", scratch / "key.pem"
    self_signed(cert, key, "127.0.0.1")
    port = free_port()
    env = {**os.environ, "CAMVOICE_DATA_DIR": str(scratch / label), "CAMVOICE_DATABASE_URL": db_url,
           "CAMVOICE_SECRET_KEY": "bench-secret-key-" + "x" * 40, "CAMVOICE_LOG_LEVEL": "WARNING",
           "CAMVOICE_PUBLIC_URL": f"http://127.0.0.1:{port}", "CAMVOICE_ALEXA_FORWARDER_SECRET": SECRET,
           "CAMVOICE_RELAY_ENABLED": "true", "CAMVOICE_RTSPS_CERT": str(cert), "CAMVOICE_RTSPS_KEY": str(key),
           "CAMVOICE_LOGIN_MAX_FAILURES_IP": "100000"}  # fmt: skip
    db = Database(db_url)
    db.upgrade()
    owner_with(db, "five@example.com", 5)
    owner_with(db, "many@example.com", 300)
    client = register(db, "Bench Alexa", ALEXA_URIS, "alexa")
    google = register(
        db, "Bench Google", ["https://oauth-redirect.googleusercontent.com/r/bench"], "google"
    )
    server = Server(env, port)
    try:
        live = Live(server.url)
        tokens = {}
        for email in ("five@example.com", "many@example.com"):
            _, tokens[email] = link(live, client, email, password="bench-password-1")  # type: ignore[arg-type]
        _, gtoken = link(live, google, "five@example.com", "client_secret_post", "bench-password-1")  # type: ignore[arg-type]
        _, gmany = link(live, google, "many@example.com", "client_secret_post", "bench-password-1")  # type: ignore[arg-type]
        with db.session() as session:
            from camvoice.models import Camera

            ready = session.query(Camera).filter(Camera.name == "Camera 000").first().id  # type: ignore[union-attr]
        results: dict[str, dict[str, float]] = {}
        results["floor /healthz"] = wrk(server.url + "/healthz", seconds, connections)

        def google_case(token: str, intent: dict[str, Any]) -> dict[str, float]:
            body = json.dumps({"requestId": "b", "inputs": [intent]})
            return wrk(server.url + "/google/fulfillment", seconds, connections, "POST", body,
                       {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})  # fmt: skip

        def alexa_case(directive: dict[str, Any]) -> dict[str, float]:
            body = json.dumps({"directive": directive})
            return wrk(server.url + "/alexa/smart-home", seconds, connections, "POST", body,
                       signed(body.encode()))  # fmt: skip

        with db.session() as session:
            from camvoice.models import Camera

            five_ready = session.query(Camera).join(Camera.owner).filter(
                Camera.name == "Camera 000").all()  # fmt: skip
        five_camera = (
            next(c.id for c in five_ready if c.id != ready) if len(five_ready) > 1 else ready
        )
        execute = {"intent": "action.devices.EXECUTE", "payload": {"commands": [{
            "devices": [{"id": five_camera}], "execution": [{
                "command": "action.devices.commands.GetCameraStream",
                "params": {"StreamToChromecast": True, "SupportedStreamProtocols": ["hls"]}}]}]}}  # fmt: skip
        results["google EXECUTE GetCameraStream"] = google_case(gtoken["access_token"], execute)
        head = {"payloadVersion": "3", "messageId": str(uuid.uuid4()), "correlationToken": "c"}
        init = {"header": {**head, "namespace": "Alexa.CameraStreamController", "name": "InitializeCameraStreams"},
                "endpoint": {"scope": {"type": "BearerToken", "token": tokens["five@example.com"]["access_token"]},
                             "endpointId": five_camera},
                "payload": {"cameraStreams": [{"protocol": "RTSP", "resolution": {"width": 1920, "height": 1080},
                            "authorizationType": "NONE", "videoCodec": "H264", "audioCodec": "AAC"}]}}  # fmt: skip
        results["alexa InitializeCameraStreams"] = alexa_case(init)
        for email, count, gtok in (
            ("five@example.com", 5, gtoken),
            ("many@example.com", 300, gmany),
        ):
            results[f"google SYNC, {count} cameras"] = google_case(
                gtok["access_token"], {"intent": "action.devices.SYNC"}
            )
            discover = {"header": {**head, "namespace": "Alexa.Discovery", "name": "Discover"},
                        "payload": {"scope": {"type": "BearerToken", "token": tokens[email]["access_token"]}}}  # fmt: skip
            results[f"alexa Discover, {count} cameras"] = alexa_case(discover)
        refresh = (f"grant_type=refresh_token&refresh_token={tokens['five@example.com']['refresh_token']}"
                   f"&client_id={client.client_id}&client_secret={client.secret}")  # fmt: skip
        results["token refresh /oauth/token"] = wrk(server.url + "/oauth/token", seconds, connections, "POST",
                                                    refresh, {"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
        return results
    finally:
        server.stop()
        db.dispose()


def query_counts(scratch: Path) -> dict[str, tuple[int, int]]:
    """SQL statements per request for owners with 5 and with 300 cameras (in-process)."""
    settings = load_settings(data_dir=scratch / "queries", secret_key="q" * 40,
                             alexa_forwarder_secret=SECRET)  # fmt: skip
    db = Database(settings.sqlalchemy_url)
    db.upgrade()
    owner_with(db, "five@example.com", 5)
    owner_with(db, "many@example.com", 300)
    app = create_app(settings, db)
    client = register(db, "Q", ALEXA_URIS, "alexa")
    statements: list[str] = []
    event.listen(db.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    from camvoice.models import Camera
    from oauth.models import Grant
    from oauth.tokens import new_secret, store_tokens

    counts: dict[str, list[int]] = {}
    for email in ("five@example.com", "many@example.com"):
        with db.session() as session:
            from camvoice.accounts import find_account

            account = find_account(session, email)
            grant = Grant(account_id=account.id, client_id=client.client_id, scope="cameras")  # type: ignore[union-attr]
            session.add(grant)
            session.flush()
            token = new_secret()
            store_tokens(session, grant, token, None, 3600)
            camera = session.query(Camera).filter(Camera.owner_id == account.id).first().id  # type: ignore[union-attr]
        test = app.test_client()
        cases = {
            "Alexa Discover": {"directive": {"header": {"namespace": "Alexa.Discovery", "name": "Discover", "payloadVersion": "3", "messageId": "m"},
                                             "payload": {"scope": {"type": "BearerToken", "token": token}}}},
            "Alexa ReportState": {"directive": {"header": {"namespace": "Alexa", "name": "ReportState", "payloadVersion": "3", "messageId": "m", "correlationToken": "c"},
                                                "endpoint": {"scope": {"type": "BearerToken", "token": token}, "endpointId": camera}, "payload": {}}},
        }  # fmt: skip
        for name, body in cases.items():
            raw = json.dumps(body).encode()
            statements.clear()
            assert test.post("/alexa/smart-home", data=raw, headers=signed(raw)).status_code == 200
            counts.setdefault(name, []).append(len(statements))
        for name, intent in (("Google SYNC", {"intent": "action.devices.SYNC"}),
                             ("Google QUERY", {"intent": "action.devices.QUERY", "payload": {"devices": [{"id": camera}]}})):  # fmt: skip
            statements.clear()
            reply = test.post("/google/fulfillment", json={"requestId": "q", "inputs": [intent]},
                              headers={"Authorization": f"Bearer {token}"})  # fmt: skip
            assert reply.status_code == 200
            counts.setdefault(name, []).append(len(statements))
    app.extensions["camvoice.relays"].shutdown()
    return {k: (v[0], v[1]) for k, v in counts.items()}


def forwarder_latency(runs: int = 30) -> tuple[float, float]:
    """Median ms of a direct signed POST vs the same directive through lambda_handler."""
    import importlib.util

    scratch = Path(tempfile.mkdtemp(prefix="camvoice-fwd-"))
    port = free_port()
    env = {**os.environ, "CAMVOICE_DATA_DIR": str(scratch), "CAMVOICE_ALEXA_FORWARDER_SECRET": SECRET,
           "CAMVOICE_LOG_LEVEL": "WARNING"}  # fmt: skip
    env.pop("CAMVOICE_DATABASE_URL", None)
    Database(f"sqlite:///{scratch / 'camvoice.db'}").upgrade()
    server = Server(env, port)
    spec = importlib.util.spec_from_file_location(
        "lambda_function", ROOT / "deploy/lambda/lambda_function.py"
    )
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    os.environ["CAMVOICE_ENDPOINT"] = server.url + "/alexa/smart-home"
    os.environ["CAMVOICE_FORWARDER_SECRET"] = SECRET
    message = {"directive": {"header": {"namespace": "Alexa", "name": "ReportState", "payloadVersion": "3",
                                        "messageId": "m", "correlationToken": "c"},
                             "endpoint": {"scope": {"type": "BearerToken", "token": "x"}, "endpointId": "cam_x"},
                             "payload": {}}}  # fmt: skip
    direct, forwarded = [], []
    try:
        for _ in range(runs):
            raw = json.dumps(message).encode()
            began = time.perf_counter()
            requests.post(
                server.url + "/alexa/smart-home", data=raw, headers=signed(raw), timeout=10
            )
            direct.append((time.perf_counter() - began) * 1000)
            began = time.perf_counter()
            module.lambda_handler(message, None)
            forwarded.append((time.perf_counter() - began) * 1000)
    finally:
        server.stop()
    return statistics.median(direct), statistics.median(forwarded)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="camvoice-bench-"))
    suites = {"sqlite": f"sqlite:///{scratch / 'bench.db'}"}
    pg_name = None
    if not args.skip_postgres:
        pg_name = f"camvoice_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{pg_name}"')
        suites["postgresql"] = f"postgresql+psycopg://postgres@127.0.0.1:5432/{pg_name}"
    try:
        print(f"camvoice load benchmark: wrk -t2 -c{args.connections} -d{args.seconds}s, "
              "gunicorn 2 workers x 4 threads")  # fmt: skip
        for label, url in suites.items():
            results = run_suite(label, url, args.seconds, args.connections, scratch)
            floor = results["floor /healthz"]["rps"]
            print(f"\n[{label}]")
            print(
                f"  {'case':36} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'vs floor':>9} {'non-2xx':>8}"
            )
            for case, r in results.items():
                print(f"  {case:36} {r['rps']:8.0f} {r['p50']:8.1f} {r['p99']:8.1f} "
                      f"{r['rps'] / floor:8.2f}x {int(r['errors']):8d}")  # fmt: skip
        print(
            "\nSQL statements per request (owner with 5 cameras -> with 300), SQLite, in-process:"
        )
        for case, (five, many) in query_counts(scratch).items():
            print(f"  {case:20} {five:3d} -> {many:3d}")
        direct, forwarded = forwarder_latency()
        print(f"\nLambda forwarder: direct {direct:.1f} ms, through lambda_handler {forwarded:.1f} ms "
              f"(median of 30; added {forwarded - direct:.1f} ms)")  # fmt: skip
    finally:
        if pg_name:
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
