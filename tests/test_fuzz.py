"""Property-based fuzzing of every endpoint that takes input, over real HTTP (issue 15, part 1).

Each strategy builds a structurally plausible message of its protocol (a signed Alexa directive,
a Google intent, a custom-skill envelope, an OAuth form, a MediaMTX auth hook call, a ticketed
media path, a console form) and replaces fields, often deep inside, with hostile leaves: deep
nesting, huge numbers, NaN, NUL, lone surrogates, invalid UTF-8, lists or objects where strings
go, long and odd Unicode. The app runs on a threaded server; the property is the same for all:
an answer (no lost connection), never a 5xx, and no traceback in the log (Alexa's handler turns
exceptions into INTERNAL_ERROR with HTTP 200, so that is checked too).

Fixed seed (derandomize), no deadline, a bounded number of examples per endpoint: the whole
module runs in well under a minute on SQLite and PostgreSQL (the database that refuses NUL and
enforces column lengths).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote_from_bytes

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.demo import DEMO_CAMERAS, DEMO_EMAIL, DEMO_PASSWORD
from tests.hostile_support import SKILL_ID, World, build_world, forged_ticket, ticket_of
from tests.oauth_support import GOOGLE_URIS

# Every endpoint is fuzzed on SQLite; those whose input reaches text columns before any
# signature or pattern check (ids, emails, client ids, codes) on PostgreSQL too, which refuses
# NUL and enforces column lengths.
SQLITE = pytest.mark.parametrize("world", ["sqlite"], indirect=True)
BOTH = pytest.mark.parametrize(
    "world", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)


def fuzz(examples: int) -> Callable[[Any], Any]:
    """Fixed seed, no deadline (a loaded CI machine), no example database on disk."""
    return settings(
        max_examples=examples, derandomize=True, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.large_base_example, HealthCheck.filter_too_much],
    )  # fmt: skip


class Tracebacks(logging.Handler):
    """Errors logged anywhere in the app: an unhandled exception (with its traceback), or one
    a handler caught but should never have had (the custom skill's apology logs its type)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def take(self) -> list[str]:
        found = [f"{r.name}: {r.getMessage()} ({r.exc_info and r.exc_info[1]!r})"
                 for r in self.records]  # fmt: skip
        self.records.clear()
        return found


@pytest.fixture(scope="module")
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    # Sign-in limits out of the way, so fuzzed sign-ins reach the account lookup.
    yield from build_world(request.param, request, tmp_path_factory.mktemp("fuzz"),
                           login_max_failures_ip=10**6, login_max_failures_account=10**6)  # fmt: skip


@pytest.fixture(scope="module")
def tracebacks() -> Iterator[Tracebacks]:
    handler = Tracebacks()
    logging.getLogger().addHandler(handler)
    yield handler
    logging.getLogger().removeHandler(handler)


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


# --- hostile leaves -----------------------------------------------------------------------------

HOSTILE_TEXT = [
    "", " ", "\x00", "cam\x00", "\ud800", "a\udfffb", "%00", "%ff", "../../etc/passwd",
    "<audio src='https://evil.example/x.mp3'/>", "& <b>", "'; DROP TABLE accounts; --",
    "a" * 300, "é" * 200, "ñandú 📷", "\u202egnp.exe", "\ufeff", "null", "[]", "{}", "1e999",
    "-0", "\\", "\r\n", "\t", "Front Door", "action.devices.SYNC", "Alexa",
]  # fmt: skip
HUGE_NUMBERS = [10**400, -(10**400), 2**63, -(2**63) - 1, 2**64, 10**30]
# Placeholders, replaced in the serialized message: deep nesting (json.dumps would recurse
# into it), and values only the running world knows (camera ids, tokens, tickets: URL-safe
# ASCII, so they go into JSON strings, form fields and paths as they are).
DEEP = re.compile(r'"@@deep:(\d+)@@"')
PLACEHOLDER = re.compile(r"@@(\w+):([^@\"]*)@@")


def deep(depth: int) -> str:
    return f"@@deep:{depth}@@"


def world_value(name: str, arg: str = "") -> str:
    return f"@@{name}:{arg}@@"


leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from(HUGE_NUMBERS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(HOSTILE_TEXT),
    st.sampled_from([65, 300, 1100, 3000]).map(deep),  # past our limit, past Python's
)
anything = st.recursive(
    leaves,
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3)
    ),
    max_leaves=8,
)


def field(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the right thing, sometimes anything at all."""
    return st.one_of(good, good, good, anything)


def optional(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """An object with all its fields, or (one time in three) with each field maybe missing."""
    whole = st.fixed_dictionaries(fields)
    return st.one_of(whole, whole, st.fixed_dictionaries({}, optional=fields))


def render(world: World, value: Any) -> str:
    """JSON text of a generated message, placeholders filled in."""
    text = DEEP.sub(lambda m: "[" * int(m[1]) + "]" * int(m[1]), json.dumps(value))
    return fill(world, text)


def fill(world: World, text: str) -> str:
    """Text with the world's values in place of their placeholders."""
    ticket = ticket_of(world.hls_url)
    values: dict[str, Callable[[str], str]] = {
        "camera": lambda name: world.cameras.get(name, name),
        "alexa_token": lambda _: world.alexa_token,
        "google_token": lambda _: world.google_token,
        "ticket": lambda _: ticket,
        "flipped_ticket": lambda at: flip(ticket, int(at)),
        "google_client": lambda _: world.google.client_id,
        "google_secret": lambda _: world.google.secret or "",
    }

    def one(match: re.Match[str]) -> str:
        value = values.get(match[1])
        return value(match[2]) if value else match[0]

    return PLACEHOLDER.sub(one, text)


def flip(token: str, at: int) -> str:
    """The ticket with one character changed: a tampered payload or MAC."""
    at %= len(token)
    return token[:at] + ("A" if token[at] != "A" else "B") + token[at + 1 :]


def wire(body: str, how: str) -> bytes:
    """The JSON text as sent: UTF-8 mostly; sometimes UTF-16, invalid UTF-8 or cut short."""
    data = body.encode("utf-8", "surrogatepass")
    return {
        "utf-8": data,
        "utf-16": body.encode("utf-16", "surrogatepass"),
        "invalid": data[: len(data) // 2] + b"\xff\xfe" + data[len(data) // 2 :],
        "cut": data[: len(data) // 2],
    }[how]


encodings = st.sampled_from(["utf-8"] * 6 + ["utf-16", "invalid", "cut"])
cameras = st.sampled_from([c["name"] for c in DEMO_CAMERAS]).map(lambda n: world_value("camera", n))


# --- the exchange and its property ------------------------------------------------------------


def exchange(
    http: requests.Session, tracebacks: Tracebacks, method: str, url: str, **kw: Any
) -> requests.Response:
    """One request: it must be answered, below 500, without a traceback in the log."""
    try:
        response = http.request(method, url, timeout=60, allow_redirects=False, **kw)
    except requests.ConnectionError as exc:
        raise AssertionError(f"{method} {url[:120]}: connection lost ({exc})") from None
    assert response.status_code < 500, (
        f"{method} {url[:120]} -> {response.status_code}: {response.text[:300]}"
    )
    logged = tracebacks.take()
    assert not logged, f"{method} {url[:120]} logged a traceback: {logged}"
    return response


# --- Google fulfillment -------------------------------------------------------------------------

GET_STREAM = "action.devices.commands.GetCameraStream"
devices = st.lists(st.fixed_dictionaries({"id": field(cameras)}), max_size=3)
execution = st.fixed_dictionaries({
    "command": field(st.sampled_from([GET_STREAM, "action.devices.commands.OnOff"])),
    "params": field(optional(
        SupportedStreamProtocols=field(st.lists(field(st.sampled_from(["hls", "dash", "webrtc"])),
                                                max_size=3)),
        StreamToChromecast=field(st.booleans()),
    )),
})  # fmt: skip
google_payload = st.one_of(
    optional(devices=field(devices)),
    optional(commands=field(st.lists(optional(devices=field(devices),
                                              execution=field(st.lists(field(execution),
                                                                       max_size=2))),
                                     max_size=2))),
)  # fmt: skip
google_input = optional(
    intent=field(st.sampled_from(["action.devices.SYNC", "action.devices.QUERY",
                                  "action.devices.EXECUTE", "action.devices.DISCONNECT"])),
    payload=field(google_payload),
)  # fmt: skip
google_message = optional(
    requestId=field(st.uuids().map(str)), inputs=field(st.lists(google_input, max_size=2))
)
bearer = st.sampled_from(["google_token", "alexa_token", "none", "garbage"])


@BOTH
@pytest.mark.timeout(240)
@fuzz(200)
@given(message=google_message, how=encodings, who=bearer)
def test_google_fulfillment(world: World, http: requests.Session, tracebacks: Tracebacks,
                            message: Any, how: str, who: str) -> None:  # fmt: skip
    if who == "google_token" and '"action.devices.DISCONNECT"' in json.dumps(message):
        who = "garbage"  # DISCONNECT would unlink the world's Google link for later examples
    token = {"google_token": world.google_token, "alexa_token": world.alexa_token,
             "garbage": "not-a-token"}.get(who)  # fmt: skip
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    response = exchange(http, tracebacks, "POST", world.url + "/google/fulfillment",
                        data=wire(render(world, message), how), headers=headers)  # fmt: skip
    if response.status_code == 400:
        assert response.json()["payload"]["errorCode"] == "protocolError"


# --- WebRTC signaling (Google's player, the console) -------------------------------------------

signal_message = optional(
    action=field(st.sampled_from(["offer", "end", "answer"])),
    deviceId=field(cameras),
    sdp=field(st.one_of(st.text(max_size=40), st.just("v=0\r\ns=-\r\n"))),
)
signal_bearer = st.sampled_from(["none", "garbage", "ticket", "flipped_ticket"])


@SQLITE
@pytest.mark.timeout(240)
@fuzz(150)
@given(message=signal_message, how=encodings, who=signal_bearer, at=st.integers(0, 200))
def test_webrtc_signaling(world: World, http: requests.Session, tracebacks: Tracebacks,
                          message: Any, how: str, who: str, at: int) -> None:  # fmt: skip
    """No webrtc ticket here (an HLS one at best): every request is refused, in JSON, before
    any media starts."""
    token = {"garbage": "not-a-ticket", "ticket": world_value("ticket"),
             "flipped_ticket": world_value("flipped_ticket", str(at))}.get(who)  # fmt: skip
    headers = {"Content-Type": "application/json", "Origin": "https://www.gstatic.com"}
    if token:
        headers["Authorization"] = f"Bearer {fill(world, token)}"
    response = exchange(http, tracebacks, "POST", world.url + "/webrtc/signal",
                        data=wire(render(world, message), how), headers=headers)  # fmt: skip
    assert response.status_code in (400, 401, 403, 413), response.text[:200]
    assert response.json()["error"] and "sdp" not in response.json()
    assert response.headers["Access-Control-Allow-Origin"] == "https://www.gstatic.com"


# --- Alexa smart home (signed by the forwarder) -------------------------------------------------

HANDLED = [
    ("Alexa.Discovery", "Discover"),
    ("Alexa.CameraStreamController", "InitializeCameraStreams"),
    ("Alexa", "ReportState"),
    ("Alexa.Authorization", "AcceptGrant"),
    ("Alexa.RTCSessionController", "InitiateSessionWithOffer"),
    ("Alexa.RTCSessionController", "SessionConnected"),
    ("Alexa.RTCSessionController", "SessionDisconnected"),
]
alexa_scope = optional(type=field(st.just("BearerToken")),
                       token=field(st.sampled_from([world_value("alexa_token"),
                                                    world_value("google_token"), "x"])))  # fmt: skip
camera_stream = optional(
    protocol=field(st.sampled_from(["RTSP", "HLS"])),
    resolution=field(optional(width=field(st.integers(0, 4000)), height=field(st.integers(0, 4000)))),
    authorizationType=field(st.sampled_from(["BASIC", "NONE"])),
    videoCodec=field(st.sampled_from(["H264", "MJPEG"])),
    audioCodec=field(st.sampled_from(["AAC", "NONE"])),
)  # fmt: skip
alexa_payload = st.one_of(
    optional(scope=field(alexa_scope)),
    optional(cameraStreams=field(st.lists(field(camera_stream), max_size=3))),
    optional(grant=field(optional(type=st.just("OAuth2.AuthorizationCode"), code=field(st.text()))),
             grantee=field(alexa_scope)),
    optional(sessionId=field(st.text(max_size=40)),
             offer=field(optional(format=field(st.sampled_from(["SDP", "sdp", "JSEP"])),
                                  value=field(st.text(max_size=300))))),
)  # fmt: skip


def alexa_header(pair: tuple[str, str]) -> st.SearchStrategy[dict[str, Any]]:
    return optional(
        namespace=field(st.just(pair[0])), name=field(st.just(pair[1])),
        payloadVersion=field(st.just("3")), messageId=field(st.uuids().map(str)),
        correlationToken=field(st.text(max_size=20)),
    )  # fmt: skip


alexa_message = optional(
    directive=field(optional(
        header=field(st.sampled_from(HANDLED).flatmap(alexa_header)),
        endpoint=field(optional(scope=field(alexa_scope), endpointId=field(cameras),
                                cookie=field(st.just({})))),
        payload=field(alexa_payload),
    ))
)  # fmt: skip
timestamps = st.one_of(st.none(), st.none(), st.none(),
                       st.sampled_from(["9" * 400, "-1", "1e3", "", "12 ", "0x10", "1_0"]))  # fmt: skip


@BOTH
@pytest.mark.timeout(240)
@fuzz(200)
@given(message=alexa_message, how=encodings, timestamp=timestamps)
def test_alexa_smart_home(world: World, http: requests.Session, tracebacks: Tracebacks,
                          message: Any, how: str, timestamp: str | None) -> None:  # fmt: skip
    import hashlib
    import hmac

    from tests.hostile_support import FORWARDER_SECRET

    body = wire(render(world, message), how)
    ts = timestamp if timestamp is not None else str(int(time.time()))
    mac = hmac.new(FORWARDER_SECRET.encode(), ts.encode() + b"." + body, hashlib.sha256)
    response = exchange(http, tracebacks, "POST", world.url + "/alexa/smart-home", data=body,
                        headers={"X-Camvoice-Timestamp": ts,
                                 "X-Camvoice-Signature": mac.hexdigest()})  # fmt: skip
    if response.status_code == 200:
        event = response.json()["event"]
        assert event["payload"].get("type") != "INTERNAL_ERROR", event


# --- the custom skill ---------------------------------------------------------------------------

INTENT_NAMES = ["ShowCameraIntent", "ListCamerasIntent", "CameraStatusIntent", "AMAZON.HelpIntent",
                "AMAZON.StopIntent", "AMAZON.FallbackIntent", "NoSuchIntent"]  # fmt: skip
spoken = st.sampled_from(["front door", "the garage camera", "la cámara del garaje", "nursery"])
slot = optional(name=st.just("camera"), value=field(st.one_of(spoken, st.text(max_size=30))),
                confirmationStatus=field(st.just("NONE")))  # fmt: skip
skill_request = st.one_of(
    optional(type=field(st.just("LaunchRequest"))),
    optional(type=field(st.just("IntentRequest")),
             dialogState=field(st.sampled_from(["STARTED", "COMPLETED"])),
             intent=field(optional(name=field(st.sampled_from(INTENT_NAMES)),
                                   confirmationStatus=field(st.just("NONE")),
                                   slots=field(optional(camera=field(slot)))))),
    optional(type=field(st.just("SessionEndedRequest")), reason=field(st.just("USER_INITIATED"))),
    optional(type=field(st.text(max_size=20))),
)  # fmt: skip
stamp = st.just("2026-12-02T10:00:00Z")
skill_user = optional(userId=field(st.just("amzn1.ask.account.X")),
                      accessToken=field(st.sampled_from([world_value("alexa_token"), "x"])))  # fmt: skip
skill_envelope = st.builds(
    lambda request, extra, system: {
        "version": "1.0",
        "session": {"new": True, "sessionId": "s", "application": {"applicationId": SKILL_ID}},
        "context": {"System": system},
        "request": {"requestId": "r", "timestamp": "2026-12-02T10:00:00Z", "locale": "en-US",
                    **request, **extra} if isinstance(request, dict) else request,
    },
    field(skill_request),
    optional(locale=field(st.sampled_from(["en-US", "es-ES", "de-DE"])),
             timestamp=field(stamp), requestId=field(st.text(max_size=10))),
    st.fixed_dictionaries({
        "application": st.just({"applicationId": SKILL_ID}),
        "user": field(skill_user),
        "device": field(optional(deviceId=st.just("d"),
                                 supportedInterfaces=field(st.just({"VideoApp": {}})))),
    }),
)  # fmt: skip


@SQLITE
@pytest.mark.timeout(240)
@fuzz(150)
@given(envelope=skill_envelope, how=encodings)
def test_custom_skill(world: World, http: requests.Session, tracebacks: Tracebacks,
                      envelope: Any, how: str) -> None:  # fmt: skip
    exchange(http, tracebacks, "POST", world.url + "/alexa/custom",
             data=wire(render(world, envelope), how),
             headers={"Content-Type": "application/json"})  # fmt: skip


# --- OAuth forms ----------------------------------------------------------------------------------

form_text = st.one_of(st.text(max_size=30), st.sampled_from(HOSTILE_TEXT), st.binary(max_size=20))


def form_field(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(good, good, form_text)


def encode(world: World, fields: dict[str, Any]) -> str:
    """application/x-www-form-urlencoded from text or raw bytes (invalid UTF-8 included)."""
    parts = []
    for key, value in fields.items():
        raw = (
            value
            if isinstance(value, bytes)
            else fill(world, value).encode("utf-8", "surrogatepass")
        )
        parts.append(f"{quote_from_bytes(key.encode())}={quote_from_bytes(raw)}")
    return "&".join(parts)


client_auth = st.one_of(
    st.none(),
    st.just("valid"),
    st.binary(max_size=30).map(lambda b: "Basic " + base64.b64encode(b).decode()),
    st.sampled_from(["Basic //46/w==", "Basic !!!", "Basic " + base64.b64encode(b"c\x00:s").decode(),
                     "Basic " + base64.b64encode(b"%00:%ff").decode(), "Bearer x", "Basic"]),
)  # fmt: skip
token_form = optional(
    grant_type=form_field(st.sampled_from(["authorization_code", "refresh_token", "password"])),
    code=form_text, redirect_uri=form_field(st.sampled_from(GOOGLE_URIS)), code_verifier=form_text,
    refresh_token=form_text, token=form_text,
    token_type_hint=form_field(st.sampled_from(["access_token", "refresh_token"])),
    client_id=form_field(st.just(world_value("google_client"))),
    client_secret=form_field(st.just(world_value("google_secret"))),
    scope=form_field(st.just("cameras")),
)  # fmt: skip


def authorization(world: World, how: str | None) -> dict[str, str]:
    if how is None:
        return {}
    if how == "valid":
        pair = f"{world.google.client_id}:{world.google.secret}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
    return {"Authorization": how}


@BOTH
@pytest.mark.timeout(240)
@fuzz(200)
@given(path=st.sampled_from(["/oauth/token", "/oauth/revoke", "/oauth/introspect"]),
       form=token_form, auth=client_auth)  # fmt: skip
def test_oauth_token_endpoints(world: World, http: requests.Session, tracebacks: Tracebacks,
                               path: str, form: dict[str, Any], auth: str | None) -> None:  # fmt: skip
    if path == "/oauth/revoke" and auth == "valid":
        auth = None  # a revoked refresh token would unlink the world's Google link
    response = exchange(http, tracebacks, "POST", world.url + path, data=encode(world, form),
                        headers={"Content-Type": "application/x-www-form-urlencoded",
                                 **authorization(world, auth)})  # fmt: skip
    if response.status_code >= 400:
        assert response.headers["Content-Type"].startswith("application/json")
        assert isinstance(response.json()["error"], str)


authorize_query = optional(
    client_id=form_field(st.just(world_value("google_client"))),
    redirect_uri=form_field(st.sampled_from(GOOGLE_URIS)),
    response_type=form_field(st.just("code")), scope=form_field(st.just("cameras")),
    state=form_text, code_challenge=form_text,
    code_challenge_method=form_field(st.sampled_from(["S256", "plain"])),
)  # fmt: skip


@BOTH
@pytest.mark.timeout(240)
@fuzz(100)
@given(query=authorize_query, decide=st.sampled_from([None, "approve", "deny"]))
def test_oauth_authorize(world: World, tracebacks: Tracebacks, query: dict[str, Any],
                         decide: str | None) -> None:  # fmt: skip
    url = world.url + "/oauth/authorize?" + encode(world, query)
    if decide is None:
        exchange(world.console, tracebacks, "GET", url)
    else:
        exchange(world.console, tracebacks, "POST", url,
                 data={"csrf_token": world.csrf, "decision": decide})  # fmt: skip


sign_in_form = optional(
    email=form_field(st.sampled_from([DEMO_EMAIL, "a" * 250 + "@example.com"])),
    password=form_field(st.just(DEMO_PASSWORD)),
    next=form_field(st.sampled_from(["/console", "//evil.example", "/oauth/authorize?x=1"])),
)  # fmt: skip


@BOTH
@pytest.mark.timeout(240)
@fuzz(12)  # each one is an argon2 verification
@given(form=sign_in_form)
def test_sign_in(world: World, tracebacks: Tracebacks, form: dict[str, Any]) -> None:
    browser = requests.Session()
    page = browser.get(world.url + "/oauth/login", timeout=30)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert csrf
    exchange(browser, tracebacks, "POST", world.url + "/oauth/login",
             data=encode(world, {"csrf_token": csrf.group(1), **form}),
             headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip


# --- media: the MediaMTX hook and ticketed paths ------------------------------------------------

tickets = st.one_of(
    st.just(world_value("ticket")),
    st.integers(0, 400).map(lambda at: world_value("flipped_ticket", str(at))),
    st.binary(max_size=60).map(forged_ticket),
    st.sampled_from([10, 300, 1100, 3000]).map(lambda n: forged_ticket(b"[" * n)),
    st.sampled_from([b'{"k":"k0"}', b'{"k":["k0"]}', b'{"k":"\\u0000"}', b"[]", b"1e999"]).map(
        forged_ticket
    ),
    st.text(max_size=40),
)
media_auth = optional(
    action=field(st.sampled_from(["read", "playback", "publish"])),
    path=field(cameras.map(lambda c: "cam/" + c)),
    protocol=field(st.sampled_from(["hls", "rtsp", "webrtc"])),
    password=field(tickets), query=field(tickets.map(lambda t: "token=" + t)),
    user=field(st.text(max_size=10)), ip=field(st.just("127.0.0.1")),
)  # fmt: skip


@SQLITE
@pytest.mark.timeout(240)
@fuzz(150)
@given(body=media_auth, how=encodings, relay=st.booleans())
def test_media_auth(world: World, http: requests.Session, tracebacks: Tracebacks,
                    body: Any, how: str, relay: bool) -> None:  # fmt: skip
    text = render(world, body)
    headers = {"Content-Type": "application/json"}
    if relay:
        headers["X-Camvoice-Relay-Secret"] = "not-the-secret"
    exchange(http, tracebacks, "POST", world.url + "/media/auth", data=wire(text, how),
             headers=headers)  # fmt: skip


segment_text = st.one_of(st.text(min_size=1, max_size=40), st.binary(min_size=1, max_size=30),
                         st.sampled_from(["%00", "..", "seg_00001.ts", "seg_99999999999.ts"]))  # fmt: skip
ticketed = st.sampled_from([
    "/streams/{camera}/{ticket}/index.m3u8", "/streams/{camera}/{ticket}/{segment}",
    "/streams/{camera}/{ticket}/seg_00001.ts", "/streams/{camera}/{ticket}/p/{segment}",
    "/snapshots/{camera}/{ticket}.jpg",
])  # fmt: skip


def segment_of(world: World, value: str | bytes) -> str:
    raw = value if isinstance(value, bytes) else fill(world, value).encode("utf-8", "surrogatepass")
    return quote_from_bytes(raw, safe="")


@SQLITE
@pytest.mark.timeout(240)
@fuzz(200)
@given(template=ticketed, camera=st.one_of(cameras, segment_text), ticket=tickets,
       segment=segment_text)  # fmt: skip
def test_ticketed_media_paths(world: World, http: requests.Session, tracebacks: Tracebacks,
                              template: str, camera: Any, ticket: str, segment: Any) -> None:  # fmt: skip
    if ticket == world_value("ticket") and template.endswith(("index.m3u8", ".jpg")):
        ticket = world_value("flipped_ticket", "5")  # a valid one would start the camera's relay
    path = template.format(camera=segment_of(world, camera), ticket=segment_of(world, ticket),
                           segment=segment_of(world, segment))  # fmt: skip
    exchange(http, tracebacks, "GET", world.url + path)


# --- the console ---------------------------------------------------------------------------------

console_camera = st.one_of(
    st.sampled_from(["Garage", "Nursery", "Backyard"]).map(lambda n: world_value("camera", n)),
    segment_text,
)
console_forms = st.one_of(
    st.tuples(st.just("POST /console/cameras/{id}/fix"),
              optional(fix=form_field(st.sampled_from(["encryption", "audio", "wake"])),
                       confirm=form_field(st.just("yes")), code=form_text)),
    st.tuples(st.just("GET /console/cameras/{id}/live"), st.just({})),
    st.tuples(st.just("POST /console/links/{id}/unlink"), st.just({})),
    st.tuples(st.just("POST /console/ezviz"), optional(app_key=form_text, app_secret=form_text)),
    st.tuples(st.just("POST /simulator"),
              optional(assistant=form_field(st.sampled_from(["alexa_smart_home", "alexa_custom",
                                                             "google"])),
                       utterance=form_field(st.sampled_from(["show the front door camera",
                                                             "muestra el garaje"])),
                       offer=form_text)),
    st.tuples(st.just("POST /simulator/session"),
              optional(event=form_field(st.sampled_from(["connected", "disconnected"])),
                       camera=form_text, session=form_text)),
    st.tuples(st.sampled_from(["GET /console", "GET /console/links", "GET /console/activity",
                               "GET /healthz", "GET /.well-known/oauth-authorization-server"]),
              optional(lang=form_text, next=form_text, x=form_text)),
)  # fmt: skip


@BOTH
@pytest.mark.timeout(240)
@fuzz(150)
@given(form=console_forms, target=console_camera)
def test_console_forms(world: World, tracebacks: Tracebacks, form: tuple[str, dict[str, Any]],
                       target: Any) -> None:  # fmt: skip
    route, fields = form
    method, path = route.split(" ")
    if "/links/" in path and isinstance(target, str) and target.startswith("@@"):
        target = "gr_not_a_link"  # never a real link: the world's tokens must stay alive
    url = world.url + path.format(id=segment_of(world, target))
    if method == "GET":
        exchange(world.console, tracebacks, "GET", url + "?" + encode(world, fields))
    else:
        exchange(world.console, tracebacks, "POST", url,
                 data=encode(world, {"csrf_token": world.csrf, **fields}),
                 headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip


@BOTH
def test_the_world_survived(world: World) -> None:
    """After all that, the same server still answers and the owner's links still work."""
    assert requests.get(world.url + "/healthz", timeout=10).status_code == 200
    sync = requests.post(world.url + "/google/fulfillment", timeout=30,
                         headers={"Authorization": f"Bearer {world.google_token}"},
                         json={"requestId": "r", "inputs": [{"intent": "action.devices.SYNC"}]})  # fmt: skip
    assert sync.status_code == 200 and len(sync.json()["payload"]["devices"]) == len(DEMO_CAMERAS)
