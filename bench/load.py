"""What camvoice costs: throughput and latency of its endpoints against the floor of the same app.

For SQLite and PostgreSQL in turn: starts `camvoice serve` (gunicorn gthread, 2 workers x 4
threads unless --workers/--threads say otherwise, the same for every case), links two owners
(5 and 300 cameras) with an Alexa and a Google client, and drives each case with wrk (Debian
package) at 32 connections. Prints requests/s, p50, p99 and the ratio to the floor (a trivial
JSON endpoint, /healthz) measured in the same run; the CPU time per request of the web
workers, of the PostgreSQL backends and of the whole machine (from /proc: where the cores
went, so what bounds a case can be read off); and the memory of each gunicorn worker after
that database's cases (VmRSS; VmHWM, its peak during the cases; PSS and USS, which count the
pages shared with the master apart), with the peak of the linking before them (sign-ins). Then
counts SQL statements per directive for owners with 5 and 300 cameras, and times the Lambda
forwarder against a direct POST. --only times a subset of the cases, beside the floor.

A figure is printed only for an answer that is the case's success shape: before timing, each
case is sent once and checked (a stream URL, the expected number of endpoints or devices, an
access token). A case that answers anything else, or any request under load that fails
(non-2xx, socket error, timeout), stops the run with a non-zero exit and says which.

    .venv/bin/python bench/load.py [--seconds 5] [--connections 32] [--skip-postgres]
                                   [--skip-sqlite] [--workers 2] [--threads 4] [--only TEXT]
    .venv/bin/python bench/load.py --smoke   # SQLite, 1 s per case, built-in loop, no wrk
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import importlib.util
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import requests
from flask.testing import FlaskClient
from sqlalchemy import event, make_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from camvoice.accounts import create_account  # noqa: E402
from camvoice.cameras import Registry  # noqa: E402
from camvoice.db import Database  # noqa: E402
from camvoice.outbox import Outbox  # noqa: E402
from camvoice.settings import load_settings  # noqa: E402
from media.rtsps import self_signed  # noqa: E402
from oauth.models import Grant  # noqa: E402
from oauth.tokens import new_secret, store_tokens  # noqa: E402
from service.app import create_app  # noqa: E402
from tests.oauth_support import (  # noqa: E402
    ALEXA_URIS,
    GOOGLE_URIS,
    Client,
    link,
    register,
    unused_refresh_tokens,
)

BIN = Path(sys.executable).parent
SECRET = "bench-forwarder-secret-0123456789"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PASSWORD = "bench-password-1"
SIZES = {"five@example.com": 5, "many@example.com": 300}

Answer = dict[str, Any]
Check = Callable[[Answer], str | None]  # None when the answer is the success shape, else why not


class BenchFailure(Exception):
    """A case did not answer its success shape, or failed under load: its figure would lie."""


# --- success shapes -------------------------------------------------------------------------


def dig(answer: Any, *path: str | int) -> Any:
    """The value at path in a JSON answer, or None: a wrong shape is reported, not a KeyError."""
    for step in path:
        try:
            answer = answer[step]
        except (KeyError, IndexError, TypeError):
            return None
    return answer


def alexa_error(answer: Answer) -> str:
    """What an Alexa answer was instead: its event name and, for an error, its type."""
    name = dig(answer, "event", "header", "name")
    kind = dig(answer, "event", "payload", "type")
    return f"event {name}" + (f" {kind}" if kind else "")


def any_json(answer: Answer) -> str | None:
    """The floor needs no shape: a 200 JSON answer is all it is."""
    return None


def alexa_stream(answer: Answer) -> str | None:
    """InitializeCameraStreams succeeded only if Alexa would get a stream URI to play."""
    streams = dig(answer, "event", "payload", "cameraStreams")
    named = dig(answer, "event", "header", "name") == "Response"
    if named and streams and all(isinstance(s, dict) and s.get("uri") for s in streams):
        return None
    return f"expected event Response with cameraStreams[].uri, got {alexa_error(answer)}"


def google_stream(answer: Answer) -> str | None:
    """EXECUTE GetCameraStream succeeded only if Google would get a stream URL to cast."""
    command = dig(answer, "payload", "commands", 0) or {}
    if command.get("status") == "SUCCESS" and dig(command, "states", "cameraStreamAccessUrl"):
        return None
    return (
        "expected commands[0] SUCCESS with states.cameraStreamAccessUrl, got "
        f"{command.get('status')} {command.get('errorCode') or ''}".rstrip()
    )


def alexa_endpoints(count: int) -> Check:
    """Discover must list every camera: a bad token also answers 200, with no endpoints."""

    def check(answer: Answer) -> str | None:
        endpoints = dig(answer, "event", "payload", "endpoints")
        if dig(answer, "event", "header", "name") == "Discover.Response":
            if isinstance(endpoints, list) and len(endpoints) == count:
                return None
            return f"expected {count} endpoints, got {len(endpoints or [])}"
        return f"expected event Discover.Response, got {alexa_error(answer)}"

    return check


def google_devices(count: int) -> Check:
    """SYNC must list every camera, or the figure is for a smaller answer."""

    def check(answer: Answer) -> str | None:
        devices = dig(answer, "payload", "devices")
        if isinstance(devices, list) and len(devices) == count:
            return None
        return f"expected {count} devices, got {dig(answer, 'payload') or answer}"

    return check


def alexa_state(answer: Answer) -> str | None:
    """ReportState of an owned camera answers StateReport; an error would count other queries."""
    if dig(answer, "event", "header", "name") == "StateReport":
        return None
    return f"expected event StateReport, got {alexa_error(answer)}"


def google_query(camera: str) -> Check:
    """QUERY of an owned, online camera answers SUCCESS for it."""

    def check(answer: Answer) -> str | None:
        state = dig(answer, "payload", "devices", camera) or {}
        if state.get("status") == "SUCCESS":
            return None
        return f"expected devices[{camera}] SUCCESS, got {state or dig(answer, 'payload')}"

    return check


def issued_token(answer: Answer) -> str | None:
    """A refresh succeeded only if it issued a new access token."""
    if answer.get("access_token"):
        return None
    return f"expected an access_token, got error {answer.get('error')}"


def judged(name: str, status: int, text: str, check: Check) -> None:
    """Raise BenchFailure unless the answer is a 200 with the success shape."""
    if status != 200:
        raise BenchFailure(f"{name}: HTTP {status}, not 200 ({text[:200]!r})")
    try:
        answer = json.loads(text)
    except ValueError:
        raise BenchFailure(f"{name}: answer is not JSON ({text[:200]!r})") from None
    problem = (
        check(answer) if isinstance(answer, dict) else f"answer is not an object: {text[:200]}"
    )
    if problem:
        raise BenchFailure(f"{name}: {problem}")


# --- cases and load generators ----------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One request, sent again and again, and the shape its answer must have."""

    name: str
    path: str
    check: Check
    method: str = "GET"
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    # A request that may be sent only once (a signed Alexa forward): a fresh one each time.
    fresh: Callable[[], tuple[str, dict[str, str]]] | None = None

    def request(self) -> tuple[str, dict[str, str]]:
        """The body and headers of the next request."""
        return self.fresh() if self.fresh is not None else (self.body, self.headers)

    def verify(self, base: str) -> None:
        """Send it once: a case that answers an error must not be timed."""
        body, headers = self.request()
        answer = requests.request(self.method, base + self.path, data=body.encode(),
                                  headers=headers, timeout=30)  # fmt: skip
        judged(self.name, answer.status_code, answer.text, self.check)


@dataclass(frozen=True)
class Load:
    """What a load generator saw: throughput, latency, and requests that did not succeed."""

    rps: float
    p50: float  # ms
    p99: float  # ms
    failed: int  # non-2xx answers plus socket errors and timeouts
    requests: int  # answered during the run (wrk's "N requests in")
    cpu: Cpu | None = None  # while the load ran (Meter), when it was asked for


Loader = Callable[[str, "Case", int, int, "Meter | None"], Load]


# Fresh requests written per second of a run: above any rate seen (2x the fastest signed
# directive, 1860/s), so wrk never runs out; if it did, it would send an empty body (an error
# answer, counted as failed, which stops the run) rather than resend one.
WRK_FRESH_PER_SECOND = 4000
WRK_THREADS = 2


def wrk(base: str, case: Case, seconds: int, connections: int, meter: Meter | None = None) -> Load:
    """Run wrk; parse its latency distribution and every kind of failure. `meter` reads the
    CPU spent while wrk runs, not while its fresh requests are made (signing them costs this
    process about as much as the server's slower cases)."""
    script = ["wrk.method = " + json.dumps(case.method)]
    if case.body:
        script.append("wrk.body = [==[" + case.body + "]==]")
    for key, value in case.headers.items():
        script.append(f"wrk.headers[{json.dumps(key)}] = {json.dumps(value)}")
    with tempfile.TemporaryDirectory(prefix="camvoice-wrk-") as folder:
        if case.fresh is not None:
            requests_file = Path(folder) / "fresh.tsv"
            write_fresh(case, WRK_FRESH_PER_SECOND * seconds, requests_file)
            script += fresh_requests(requests_file)
        lua = Path(folder) / "case.lua"
        lua.write_text("\n".join(script) + "\n")
        before = meter.read() if meter is not None else None
        out = subprocess.run(
            ["wrk", f"-t{WRK_THREADS}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
             "--latency", "-s", str(lua), base + case.path],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    load = parse_wrk(out)
    if meter is None or before is None:
        return load
    return replace(load, cpu=meter.spent(before, load.requests))


def write_fresh(case: Case, count: int, path: Path) -> None:
    """`count` requests made beforehand (wrk's Lua cannot sign, nor issue a refresh token), a
    line each: header name, value, ..., then the body, split by tabs. A file, not Lua source:
    LuaJIT refuses a script with more than 65536 constants, which 8 s of signed forwards
    passed."""
    with path.open("w") as out:
        for _ in range(count):
            body, headers = case.request()
            fields = [text for pair in headers.items() for text in pair] + [body]
            if any("\t" in text or "\n" in text for text in fields):
                raise BenchFailure(f"{case.name}: a request holds a tab or a newline")
            out.write("\t".join(fields) + "\n")


def fresh_requests(path: Path) -> list[str]:
    """wrk's Lua for requests sent once each, read from `path` (write_fresh), the threads
    taking their turns (thread i the lines i, i + WRK_THREADS, ...). None is ever sent twice:
    a thread that has run out sends an empty body, which no case accepts (counted as failed,
    so the run stops), where resending would time a replay (or a refresh token's retry)."""
    return [
        f"local path = [==[{path}]==]",
        "local threads = 0",
        "function setup(thread) thread:set('index', threads); threads = threads + 1 end",
        "local function split(line)",
        "  local parts, start = {}, 1",
        "  while true do",
        "    local tab = string.find(line, '\\t', start, true)",
        "    if not tab then parts[#parts + 1] = string.sub(line, start); return parts end",
        "    parts[#parts + 1] = string.sub(line, start, tab - 1)",
        "    start = tab + 1",
        "  end",
        "end",
        "function init(args)",
        "  fresh, sent, n = {}, 0, 0",
        "  for line in io.lines(path) do",
        f"    if n % {WRK_THREADS} == index then fresh[#fresh + 1] = split(line) end",
        "    n = n + 1",
        "  end",
        "end",
        "function request()",
        "  sent = sent + 1",
        "  local r = fresh[sent]",
        "  if r == nil then return wrk.format(nil, nil, nil, '') end",
        "  for i = 1, #r - 1, 2 do wrk.headers[r[i]] = r[i + 1] end",
        "  return wrk.format(nil, nil, nil, r[#r])",
        "end",
    ]


def parse_wrk(out: str) -> Load:
    """wrk's summary as a Load; a missing line is an error, not a zero."""

    def ms(label: str) -> float:
        found = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not found:
            raise BenchFailure(f"wrk printed no {label} latency:\n{out}")
        return float(found.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not rps:
        raise BenchFailure(f"wrk printed no Requests/sec:\n{out}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    failed = int(bad.group(1)) if bad else 0
    failed += sum(int(n) for n in sockets.groups()) if sockets else 0
    done = re.search(r"^\s*(\d+) requests in ", out, re.M)
    if not done:
        raise BenchFailure(f"wrk printed no request count:\n{out}")
    return Load(float(rps.group(1)), ms("50%"), ms("99%"), failed, int(done.group(1)))


def python_load(
    base: str, case: Case, seconds: int, connections: int, meter: Meter | None = None
) -> Load:
    """A small closed-loop load from threads: the smoke mode's stand-in for wrk.

    Slower than wrk and not comparable with its figures; it exists so the smoke test runs every
    case, its success check and the failure count without a Debian package.
    """
    latencies: list[float] = []
    failed = [0]
    deadline = time.perf_counter() + seconds

    def client() -> None:
        with requests.Session() as session:
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                body, headers = case.request()
                try:
                    answer = session.request(case.method, base + case.path, headers=headers,
                                             data=body.encode(), timeout=10)  # fmt: skip
                    ok = 200 <= answer.status_code < 300
                except requests.RequestException:
                    ok = False
                latencies.append((time.perf_counter() - began) * 1000)
                failed[0] += 0 if ok else 1

    threads = [threading.Thread(target=client) for _ in range(connections)]
    before = meter.read() if meter is not None else None
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cuts = (
        statistics.quantiles(latencies, n=100, method="inclusive")
        if len(latencies) > 1
        else latencies * 99
    )
    cpu = meter.spent(before, len(latencies)) if meter is not None and before is not None else None
    return Load(len(latencies) / seconds, cuts[49], cuts[98], failed[0], len(latencies), cpu)


# --- the server and its owners ------------------------------------------------------------------


class Server:
    """`camvoice serve` as a subprocess: the same gunicorn set-up an operator runs.

    Its output goes to a log file, named in the failure when it does not start: a bench that
    says only "did not start" sends the reader hunting.
    """

    def __init__(self, env: dict[str, str], port: int, log: Path, model: tuple[int, int]) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        workers, threads = model
        command = [str(BIN / "camvoice"), "serve", "--port", str(port),
                   "--workers", str(workers), "--threads", str(threads)]  # fmt: skip
        with log.open("wb") as out:
            self.process = subprocess.Popen(command, env=env, stdout=out,
                                            stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 180  # a loaded machine has taken over 60 s
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if requests.get(self.url + "/readyz", timeout=5).ok:
                    return
            except requests.RequestException:
                time.sleep(0.2)
        self.stop()
        tail = log.read_text(errors="replace")[-1500:]
        raise BenchFailure(f"camvoice serve did not become ready within 180 s; {log}:\n{tail}")

    def stop(self) -> None:
        """Its gunicorns stop one after the other, each after its workers: on a loaded machine
        that has taken over 15 s, which failed a run whose figures were all printed."""
        self.process.terminate()
        self.process.wait(60)

    def workers(self) -> list[Path]:
        """/proc of each gunicorn worker: the master's children that run its command line (the
        RTSPS relay and the media node are children too, but other programs)."""
        master = Path(f"/proc/{self.process.pid}/cmdline").read_bytes()
        found = []
        for proc in Path("/proc").iterdir():
            try:
                if not proc.name.isdigit() or proc_field(proc, "PPid") != self.process.pid:
                    continue
                if (proc / "cmdline").read_bytes() == master:
                    found.append(proc)
            except (OSError, ValueError):  # gone meanwhile, or not readable
                continue
        return sorted(found, key=lambda proc: int(proc.name))


def reset_peak(proc: Path) -> None:
    """VmHWM starts again from the current RSS (proc(5), clear_refs "5"), so the peak printed
    after the cases is theirs, not the linking's: each sign-in's argon2id takes 64 MiB."""
    (proc / "clear_refs").write_text("5")


def memory_kb(proc: Path) -> tuple[int, int, int, int]:
    """(RSS, peak RSS, PSS, USS) in kB. RSS counts the pages a worker shares with the master
    (imports made before the fork) in full; PSS shares them out, USS is the worker's own."""
    rollup = {}
    for line in (proc / "smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        rollup[name] = int(value.split()[0])
    own = rollup["Private_Clean"] + rollup["Private_Dirty"]
    return proc_field(proc, "VmRSS"), proc_field(proc, "VmHWM"), rollup["Pss"], own


def proc_field(proc: Path, name: str) -> int:
    """A number from /proc/<pid>/status (kB for the memory fields)."""
    for line in (proc / "status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise ValueError(f"{proc} has no {name}")


@contextmanager
def serving(env: dict[str, str], port: int, log: Path, model: tuple[int, int]) -> Iterator[Server]:
    """A server that is stopped however the bench ends."""
    server = Server(env, port, log, model)
    try:
        yield server
    finally:
        server.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def signed(body: bytes) -> dict[str, str]:
    """The headers the Lambda forwarder adds: camvoice refuses an unsigned directive."""
    ts = str(int(time.time()))
    sig = hmac.new(SECRET.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {
        "X-Camvoice-Timestamp": ts,
        "X-Camvoice-Signature": sig,
        "Content-Type": "application/json",
    }


def owner_with(db: Database, email: str, count: int) -> list[str]:
    """An owner with `count` ready cameras; returns their ids, so a case uses this owner's."""
    with db.session() as session:
        account = create_account(session, email, PASSWORD)
        registry = Registry(Outbox())
        return [
            registry.add(session, account, f"Camera {i:03d}", actor="bench", model="C6N", firmware="1.0.0",
                         nicknames=[f"cam {i}"], room="Hall").id
            for i in range(count)
        ]  # fmt: skip


@dataclass
class Owner:
    """An owner's cameras and the tokens each assistant got when linking (audience-bound)."""

    cameras: list[str]
    alexa: dict[str, str]
    google: dict[str, str]


class Live:
    """LiveServer-shaped wrapper so the OAuth test helpers can link through a real server."""

    def __init__(self, url: str) -> None:
        self.url = url


def linked_owners(db: Database, url: str, alexa: Client, google: Client) -> dict[str, Owner]:
    """Each owner linked through the real OAuth flow, once for Alexa and once for Google."""
    cameras = {email: owner_with(db, email, count) for email, count in SIZES.items()}
    owners = {}
    for email, ids in cameras.items():
        _, alexa_token = link(Live(url), alexa, email, password=PASSWORD)  # type: ignore[arg-type]
        _, google_token = link(Live(url), google, email, "client_secret_post", PASSWORD)  # type: ignore[arg-type]
        owners[email] = Owner(ids, alexa_token, google_token)
    return owners


# --- the load cases ---------------------------------------------------------------------------


def directive(namespace: str, name: str, token: str, endpoint: str | None = None,
              payload: dict[str, Any] | None = None) -> str:  # fmt: skip
    """An Alexa directive body, with the owner's token where Alexa puts it."""
    header = {"namespace": namespace, "name": name, "payloadVersion": "3",
              "messageId": str(uuid.uuid4()), "correlationToken": "c"}  # fmt: skip
    scope = {"type": "BearerToken", "token": token}
    body: dict[str, Any] = {"header": header, "payload": payload or {}}
    if endpoint:
        body["endpoint"] = {"scope": scope, "endpointId": endpoint}
    else:
        body["payload"] = {**(payload or {}), "scope": scope}
    return json.dumps({"directive": body})


def renewed(message: dict[str, Any]) -> dict[str, Any]:
    """The directive again as Alexa sends each one: with a messageId of its own (camvoice
    accepts each signed forward once, and the same body signed in the same second is the same
    forward)."""
    header = {**message["directive"]["header"], "messageId": str(uuid.uuid4())}
    return {**message, "directive": {**message["directive"], "header": header}}


def alexa_case(name: str, body: str, check: Check) -> Case:
    """camvoice accepts each signed forward once: every request is a new directive (its own
    messageId), signed afresh, as the Lambda forwards Alexa's."""

    def fresh() -> tuple[str, dict[str, str]]:
        text = json.dumps(renewed(json.loads(body)))
        return text, signed(text.encode())

    return Case(name, "/alexa/smart-home", check, "POST", body, signed(body.encode()), fresh)


def google_case(name: str, token: str, intent: dict[str, Any], check: Check) -> Case:
    body = json.dumps({"requestId": "b", "inputs": [intent]})
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    return Case(name, "/google/fulfillment", check, "POST", body, headers)


def stream_cases(five: Owner) -> list[Case]:
    """The stream directives, each with the token of the owner of the camera it asks for."""
    camera = five.cameras[0]
    execute = {"intent": "action.devices.EXECUTE", "payload": {"commands": [{
        "devices": [{"id": camera}], "execution": [{
            "command": "action.devices.commands.GetCameraStream",
            "params": {"StreamToChromecast": True, "SupportedStreamProtocols": ["hls"]}}]}]}}  # fmt: skip
    streams = {"cameraStreams": [{"protocol": "RTSP", "resolution": {"width": 1920, "height": 1080},
               "authorizationType": "NONE", "videoCodec": "H264", "audioCodec": "AAC"}]}  # fmt: skip
    init = directive("Alexa.CameraStreamController", "InitializeCameraStreams",
                     five.alexa["access_token"], camera, streams)  # fmt: skip
    return [
        google_case("google EXECUTE GetCameraStream", five.google["access_token"], execute,
                    google_stream),
        alexa_case("alexa InitializeCameraStreams", init, alexa_stream),
    ]  # fmt: skip


def discovery_cases(owners: dict[str, Owner]) -> list[Case]:
    """SYNC and Discover for each owner, checked to list all of that owner's cameras."""
    cases = []
    for owner in owners.values():
        count = len(owner.cameras)
        sync = {"intent": "action.devices.SYNC"}
        cases.append(google_case(f"google SYNC, {count} cameras", owner.google["access_token"],
                                 sync, google_devices(count)))  # fmt: skip
        discover = directive("Alexa.Discovery", "Discover", owner.alexa["access_token"])
        cases.append(alexa_case(f"alexa Discover, {count} cameras", discover,
                                alexa_endpoints(count)))  # fmt: skip
    return cases


FORM = {"Content-Type": "application/x-www-form-urlencoded"}
REFRESH_CASES = ("token refresh, first use", "token refresh, retry in grace")


def refresh_cases(db: Database, client: Client, retried: str, seconds: int) -> list[Case]:
    """The refresh grant as Alexa and Google use it: each request presents a refresh token for
    the first time (claim it, supersede its parent, store a new pair). Enough unused tokens are
    issued beforehand, straight into the tables, for every request wrk can send (one thread's
    share each); each answer must carry a new access token. Then the retry path, labelled: one
    token sent again and again, each use after the first a retry within its grace period."""
    with db.session() as session:
        account = create_account(session, "refresh@example.com", PASSWORD).id
    count = WRK_FRESH_PER_SECOND * seconds + 1  # and the request that checks the answer first
    unused = iter(unused_refresh_tokens(db, account, client.client_id, count))
    auth = f"&client_id={client.client_id}&client_secret={client.secret}"

    def first_use() -> tuple[str, dict[str, str]]:
        token = next(unused, None)  # none left: no token, an error answer, counted as failed
        presented = f"&refresh_token={token}" if token else ""
        return f"grant_type=refresh_token{auth}{presented}", FORM

    retry = f"grant_type=refresh_token&refresh_token={retried}{auth}"
    return [
        Case(REFRESH_CASES[0], "/oauth/token", issued_token, "POST", fresh=first_use),
        Case(REFRESH_CASES[1], "/oauth/token", issued_token, "POST", retry, FORM),
    ]


# --- the suites -------------------------------------------------------------------------------


def server_env(label: str, db_url: str, port: int, scratch: Path) -> dict[str, str]:
    """The environment of `camvoice serve`: the RTSPS relay on, so Alexa gets stream URLs."""
    cert, key = scratch / "cert.pem", scratch / "key.pem"
    self_signed(cert, key, "127.0.0.1")
    return {**os.environ, "CAMVOICE_DATA_DIR": str(scratch / label), "CAMVOICE_DATABASE_URL": db_url,
            "CAMVOICE_SECRET_KEY": "bench-secret-key-" + "x" * 40, "CAMVOICE_LOG_LEVEL": "WARNING",
            "CAMVOICE_PUBLIC_URL": f"http://127.0.0.1:{port}", "CAMVOICE_ALEXA_FORWARDER_SECRET": SECRET,
            "CAMVOICE_RELAY_ENABLED": "true", "CAMVOICE_RTSPS_CERT": str(cert), "CAMVOICE_RTSPS_KEY": str(key),
            "CAMVOICE_LOGIN_MAX_FAILURES_IP": "100000"}  # fmt: skip


@dataclass(frozen=True)
class Cpu:
    """CPU time per answered request of a case, in ms: the web workers; the database server's
    backends serving this bench's database (PostgreSQL; SQLite runs inside the workers); and
    the whole machine, wrk and the kernel included. The machine has os.cpu_count() CPUs to
    share out, so a case's ceiling is their time divided by `machine`."""

    web: float
    database: float | None
    machine: float


class Meter:
    """Reads, from /proc, the CPU time spent by the web workers, by the PostgreSQL backends of
    one database, and by the machine (user, nice, system, irq, softirq, steal: all but idle
    and iowait), before and after a case."""

    def __init__(self, workers: list[Path], database: str | None) -> None:
        self.workers = workers
        self.database = database
        self.tick = os.sysconf("SC_CLK_TCK")

    def read(self) -> tuple[dict[str, int], dict[str, int], int]:
        """(ticks by worker, ticks by backend, the machine's busy ticks)."""
        web = process_ticks(self.workers)
        backends = process_ticks(self.backends())
        with open("/proc/stat") as stat:
            fields = [int(n) for n in stat.readline().split()[1:9]]
        busy = sum(fields) - fields[3] - fields[4]  # idle and iowait
        return web, backends, busy

    def backends(self) -> list[Path]:
        """/proc of each PostgreSQL backend connected to this bench's database."""
        if self.database is None:
            return []
        marker = f" {self.database} ".encode()
        found = []
        for proc in Path("/proc").iterdir():
            try:
                command = (proc / "cmdline").read_bytes() if proc.name.isdigit() else b""
            except OSError:  # gone meanwhile
                continue
            if command.startswith(b"postgres: ") and marker in command:
                found.append(proc)
        return found

    def spent(self, before: tuple[dict[str, int], dict[str, int], int], requests: int) -> Cpu:
        """CPU ms per request since `before`: a backend started meanwhile counts from zero, one
        that ended meanwhile is not counted (the pool keeps its connections)."""
        web, backends, busy = self.read()
        per = 1000 / self.tick / max(requests, 1)

        def grown(now: dict[str, int], then: dict[str, int]) -> float:
            return sum(ticks - then.get(pid, 0) for pid, ticks in now.items()) * per

        database = grown(backends, before[1]) if self.database is not None else None
        return Cpu(grown(web, before[0]), database, (busy - before[2]) * per)


def process_ticks(procs: list[Path]) -> dict[str, int]:
    """utime + stime (proc(5) stat fields 14 and 15) by pid, of the processes still there."""
    ticks = {}
    for proc in procs:
        try:
            stat = (proc / "stat").read_text()
        except OSError:  # gone
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks[proc.name] = int(fields[11]) + int(fields[12])
    return ticks


def print_rows(
    base: str, cases: list[Case], loader: Loader, seconds: int, connections: int,
    meter: Meter | None = None,
) -> None:  # fmt: skip
    """One row per case as it is measured; a request that failed under load stops the run."""
    print(f"  {'case':36} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'vs floor':>9} {'failed':>7}"
          + ("   CPU ms/request: web  db  machine" if meter else ""))  # fmt: skip
    floor = 0.0
    for case in cases:
        case.verify(base)
        load = loader(base, case, seconds, connections, meter)
        floor = floor or load.rps
        row = (f"  {case.name:36} {load.rps:8.0f} {load.p50:8.1f} {load.p99:8.1f} "
               f"{load.rps / floor:8.2f}x {load.failed:7d}")  # fmt: skip
        if load.cpu is not None:
            cpu = load.cpu
            database = "-" if cpu.database is None else f"{cpu.database:.2f}"
            row += f"   {cpu.web:.2f} {database} {cpu.machine:.2f}"
        print(row, flush=True)
        if load.failed:
            raise BenchFailure(f"{case.name}: {load.failed} requests failed under load "
                               "(non-2xx, socket error or timeout)")  # fmt: skip


def run_suite(label: str, db_url: str, loader: Loader, seconds: int, connections: int,
              scratch: Path, model: tuple[int, int], only: list[str],
              forwarder_runs: int = 0) -> None:  # fmt: skip
    """Every case against one database, then (if asked) the forwarder against the same server."""
    port = free_port()
    db = Database(db_url)
    db.upgrade()
    alexa = register(db, "Bench Alexa", ALEXA_URIS, "alexa")
    google = register(db, "Bench Google", GOOGLE_URIS, "google")
    env = server_env(label, db_url, port, scratch)
    try:
        with serving(env, port, scratch / f"{label}.log", model) as server:
            owners = linked_owners(db, server.url, alexa, google)
            five = owners["five@example.com"]

            def chosen(name: str) -> bool:
                return not only or any(text in name for text in only)

            cases = [*stream_cases(five), *discovery_cases(owners)]
            if any(map(chosen, REFRESH_CASES)):  # thousands of tokens written: only if timed
                cases += refresh_cases(db, alexa, five.alexa["refresh_token"], seconds)
            cases = [Case("floor /healthz", "/healthz", any_json),
                     *(case for case in cases if chosen(case.name))]  # fmt: skip
            workers = server.workers()
            if not workers:
                raise BenchFailure("found no gunicorn worker to read the memory of")
            linking = [memory_kb(proc)[1] for proc in workers]
            for proc in workers:
                reset_peak(proc)
            print(f"\n[{label}]")
            database = None if db.is_sqlite else make_url(db_url).database
            print_rows(server.url, cases, loader, seconds, connections, Meter(workers, database))
            print(f"  RSS per web worker after the cases ({label}): "
                  + ", ".join(f"{rss / 1024:.0f} MB (peak {peak / 1024:.0f} MB, PSS "
                              f"{pss / 1024:.0f}, USS {uss / 1024:.0f})"
                              for rss, peak, pss, uss in map(memory_kb, workers))
                  + "; peak while linking (sign-ins, argon2id): "
                  + ", ".join(f"{peak / 1024:.0f} MB" for peak in linking), flush=True)  # fmt: skip
            if forwarder_runs:
                direct, forwarded = forwarder_latency(server.url, five, forwarder_runs)
                print(f"\nLambda forwarder ({label}): direct {direct:.1f} ms, through lambda_handler "
                      f"{forwarded:.1f} ms (median of {forwarder_runs}; added "
                      f"{forwarded - direct:.1f} ms)", flush=True)  # fmt: skip
    finally:
        db.dispose()


# --- SQL statements per directive -------------------------------------------------------------


def issue_token(db: Database, account_id: str, client: Client) -> str:
    """An access token of a new grant to `client`: the audience a directive's token must have."""
    with db.session() as session:
        grant = Grant(account_id=account_id, client_id=client.client_id, scope="cameras")
        session.add(grant)
        session.flush()
        token = new_secret()
        store_tokens(session, grant, token, None, 3600)
    return token


def counted_cases(
    alexa: str, google: str, camera: str, count: int
) -> dict[str, tuple[str, dict[str, Any], Check]]:
    """(path, body, check) per directive: Alexa's with an Alexa token, Google's with Google's."""
    return {
        "Alexa Discover": ("/alexa/smart-home", json.loads(directive("Alexa.Discovery", "Discover", alexa)),
                           alexa_endpoints(count)),
        "Alexa ReportState": ("/alexa/smart-home", json.loads(directive("Alexa", "ReportState", alexa, camera)),
                              alexa_state),
        "Google SYNC": ("/google/fulfillment", {"requestId": "q", "inputs": [{"intent": "action.devices.SYNC"}]},
                        google_devices(count)),
        "Google QUERY": ("/google/fulfillment", {"requestId": "q", "inputs": [
            {"intent": "action.devices.QUERY", "payload": {"devices": [{"id": camera}]}}]}, google_query(camera)),
    }  # fmt: skip


def count_statements(http: FlaskClient, statements: list[str], name: str, path: str,
                     body: dict[str, Any], check: Check, google: str) -> int:  # fmt: skip
    """Statements one directive runs, counted only once its answer is the success shape."""

    def post() -> Any:
        if not path.startswith("/alexa"):
            headers = {"Authorization": f"Bearer {google}", "Content-Type": "application/json"}
            return http.post(path, data=json.dumps(body).encode(), headers=headers)
        raw = json.dumps(renewed(body)).encode()  # a signed forward is accepted once
        return http.post(path, data=raw, headers=signed(raw))

    post()  # warm: a first use of a grant writes last_used_at
    statements.clear()
    reply = post()
    judged(name, reply.status_code, reply.get_data(as_text=True), check)
    return len(statements)


def query_counts(scratch: Path) -> dict[str, tuple[int, int]]:
    """SQL statements per request for owners with 5 and with 300 cameras (in-process).

    The same count for both owners means no statement per camera (no N+1).
    """
    settings = load_settings(data_dir=scratch / "queries", secret_key="q" * 40,
                             alexa_forwarder_secret=SECRET)  # fmt: skip
    db = Database(settings.sqlalchemy_url)
    db.upgrade()
    cameras = {email: owner_with(db, email, count) for email, count in SIZES.items()}
    app = create_app(settings, db)
    alexa = register(db, "Q Alexa", ALEXA_URIS, "alexa")
    google = register(db, "Q Google", GOOGLE_URIS, "google")
    statements: list[str] = []
    event.listen(db.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    from camvoice.accounts import find_account

    counts: dict[str, list[int]] = {}
    http = app.test_client()
    for email, ids in cameras.items():
        with db.session() as session:
            account_id = find_account(session, email).id  # type: ignore[union-attr]
        atoken, gtoken = issue_token(db, account_id, alexa), issue_token(db, account_id, google)
        for name, (path, body, check) in counted_cases(atoken, gtoken, ids[0], len(ids)).items():
            n = count_statements(http, statements, name, path, body, check, gtoken)
            counts.setdefault(name, []).append(n)
    app.extensions["camvoice.relays"].shutdown()
    db.dispose()
    return {k: (v[0], v[1]) for k, v in counts.items()}


# --- the Lambda forwarder -----------------------------------------------------------------------


def forwarder_module() -> ModuleType:
    """deploy/lambda/lambda_function.py, loaded as Lambda would load it."""
    spec = importlib.util.spec_from_file_location(
        "lambda_function", ROOT / "deploy/lambda/lambda_function.py"
    )
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def forwarder_latency(base: str, owner: Owner, runs: int) -> tuple[float, float]:
    """Median ms of a direct signed POST vs the same ReportState through lambda_handler.

    Both are checked once to answer a StateReport for the owner's camera before timing: an
    error answer would time a shorter path.
    """
    message = json.loads(directive("Alexa", "ReportState", owner.alexa["access_token"],
                                   owner.cameras[0]))  # fmt: skip
    module = forwarder_module()
    os.environ["CAMVOICE_ENDPOINT"] = base + "/alexa/smart-home"
    os.environ["CAMVOICE_FORWARDER_SECRET"] = SECRET

    def direct() -> None:
        raw = json.dumps(renewed(message)).encode()
        answer = requests.post(base + "/alexa/smart-home", data=raw, headers=signed(raw),
                               timeout=10)  # fmt: skip
        judged("direct ReportState", answer.status_code, answer.text, alexa_state)

    def forwarded() -> None:
        answer = module.lambda_handler(renewed(message), None)
        judged("forwarded ReportState", 200, json.dumps(answer), alexa_state)

    return timed_medians(direct, forwarded, runs)


def timed_medians(
    first: Callable[[], None], second: Callable[[], None], runs: int
) -> tuple[float, float]:
    """Median ms of each, interleaved so both see the same machine load; checked once before."""
    first(), second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(runs):
        for call, into in ((first, times[0]), (second, times[1])):
            began = time.perf_counter()
            call()
            into.append((time.perf_counter() - began) * 1000)
    return statistics.median(times[0]), statistics.median(times[1])


# --- main ---------------------------------------------------------------------------------------


@contextmanager
def postgres_database() -> Iterator[str]:
    """A scratch PostgreSQL database, dropped afterwards whatever happens."""
    name = f"camvoice_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=5, help="seconds per case")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="TEXT",
        help="time only the cases whose name holds TEXT (again for more), beside the floor",
    )
    parser.add_argument("--smoke", action="store_true",
                        help="SQLite only, 1 s per case, 4 clients from a Python loop (no wrk), "
                             "3 forwarder runs: every case and check, no comparable figures")  # fmt: skip
    args = parser.parse_args()
    if args.smoke:
        args.seconds, args.connections, args.skip_postgres = 1, 4, True
    return args


def run(args: argparse.Namespace) -> None:
    """Every part of the bench, in the order bench/README.md quotes them."""
    scratch = Path(tempfile.mkdtemp(prefix="camvoice-bench-"))
    loader: Loader = python_load if args.smoke else wrk
    tool = "Python loop (smoke)" if args.smoke else "wrk -t2"
    model = (args.workers, args.threads)
    print(f"camvoice load benchmark: {tool} -c{args.connections} -d{args.seconds}s, "
          f"gunicorn {args.workers} workers x {args.threads} threads")  # fmt: skip
    sqlite = f"sqlite:///{scratch / 'bench.db'}"
    forwarder_runs = 3 if args.smoke else 30
    if not args.skip_sqlite:
        run_suite("sqlite", sqlite, loader, args.seconds, args.connections, scratch, model,
                  args.only, forwarder_runs)  # fmt: skip
    if not args.skip_postgres:
        with postgres_database() as url:
            run_suite("postgresql", url, loader, args.seconds, args.connections, scratch, model,
                      args.only)  # fmt: skip
    print("\nSQL statements per request, each BEGIN included, after one warm-up request")
    print("(owner with 5 cameras -> with 300), SQLite, in-process:")
    for case, (five, many) in query_counts(scratch).items():
        print(f"  {case:20} {five:3d} -> {many:3d}")


def main() -> None:
    try:
        run(arguments())
    except BenchFailure as failure:
        sys.exit(f"bench/load.py FAILED: {failure}")


if __name__ == "__main__":
    main()
