"""Operations: /metrics over real HTTP through the real app (and under gunicorn with two workers,
whose values add up in one scrape), and JSON log lines that carry request ids but no secret."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sqlalchemy import update

from camvoice.db import Database
from camvoice.models import OutboxEvent, utcnow
from camvoice.settings import Settings
from service.app import create_app
from service.demo import DEMO_EMAIL, DEMO_PASSWORD, seed
from service.logs import JSONFormatter
from tests.conftest import VENV_BIN, LiveServer, free_port, wait_for, wiring
from tests.oauth_support import ALEXA_URIS, GOOGLE_URIS, csrf_of, link, register

SECRET = "forwarder-secret-for-metrics-0123456789"
METRICS_TOKEN = "metrics-token-for-tests-0123456789"
RTSPS_TEMPLATE = "rtsps://127.0.0.1:443/cam/{camera_id}/{ticket}"


def sign(body: bytes, secret: str = SECRET) -> dict[str, str]:
    """The Lambda forwarder's headers for one body (deploy/lambda)."""
    stamp = str(int(time.time()))
    mac = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"X-Camvoice-Timestamp": stamp, "X-Camvoice-Signature": mac,
            "Content-Type": "application/json"}  # fmt: skip


def directive(namespace: str, name: str, token: str, endpoint_id: str,
              payload: dict[str, Any] | None = None) -> bytes:  # fmt: skip
    return json.dumps({"directive": {
        "header": {"namespace": namespace, "name": name, "payloadVersion": "3",
                   "messageId": str(uuid.uuid4()), "correlationToken": "c-" + uuid.uuid4().hex},
        "endpoint": {"scope": {"type": "BearerToken", "token": token}, "endpointId": endpoint_id},
        "payload": payload or {},
    }}).encode()  # fmt: skip


def rtsp_streams(token: str, endpoint_id: str) -> bytes:
    return directive("Alexa.CameraStreamController", "InitializeCameraStreams", token,
                     endpoint_id, {"cameraStreams": [{"protocol": "RTSP", "videoCodec": "H264",
                                                      "audioCodec": "AAC"}]})  # fmt: skip


def send(base: str, body: bytes, **headers: str) -> requests.Response:
    return requests.post(base + "/alexa/smart-home", data=body,
                         headers={**sign(body), **headers}, timeout=30)  # fmt: skip


def google_execute(base: str, token: str, camera_id: str, **headers: str) -> requests.Response:
    body = {"requestId": str(uuid.uuid4()), "inputs": [{
        "intent": "action.devices.EXECUTE",
        "payload": {"commands": [{"devices": [{"id": camera_id}], "execution": [{
            "command": "action.devices.commands.GetCameraStream",
            "params": {"StreamToChromecast": True, "SupportedStreamProtocols": ["hls"]}}]}]},
    }]}  # fmt: skip
    return requests.post(base + "/google/fulfillment", json=body, timeout=30,
                         headers={"Authorization": f"Bearer {token}", **headers})  # fmt: skip


def scrape(
    base: str, token: str = METRICS_TOKEN
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of one scrape, by name and labels."""
    answer = requests.get(base + "/metrics", headers={"Authorization": f"Bearer {token}"},
                          timeout=30)  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }


def value(samples: dict[Any, float], metric: str, /, **labels: str) -> float:
    return samples.get((metric, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def server(settings: Settings, db: Database, tmp_path: Path) -> Iterator[LiveServer]:
    configured = settings.model_copy(update={
        "media_dir": tmp_path / "media", "alexa_forwarder_secret": SecretStr(SECRET),
        "metrics_token": SecretStr(METRICS_TOKEN), "rtsps_url_template": RTSPS_TEMPLATE,
        "login_max_failures_account_address": 2,
    })  # fmt: skip
    app = create_app(configured, db)
    with LiveServer(app) as live:
        yield live
    app.extensions["camvoice.relays"].shutdown()


@pytest.fixture
def demo(server: LiveServer, db: Database) -> dict[str, str]:
    with db.session() as session:
        return {c.name: c.id for c in seed(session, wiring(server.app).registry).cameras}


@pytest.fixture
def tokens(server: LiveServer, db: Database, demo: dict[str, str]) -> dict[str, str]:
    alexa = register(db, "Amazon Alexa", ALEXA_URIS, "alexa")
    google = register(db, "Google Home", GOOGLE_URIS, "google")
    _, a = link(server, alexa, DEMO_EMAIL, password=DEMO_PASSWORD)
    _, g = link(server, google, DEMO_EMAIL, "client_secret_post", DEMO_PASSWORD)
    return {"alexa": str(a["access_token"]), "google": str(g["access_token"])}


def test_scrape_counts_directives_intents_streams_and_throttles(
    server: LiveServer, db: Database, demo: dict[str, str], tokens: dict[str, str]
) -> None:
    base, alexa, google = server.url, tokens["alexa"], tokens["google"]
    before = scrape(base)
    assert send(base, rtsp_streams(alexa, demo["Front Door"])).json()["event"]["header"][
        "name"] == "Response"  # fmt: skip
    assert send(base, rtsp_streams(alexa, demo["Garage"])).json()["event"]["payload"]["type"]
    for _ in range(2):
        send(base, directive("Alexa", "ReportState", alexa, demo["Front Door"]))
    send(base, directive("Alexa", "ReportState", "not-a-token", demo["Front Door"]))
    send(base, directive("Made.Up", "Thing", alexa, demo["Front Door"]))
    assert google_execute(base, google, demo["Front Door"]).status_code == 200
    assert google_execute(base, google, demo["Garage"]).status_code == 200
    denied = requests.get(f"{base}/streams/{demo['Front Door']}/forged/index.m3u8", timeout=10)
    assert denied.status_code == 403
    browser = requests.Session()
    csrf = csrf_of(browser.get(base + "/oauth/login", timeout=10).text)
    codes = [browser.post(base + "/oauth/login", allow_redirects=False, timeout=10, data={
        "csrf_token": csrf, "email": DEMO_EMAIL, "password": "wrong", "next": ""}).status_code
        for _ in range(3)]  # fmt: skip
    assert codes == [401, 401, 429]

    after = scrape(base)

    def moved(metric: str, /, **labels: str) -> float:
        return value(after, metric, **labels) - value(before, metric, **labels)

    requests_total = "camvoice_assistant_requests_total"
    streams = "Alexa.CameraStreamController.InitializeCameraStreams"
    assert moved(requests_total, assistant="alexa", name=streams, outcome="ok") == 1
    assert moved(requests_total, assistant="alexa", name=streams, outcome="NOT_SUPPORTED_IN_CURRENT_MODE") == 1  # fmt: skip
    assert moved(requests_total, assistant="alexa", name="Alexa.ReportState", outcome="ok") == 2
    assert moved(requests_total, assistant="alexa", name="Alexa.ReportState",
                 outcome="INVALID_AUTHORIZATION_CREDENTIAL") == 1  # fmt: skip
    assert moved(requests_total, assistant="alexa", name="unknown", outcome="INVALID_DIRECTIVE") == 1  # fmt: skip
    execute = "action.devices.EXECUTE"
    assert moved(requests_total, assistant="google", name=execute, outcome="ok") == 1
    assert moved(requests_total, assistant="google", name=execute, outcome="securityRestriction") == 1  # fmt: skip
    latency = "camvoice_assistant_request_seconds_count"
    assert moved(latency, assistant="alexa", name="Alexa.ReportState") == 3
    assert moved("camvoice_assistant_request_seconds_bucket", assistant="google", name=execute,
                 le="+Inf") == 2  # fmt: skip
    starts = "camvoice_stream_starts_total"
    assert moved(starts, assistant="alexa", protocol="rtsps") == 1
    assert moved(starts, assistant="google", protocol="hls") == 1
    denials = "camvoice_stream_denials_total"
    assert moved(denials, assistant="alexa", protocol="rtsps", blocker="encryption_on") == 1
    assert moved(denials, assistant="google", protocol="hls", blocker="encryption_on") == 1
    assert moved(denials, assistant="media", protocol="hls", blocker="tampered") == 1
    assert moved("camvoice_signin_throttled_total") == 1


def test_outbox_figures_are_read_from_the_database(server: LiveServer, db: Database) -> None:
    now = utcnow()
    with db.session() as session:
        for due, status in ((600, "pending"), (5, "pending"), (-60, "pending"), (900, "dead")):
            session.add(OutboxEvent(topic="camera.changed", subscriber="alexa", payload={},
                                    status=status, next_attempt_at=now - timedelta(seconds=due)))  # fmt: skip
        session.add(OutboxEvent(topic="camera.changed", subscriber="alexa", payload={},
                                status="delivered", next_attempt_at=now - timedelta(hours=2)))  # fmt: skip
    samples = scrape(server.url)
    assert value(samples, "camvoice_outbox_depth") == 3
    assert value(samples, "camvoice_outbox_dead_letters") == 1
    assert 600 <= value(samples, "camvoice_outbox_oldest_due_age_seconds") < 3600
    with db.session() as session:
        session.execute(update(OutboxEvent).values(status="delivered"))
    samples = scrape(server.url)
    assert value(samples, "camvoice_outbox_depth") == 0
    assert value(samples, "camvoice_outbox_oldest_due_age_seconds") == 0


def test_metrics_need_the_token_and_are_off_without_one(
    server: LiveServer, settings: Settings, db: Database
) -> None:
    assert requests.get(server.url + "/metrics", timeout=10).status_code == 401
    wrong = requests.get(server.url + "/metrics", timeout=10,
                         headers={"Authorization": "Bearer " + METRICS_TOKEN + "x"})  # fmt: skip
    assert wrong.status_code == 401
    assert wrong.headers["WWW-Authenticate"].startswith("Bearer")
    assert "camvoice_" not in wrong.text
    with LiveServer(create_app(settings, db)) as unconfigured:
        off = requests.get(unconfigured.url + "/metrics", timeout=10,
                           headers={"Authorization": "Bearer " + METRICS_TOKEN})  # fmt: skip
        assert off.status_code == 404
        assert "camvoice_" not in off.text


# --- JSON log lines ------------------------------------------------------------------------


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """What the root logger writes, through the JSON formatter, while the test runs."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    yield out
    root.removeHandler(handler)


@pytest.fixture
def json_server(settings: Settings, db: Database, tmp_path: Path) -> Iterator[LiveServer]:
    configured = settings.model_copy(update={
        "media_dir": tmp_path / "media", "alexa_forwarder_secret": SecretStr(SECRET),
        "rtsps_url_template": RTSPS_TEMPLATE, "log_format": "json",
    })  # fmt: skip
    app = create_app(configured, db)
    with LiveServer(app) as live:
        yield live
    app.extensions["camvoice.relays"].shutdown()


def test_json_lines_carry_the_request_id_and_no_secret(
    json_server: LiveServer, db: Database, settings: Settings, json_lines: io.StringIO
) -> None:
    base = json_server.url
    with db.session() as session:
        demo = {c.name: c.id for c in seed(session, wiring(json_server.app).registry).cameras}
    alexa = register(db, "Amazon Alexa", ALEXA_URIS, "alexa")
    google = register(db, "Google Home", GOOGLE_URIS, "google")
    _, a = link(json_server, alexa, DEMO_EMAIL, password=DEMO_PASSWORD)
    _, g = link(json_server, google, DEMO_EMAIL, "client_secret_post", DEMO_PASSWORD)
    json_lines.truncate(0)
    json_lines.seek(0)

    answer = send(base, rtsp_streams(a["access_token"], demo["Front Door"]),
                  **{"X-Request-ID": "alexa-req-1"})  # fmt: skip
    assert answer.headers["X-Request-ID"] == "alexa-req-1"
    rtsps_url = answer.json()["event"]["payload"]["cameraStreams"][0]["uri"]
    executed = google_execute(base, g["access_token"], demo["Front Door"],
                              **{"X-Request-ID": "google-req-1"})  # fmt: skip
    hls_url = executed.json()["payload"]["commands"][0]["states"]["cameraStreamAccessUrl"]
    fetched = requests.get(
        hls_url.replace(settings.public_url, base),
        timeout=30,
        headers={"X-Request-ID": "fetch-req-1"},
    )
    assert fetched.headers["X-Request-ID"] == "fetch-req-1"
    # An id too long or with odd characters is replaced by a fresh one, and that one echoed.
    odd = requests.get(base + "/healthz", timeout=10, headers={"X-Request-ID": "x" * 129})
    assert len(odd.headers["X-Request-ID"]) == 32 and odd.headers["X-Request-ID"] != "x" * 129
    spaced = requests.get(base + "/healthz", timeout=10, headers={"X-Request-ID": "a b\tc"})
    assert spaced.headers["X-Request-ID"] != "a b\tc"

    lines = [json.loads(line) for line in json_lines.getvalue().splitlines() if line.strip()]
    by_id: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        by_id.setdefault(line.get("request_id", ""), []).append(line)
    access = next(line for line in by_id["alexa-req-1"] if line["logger"] == "camvoice.access")
    assert access["route"] == "/alexa/smart-home" and access["status"] == 200
    assert access["assistant"] == "alexa" and access["outcome"] == "ok"
    assert access["directive"] == "Alexa.CameraStreamController.InitializeCameraStreams"
    assert access["camera_id"] == demo["Front Door"] and access["duration_ms"] >= 0
    intent = next(line for line in by_id["google-req-1"] if line["logger"] == "camvoice.access")
    assert intent["assistant"] == "google" and intent["camera_id"] == demo["Front Door"]
    assert intent["directive"] == "action.devices.EXECUTE" and intent["outcome"] == "ok"
    fetch = next(line for line in by_id["fetch-req-1"] if line["logger"] == "camvoice.access")
    assert fetch["route"] == "/streams/<camera_id>/<token>/index.m3u8"

    text = json_lines.getvalue()
    hls_ticket = hls_url.split("/")[-2]
    rtsps_ticket = rtsps_url.rsplit("/", 1)[-1]
    for secret in (a["access_token"], g["access_token"], hls_ticket, rtsps_ticket, hls_url,
                   rtsps_url, SECRET):  # fmt: skip
        assert secret not in text


# --- gunicorn, two workers, one scrape --------------------------------------------------


def counted_by_pid(folder: Path) -> dict[str, float]:
    """Directives each worker counted, from its own file in the multiprocess directory."""
    counts = {}
    for path in folder.glob("counter_*.db"):
        families = MultiProcessCollector.merge([str(path)], accumulate=True)
        counts[path.stem] = sum(
            s.value for f in families if f.name == "camvoice_assistant_requests"
            for s in f.samples if s.name.endswith("_total")
        )  # fmt: skip
    return counts


def test_gunicorn_workers_add_up_in_one_scrape(
    cli_env: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    folder = settings.data_dir / "prometheus"
    folder.mkdir(parents=True)
    (folder / "counter_999999.db").write_bytes(b"left by an earlier run")
    env = {**os.environ, **cli_env, "CAMVOICE_METRICS_TOKEN": METRICS_TOKEN,
           "CAMVOICE_LOG_FORMAT": "json", "CAMVOICE_ALEXA_FORWARDER_SECRET": SECRET}  # fmt: skip
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = (tmp_path / "serve.log").open("w+")
    serve = subprocess.Popen(
        [str(VENV_BIN / "camvoice"), "serve", "--port", str(port), "--workers", "2"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(base + "/readyz"), "camvoice serve to answer", 90)
        assert not (folder / "counter_999999.db").exists()  # emptied before the workers start
        sent = 0
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            for _ in range(10):  # a new connection each: gunicorn's workers take turns
                body = directive("Alexa", "ReportState", "not-a-token", "cam")
                answer = send(base, body, Connection="close")
                assert answer.status_code == 200
                sent += 1
            counts = counted_by_pid(folder)
            if len([c for c in counts.values() if c > 0]) >= 2:
                break
        assert len([c for c in counts.values() if c > 0]) >= 2, counts
        name = "camvoice_assistant_requests_total"
        labels = {"assistant": "alexa", "name": "Alexa.ReportState",
                  "outcome": "INVALID_AUTHORIZATION_CREDENTIAL"}  # fmt: skip
        for _ in range(4):  # whichever worker answers the scrape, it shows every worker's count
            assert value(scrape(base), name, **labels) == sent
        unauthenticated = requests.get(base + "/metrics", timeout=10)
        assert unauthenticated.status_code == 401
    finally:
        serve.terminate()
        serve.wait(30)
    log.seek(0)
    output = [line for line in log.read().splitlines() if line.startswith("{")]
    parsed = [json.loads(line) for line in output]
    # Two web workers and the media node's one, each booted by a gunicorn logging JSON.
    booted = [
        p for p in parsed if p["logger"] == "gunicorn.error" and "Booting worker" in p["message"]
    ]
    assert len(booted) >= 3, booted
    access = [p for p in parsed if p["logger"] == "camvoice.access"]
    assert len(access) >= sent and all(len(p["request_id"]) == 32 for p in access)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def test_media_node_serves_its_metrics(settings: Settings, db: Database) -> None:
    from camvoice.webrtc import NoWebRTC
    from service.media_node import create_media_app

    configured = settings.model_copy(update={"metrics_token": SecretStr(METRICS_TOKEN)})
    with LiveServer(create_media_app(configured, db, NoWebRTC())) as node:
        assert requests.get(node.url + "/metrics", timeout=10).status_code == 401
        assert value(scrape(node.url), "camvoice_webrtc_sessions_live") == 0


def test_a_dead_workers_live_gauges_stop_counting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gunicorn's child_exit hook (service.metrics.worker_exited) removes a dead worker's
    live gauges (relays, WebRTC sessions), which would otherwise count forever."""
    from service.metrics import MULTIPROC_ENV, worker_exited

    folder = tmp_path / "prometheus"
    folder.mkdir()
    dead = folder / "gauge_livesum_4242.db"
    dead.write_bytes(b"")
    counter = folder / "counter_4242.db"
    counter.write_bytes(b"")
    monkeypatch.setenv(MULTIPROC_ENV, str(folder))
    worker_exited(None, type("Worker", (), {"pid": 4242})())
    assert not dead.exists() and counter.exists()  # counters keep counting what was done


def test_the_worker_logs_json(cli_env: dict[str, str]) -> None:
    env = {**os.environ, **cli_env, "CAMVOICE_LOG_FORMAT": "json"}
    worker = subprocess.Popen([str(VENV_BIN / "camvoice"), "worker"], env=env,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    lines: list[dict[str, Any]] = []
    try:
        assert worker.stderr is not None
        for raw in worker.stderr:  # until it says it started: a JSON object per line
            lines.append(json.loads(raw))
            if "started" in lines[-1]["message"]:
                break
    finally:
        worker.terminate()
        worker.wait(30)
    assert lines[-1]["logger"] == "camvoice.outbox" and lines[-1]["level"] == "INFO"
