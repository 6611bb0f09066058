"""Each bench script runs in its smoke mode and prints its figures, so a figure in
bench/README.md cannot outlive the code that made it; and a bench whose case answers an error
fails instead of timing it."""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest
from sqlalchemy import make_url

from camvoice.db import Database
from tests.conftest import require_gstreamer, wait_for

# A statement that keeps a backend busy for a moment, so its CPU time grows by a clock tick.
BUSY = "SELECT count(*) FROM generate_series(1, 300000)"

BENCH = Path(__file__).resolve().parents[1] / "bench"


def smoke(script: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_cli_start_smoke() -> None:
    out = smoke("cli_start.py", "--runs", "1")
    assert "camvoice --help" in out and "python -c pass (floor)" in out and "median" in out


def test_directive_cost_smoke() -> None:
    """Each case answered its success shape (the script asserts it) and was counted."""
    out = smoke("directive_cost.py", "--runs", "1")
    # Alexa: its self-committing claim, the token and the camera in one statement, the
    # self-committing audit row; Google: the token and the camera in one statement, the
    # self-committing audit row. Each statement is its own (autocommit): no BEGIN at all.
    for case, statements, transactions in (
        ("Alexa InitializeCameraStreams", 3, 0),
        ("Google EXECUTE", 2, 0),
    ):
        line = next(line for line in out.splitlines() if case in line)
        assert f"statements {statements}  transactions {transactions}  median" in line, line


@pytest.mark.postgres
def test_directive_cost_smoke_on_postgresql() -> None:
    """The same statements on PostgreSQL, after SQLite's, on a scratch database."""
    out = smoke("directive_cost.py", "--runs", "1", "--postgres")
    postgresql = out.split("PostgreSQL, one local camera", 1)[1]
    for case, statements in (("Alexa InitializeCameraStreams", 3), ("Google EXECUTE", 2)):
        line = next(line for line in postgresql.splitlines() if case in line)
        assert f"statements {statements}  transactions 0  median" in line, line


def test_token_cost_smoke() -> None:
    """A first-use refresh answered a new access token (the script asserts it) in one read
    statement (the token with its client) and one writing transaction (BEGIN, claim, supersede,
    the new pair): five statements, COMMIT not counted."""
    out = smoke("token_cost.py", "--runs", "1")
    line = next(line for line in out.splitlines() if "token refresh, first use" in line)
    assert re.search(r"statements 5  transactions 1  median [\d.]+ ms  cpu [\d.]+ ms  "
                     r"python calls \d+$", line), line  # fmt: skip


def test_worker_memory_smoke() -> None:
    """A real `camvoice serve` answered /readyz, and its master and two web workers were read:
    RSS, PSS and USS, with PSS and USS never above RSS."""
    out = smoke("worker_memory.py", "--requests", "2")
    rows = re.findall(r"^(gunicorn master|web worker)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", out, re.M)
    assert [name for name, *_ in rows].count("web worker") == 2, out
    assert any(name == "gunicorn master" for name, *_ in rows), out
    for _, rss, pss, uss in rows:
        assert float(uss) <= float(pss) <= float(rss), out


# --- bench/load.py ------------------------------------------------------------------------------

LOAD_CASES = (
    "floor /healthz",
    "google EXECUTE GetCameraStream",
    "alexa InitializeCameraStreams",
    "google SYNC, 5 cameras",
    "alexa Discover, 5 cameras",
    "google SYNC, 300 cameras",
    "alexa Discover, 300 cameras",
    "token refresh, first use",
    "token refresh, retry in grace",
)
# req/s, p50, p99, ratio, failed; then CPU ms per request: web workers, database server, machine.
ROW = r"\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x\s+(\d+)\s+([\d.]+) (-|[\d.]+) ([\d.]+)$"
WRK_OUT = """Running 1s test @ http://127.0.0.1:18765/nothing
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.04ms    2.80ms  26.74ms   90.94%
    Req/Sec     1.28k   274.87     1.89k    70.00%
  Latency Distribution
     50%    0.98ms
     75%    2.36ms
     90%    4.66ms
     99%   15.74ms
  1279 requests in 1.00s, 649.67KB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 1279
Requests/sec:   1273.97
Transfer/sec:    647.12KB
"""


@functools.cache
def load_module() -> ModuleType:
    """bench/load.py as a module: its checks are tested without a server. (Registered in
    sys.modules first: its dataclasses look their module up while being built.)"""
    spec = importlib.util.spec_from_file_location("bench_load", BENCH / "load.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["bench_load"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_load_smoke() -> None:
    """Every case answered its success shape before it was timed, and no request failed under
    load (the script exits non-zero otherwise); the counts hold for 5 and 300 cameras alike."""
    require_gstreamer()  # Alexa gets a stream URL only from a configured RTSPS relay
    out = smoke("load.py", "--smoke")
    for case in LOAD_CASES:
        row = re.search(rf"^\s+{re.escape(case)}{ROW}", out, re.M)
        assert row, f"no row for {case}:\n{out}"
        assert int(row.group(1)) > 0 and row.group(5) == "0", row.group(0)
        # SQLite runs inside the workers: no database server to count; the workers' time is
        # part of the machine's.
        web, database, machine = float(row.group(6)), row.group(7), float(row.group(8))
        assert web > 0 and database == "-" and machine >= web * 0.9, row.group(0)
    for case in ("Alexa Discover", "Alexa ReportState", "Google SYNC", "Google QUERY"):
        counts = re.search(rf"^\s+{case}\s+(\d+) ->\s+(\d+)$", out, re.M)
        assert counts, f"no statement count for {case}:\n{out}"
        assert counts.group(1) == counts.group(2), f"{case} grows with cameras: {counts.group(0)}"
    assert re.search(r"Lambda forwarder \(sqlite\): direct [\d.]+ ms, through lambda_handler", out)
    # Each gunicorn worker's memory (2 workers by default), read from /proc after the cases.
    memory = re.search(r"^  RSS per web worker after the cases \(sqlite\): (.+)$", out, re.M)
    assert memory, out
    figures = r"\d+ MB \(peak \d+ MB, PSS \d+, USS \d+\)"
    assert len(re.findall(figures, memory.group(1))) == 2, memory.group(0)
    assert re.search(r"; peak while linking \(sign-ins, argon2id\): \d+ MB, \d+ MB$",
                     memory.group(1)), memory.group(0)  # fmt: skip


class Recorder(BaseHTTPRequestHandler):
    """Keeps each POST's body and X-N header; 200 for a body, 400 for an empty one."""

    seen: list[tuple[str, str]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        if body:
            self.seen.append((body, self.headers.get("X-N", "")))
        self.send_response(200 if body else 400)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


def test_wrk_sends_each_fresh_request_once() -> None:
    """The Lua that load.py gives wrk, run by wrk (the Debian package the full bench needs):
    its threads send each written request at most once, with its own headers, then empty
    bodies (counted as failed), never a request again."""
    if shutil.which("wrk") is None:
        if os.environ.get("CAMVOICE_REQUIRE_WRK") == "1":
            pytest.fail("wrk (Debian package) missing and CAMVOICE_REQUIRE_WRK=1")
        pytest.skip("wrk (Debian package) is not installed")
    load = load_module()
    written = [(f'{{"n": {n}}}', {"X-N": f"h{n}"}) for n in range(40)]
    sent = iter(written)
    case = load.Case("once each", "/x", load.any_json, "POST", fresh=lambda: next(sent))
    Recorder.seen = []
    with ThreadingHTTPServer(("127.0.0.1", 0), Recorder) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        original, load.WRK_FRESH_PER_SECOND = load.WRK_FRESH_PER_SECOND, 40
        try:
            seen = load.wrk(url, case, 1, 2)
        finally:
            load.WRK_FRESH_PER_SECOND = original
            server.shutdown()
    pairs = Recorder.seen
    assert len(pairs) == len(set(pairs)), "a request was sent twice"
    assert set(pairs) <= {(body, headers["X-N"]) for body, headers in written}
    # wrk checks each thread's first request without sending it: at most one per thread lost.
    assert len(pairs) >= len(written) - load.WRK_THREADS, pairs
    assert seen.failed > 0 and seen.requests == len(pairs) + seen.failed, seen


def test_load_only_times_the_cases_named() -> None:
    """--only times the floor and the cases whose name holds the text, and no other."""
    out = smoke("load.py", "--smoke", "--only", "EXECUTE")
    timed = [case for case in LOAD_CASES if re.search(rf"^\s+{re.escape(case)}{ROW}", out, re.M)]
    assert timed == ["floor /healthz", "google EXECUTE GetCameraStream"], out


def test_load_skip_sqlite_leaves_sqlite_out() -> None:
    """--skip-sqlite times nothing on SQLite (--smoke leaves PostgreSQL out: nothing is timed)."""
    out = smoke("load.py", "--smoke", "--skip-sqlite")
    assert "[sqlite]" not in out and "floor /healthz" not in out, out


def test_load_checks_refuse_error_answers() -> None:
    """The answers that hid the wrong-owner bug (HTTP 200 errors) are not success shapes."""
    load = load_module()
    alexa_error = {"event": {"header": {"name": "ErrorResponse"},
                             "payload": {"type": "NO_SUCH_ENDPOINT"}}}  # fmt: skip
    google_error = {"payload": {"commands": [{"status": "ERROR", "errorCode": "deviceNotFound"}]}}
    assert "NO_SUCH_ENDPOINT" in load.alexa_stream(alexa_error)
    assert "deviceNotFound" in load.google_stream(google_error)
    discovered = {"event": {"header": {"name": "Discover.Response"}, "payload": {"endpoints": []}}}
    assert "expected 5 endpoints, got 0" in load.alexa_endpoints(5)(discovered)
    assert "expected 5 devices" in load.google_devices(5)({"payload": {"devices": []}})
    assert "invalid_grant" in load.issued_token({"error": "invalid_grant"})
    stream = {"event": {"header": {"name": "Response"},
                        "payload": {"cameraStreams": [{"uri": "rtsps://x/y"}]}}}  # fmt: skip
    assert load.alexa_stream(stream) is None
    success = {"status": "SUCCESS", "states": {"cameraStreamAccessUrl": "https://x/y.m3u8"}}
    assert load.google_stream({"payload": {"commands": [success]}}) is None
    with pytest.raises(load.BenchFailure, match="HTTP 401"):
        load.judged("google SYNC", 401, "{}", load.any_json)


def test_load_fails_on_requests_failed_under_load() -> None:
    """wrk's non-2xx and socket errors are counted, and any of them stops the run."""
    load = load_module()
    seen = load.parse_wrk(WRK_OUT)
    assert (seen.rps, seen.p50, seen.p99, seen.failed, seen.requests) == (
        1273.97, 0.98, 15.74, 1282, 1279)  # fmt: skip

    class Unchecked(load.Case):  # type: ignore[name-defined,misc]
        def verify(self, base: str) -> None:
            pass

    case = Unchecked("floor /healthz", "/healthz", load.any_json)
    with pytest.raises(load.BenchFailure, match="1282 requests failed under load"):
        load.print_rows("http://unused", [case], lambda *_: seen, 1, 1)


def test_load_meter_counts_one_databases_backends(pg_db: Database) -> None:
    """The PostgreSQL backends counted for a case are exactly those of the bench's database,
    and their CPU time grows with the work they do."""
    load = load_module()
    name = make_url(pg_db.url).database
    with pg_db.engine.connect() as conn:
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        meter = load.Meter([], name)
        assert [proc.name for proc in meter.backends()] == [str(pid)]
        assert load.Meter([], name + "_other").backends() == []
        before = meter.read()
        wait_for(lambda: conn.exec_driver_sql(BUSY).scalar() is not None
                 and meter.read()[1][str(pid)] > before[1][str(pid)],
                 "the backend's CPU time to grow")  # fmt: skip
    spent = meter.spent(before, 1)
    assert spent.database is not None and spent.database > 0, spent


def test_load_fresh_requests_leave_lua_small(tmp_path: Path) -> None:
    """Requests sent once each are read from a file, not written into the Lua source, so any
    number of them fits (LuaJIT refuses a script with over 65536 constants); a tab in a
    request, which the file's format cannot hold, stops the bench."""
    load = load_module()
    bodies = iter(range(100_000))
    case = load.Case("once each", "/x", load.any_json, "POST",
                     fresh=lambda: (f'{{"n": {next(bodies)}}}', {"X-N": "v"}))  # fmt: skip
    requests_file = tmp_path / "fresh.tsv"
    load.write_fresh(case, 70_000, requests_file)
    lines = requests_file.read_text().splitlines()
    assert len(lines) == 70_000 and lines[-1] == 'X-N\tv\t{"n": 69999}'
    assert len("\n".join(load.fresh_requests(requests_file))) < 2000
    tabbed = load.Case("tab", "/x", load.any_json, "POST", fresh=lambda: ("a\tb", {}))
    with pytest.raises(load.BenchFailure, match="tab or a newline"):
        load.write_fresh(tabbed, 1, requests_file)


# --- bench/stream_start.py and bench/ezviz.py ---------------------------------------------------


def test_stream_start_smoke() -> None:
    """One cold start of each path (and a second WebRTC display joining a running feed), each
    checked to reach playable media: a decoded frame, a playlist and its MPEG-TS segment."""
    out = smoke("stream_start.py", "--runs", "1")
    for name in ("webrtc", "webrtc warm"):
        assert re.search(rf"^\s+{name}\s+median [\d.]+\s+min [\d.]+\s+max [\d.]+$", out, re.M), out
    assert re.search(r"^\s+hls\s+median [\d.]+\s+min [\d.]+\s+max [\d.]+$", out, re.M), out
    rtsps = r"^\s+rtsps\s+(median [\d.]+\s+min|not measured \(GStreamer relay not installed\))"
    assert re.search(rtsps, out, re.M), out


def test_ezviz_smoke() -> None:
    """A sync of 10 devices (30 device calls, a list and a token call) and both stream paths."""
    out = smoke("ezviz.py", "--runs", "1", "--sizes", "10")
    sync = re.search(r"^\s+10\s+([\d.]+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)$", out, re.M)
    assert sync and sync.group(2) == "32", out
    for label in ("EZVIZ cloud (proxied)", "local relay (warm)"):
        assert re.search(rf"^\s+{re.escape(label)}(\s+[\d.]+){{4}}$", out, re.M), out


def test_console_webrtc_smoke() -> None:
    """The console's live view in Chromium, cold and once more, each playing over WebRTC."""
    if not Path("/usr/bin/chromium").exists():
        if os.environ.get("CAMVOICE_REQUIRE_BROWSER") == "1":
            pytest.fail("Chromium missing and CAMVOICE_REQUIRE_BROWSER=1")
        pytest.skip("Debian's chromium is not installed")
    out = smoke("console_webrtc.py", "--runs", "1")
    assert re.search(r"^cold view: gather \d+ ms, offer -> frame \d+ ms", out, re.M), out
    assert re.search(r"^offer -> frame: median \d+ ms, max \d+ ms \(1 views\)$", out, re.M), out


def test_activity_chart_smoke() -> None:
    """The views-per-day query counted every seeded row of the 30 days (the script asserts it)."""
    out = smoke("activity_chart.py", "--rows", "500", "--runs", "1")
    assert "views-per-day query, 10 cameras, 500 audit rows" in out
    assert re.search(r"SQLite\s+median [\d.]+ ms", out)


def test_discovery_smoke() -> None:
    """Discover and SYNC through `camvoice serve`, each checked to list every camera; the answer
    found kept runs two statements fewer than the one built after a camera change: no reading
    transaction is begun (SQLite's BEGIN) and no cameras are read."""
    out = smoke("discovery.py", "--smoke")
    for case in ("alexa Discover", "google SYNC"):
        row = re.search(rf"^\s+{case}\s+this\s+([\d.]+)\s+([\d.]+)\s+(\d+)\s+(\d+)$", out, re.M)
        assert row, out
        assert int(row.group(4)) == int(row.group(3)) - 2, out
    assert re.search(r"RSS of this's server children .*: \d+(, \d+)* MB$", out, re.M), out


def test_metrics_cost_smoke() -> None:
    out = smoke("metrics_cost.py", "--runs", "10")
    for case in ("metrics, one process", "request id, text logs", "JSON access line",
                 "metrics, multiprocess"):  # fmt: skip
        assert re.search(re.escape(case) + r".*\s-?[\d.]+ us", out), out
