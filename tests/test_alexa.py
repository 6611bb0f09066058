"""The Alexa Smart Home skill end to end: directives go through the real Lambda forwarder
(lambda_handler) to the running app; LWA and the event gateway are fakes on 127.0.0.1."""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import select, update

from camvoice import outbox
from camvoice.cameras import Registry
from camvoice.db import Database
from camvoice.models import AuditEvent, Camera, utcnow
from camvoice.settings import Settings
from oauth.models import Token
from service.app import create_app
from service.demo import DEMO_EMAIL, DEMO_PASSWORD, seed
from skills.events import AlexaLink
from tests.conftest import (
    LiveServer,
    free_port,
    require_gstreamer,
    running_relay,
    wiring,
    with_relay,
)
from tests.fake_amazon import CLIENT_ID, CLIENT_SECRET, FakeAmazon
from tests.media_support import play
from tests.oauth_support import (
    ALEXA_URIS,
    GOOGLE_URIS,
    link,
    make_owner,
    register,
    streams_requested,
)
from tests.test_rtsps import play_rtsps
from tests.transactions import open_transactions

SECRET = "forwarder-secret-for-tests-0123456789"
ROOT = Path(__file__).resolve().parents[1]


def load_forwarder() -> Any:
    spec = importlib.util.spec_from_file_location(
        "lambda_function", ROOT / "deploy/lambda/lambda_function.py"
    )
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


forwarder = load_forwarder()


@pytest.fixture
def amazon() -> Iterator[FakeAmazon]:
    fake = FakeAmazon()
    yield fake
    fake.close()


@pytest.fixture
def alexa_settings(settings: Settings, tmp_path: Path, amazon: FakeAmazon) -> Settings:
    return with_relay(
        settings, tmp_path, alexa_forwarder_secret=SECRET, alexa_client_id=CLIENT_ID,
        alexa_client_secret=CLIENT_SECRET, alexa_lwa_token_url=amazon.url + "/auth/o2/token",
        alexa_event_gateway_url=amazon.url + "/v3/events",
        # As behind a port mapping 443 -> relay: URLs name 443, the one port Echo devices use.
        rtsps_public_port=443,
    )  # fmt: skip


@pytest.fixture
def server(
    alexa_settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch
) -> Iterator[LiveServer]:
    from pydantic import SecretStr

    fixed = alexa_settings.model_copy(update={
        "alexa_forwarder_secret": SecretStr(SECRET), "alexa_client_secret": SecretStr(CLIENT_SECRET)})  # fmt: skip
    app = create_app(fixed, db)
    with LiveServer(app) as live:
        monkeypatch.setenv("CAMVOICE_ENDPOINT", live.url + "/alexa/smart-home")
        monkeypatch.setenv("CAMVOICE_FORWARDER_SECRET", SECRET)
        yield live
    app.extensions["camvoice.relays"].shutdown()


def registry(server: LiveServer) -> Registry:
    return wiring(server.app).registry


@pytest.fixture
def demo(server: LiveServer, db: Database) -> dict[str, str]:
    with db.session() as session:
        return {c.name: c.id for c in seed(session, registry(server)).cameras}


@pytest.fixture
def token(server: LiveServer, db: Database, demo: dict[str, str]) -> str:
    client = register(db, "Amazon Alexa", ALEXA_URIS, "alexa")
    _, issued = link(server, client, DEMO_EMAIL, password=DEMO_PASSWORD)
    return str(issued["access_token"])


def directive(namespace: str, name: str, token: str | None = None, endpoint_id: str | None = None,
              payload: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    body: dict[str, Any] = {
        "header": {"namespace": namespace, "name": name, "payloadVersion": "3",
                   "messageId": str(uuid.uuid4()), "correlationToken": "corr-" + uuid.uuid4().hex},
        "payload": payload if payload is not None else {},
    }  # fmt: skip
    if endpoint_id is not None:
        body["endpoint"] = {"scope": {"type": "BearerToken", "token": token},
                            "endpointId": endpoint_id, "cookie": {}}  # fmt: skip
    return {"directive": body}


def streams_directive(token: str, endpoint_id: str) -> dict[str, Any]:
    return directive("Alexa.CameraStreamController", "InitializeCameraStreams", token, endpoint_id, {
        "cameraStreams": [
            {"protocol": "RTSP", "resolution": {"width": 1920, "height": 1080},
             "authorizationType": "BASIC", "videoCodec": "H264", "audioCodec": "AAC"},
            {"protocol": "RTSP", "resolution": {"width": 640, "height": 360},
             "authorizationType": "NONE", "videoCodec": "H264", "audioCodec": "AAC"},
        ]})  # fmt: skip


def send(message: dict[str, Any], context: Any = None) -> dict[str, Any]:
    return forwarder.lambda_handler(message, context)  # type: ignore[no-any-return]


def error_of(answer: dict[str, Any]) -> tuple[str, str]:
    event = answer["event"]
    assert event["header"]["name"] == "ErrorResponse"
    return event["header"]["namespace"], event["payload"]["type"]


# --- Discovery -------------------------------------------------------------------------------


def discover(token: str) -> dict[str, Any]:
    scope = {"type": "BearerToken", "token": token}
    return send(directive("Alexa.Discovery", "Discover", payload={"scope": scope}))


def test_discover_lists_the_owners_cameras_only(
    server: LiveServer, db: Database, token: str, demo: dict[str, str], amazon: FakeAmazon
) -> None:
    make_owner(db, "other@example.com", {"Shed": {}})
    answer = send(
        directive(
            "Alexa.Discovery",
            "Discover",
            payload={"scope": {"type": "BearerToken", "token": token}},
        )
    )
    event = answer["event"]
    assert event["header"]["namespace"] == "Alexa.Discovery"
    assert event["header"]["name"] == "Discover.Response"
    assert event["header"]["payloadVersion"] == "3"
    endpoints = {e["friendlyName"]: e for e in event["payload"]["endpoints"]}
    assert set(endpoints) == set(demo)  # blocked cameras are discovered too; Shed is not ours
    front = endpoints["Front Door"]
    assert front["endpointId"] == demo["Front Door"]
    assert front["displayCategories"] == ["CAMERA"]
    assert front["manufacturerName"] == "camvoice"
    assert front["additionalAttributes"] == {"manufacturer": "camvoice", "model": "C6N demo",
                                             "firmwareVersion": "1.0.0", "serialNumber": "DEMO00001"}  # fmt: skip
    interfaces = {c["interface"]: c for c in front["capabilities"]}
    assert set(interfaces) == {"Alexa", "Alexa.CameraStreamController",
                               "Alexa.RTCSessionController", "Alexa.EndpointHealth"}  # fmt: skip
    assert interfaces["Alexa.CameraStreamController"]["cameraStreamConfigurations"] == [{
        "protocols": ["RTSP"], "resolutions": [{"width": 640, "height": 360}],
        "authorizationTypes": ["NONE"], "videoCodecs": ["H264"], "audioCodecs": ["AAC"]}]  # fmt: skip
    # No AcceptGrant yet: no ChangeReport will come, so none is promised.
    assert interfaces["Alexa.EndpointHealth"]["properties"] == {
        "supported": [{"name": "connectivity"}], "proactivelyReported": False, "retrievable": True}  # fmt: skip
    for e in endpoints.values():
        assert re.fullmatch(r"[A-Za-z0-9_\-=#;:?@&]{1,256}", e["endpointId"])
        assert 1 <= len(e["friendlyName"]) <= 128 and 1 <= len(e["description"]) <= 128
    # A bad token during discovery gets an empty endpoint list, not an error (Amazon's rule).
    refused = send(directive("Alexa.Discovery", "Discover",
                             payload={"scope": {"type": "BearerToken", "token": "garbage"}}))  # fmt: skip
    assert refused["event"]["header"]["name"] == "Discover.Response"
    assert refused["event"]["payload"] == {"endpoints": []}
    # After AcceptGrant (and with the skill's Alexa client set) events flow: promised.
    accept_grant(token, amazon.new_code())
    after = discover(token)["event"]["payload"]["endpoints"][0]["capabilities"]
    health = next(c for c in after if c["interface"] == "Alexa.EndpointHealth")
    assert health["properties"]["proactivelyReported"] is True


def test_no_stream_capability_without_a_relay(
    settings: Settings, db: Database, demo: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydantic import SecretStr

    plain = settings.model_copy(update={"alexa_forwarder_secret": SecretStr(SECRET)})
    with LiveServer(create_app(plain, db)) as live:
        monkeypatch.setenv("CAMVOICE_ENDPOINT", live.url + "/alexa/smart-home")
        monkeypatch.setenv("CAMVOICE_FORWARDER_SECRET", SECRET)
        client = register(db, "Amazon Alexa", ALEXA_URIS, "alexa")
        _, issued = link(live, client, DEMO_EMAIL, password=DEMO_PASSWORD)
        answer = send(
            directive(
                "Alexa.Discovery",
                "Discover",
                payload={"scope": {"type": "BearerToken", "token": issued["access_token"]}},
            )
        )
        interfaces = {
            c["interface"] for c in answer["event"]["payload"]["endpoints"][0]["capabilities"]
        }
        assert "Alexa.CameraStreamController" not in interfaces
        refused = send(streams_directive(issued["access_token"], demo["Front Door"]))
        assert error_of(refused) == ("Alexa", "NOT_SUPPORTED_IN_CURRENT_MODE")
        assert refused["event"]["payload"]["currentDeviceMode"] == "NOT_PROVISIONED"


# --- CameraStreamController ------------------------------------------------------------------


def test_front_door_stream_and_image_really_play(
    alexa_settings: Settings, server: LiveServer, db: Database, token: str, demo: dict[str, str]
) -> None:
    message = streams_directive(token, demo["Front Door"])
    answer = send(message)
    assert streams_requested(db) == [("alexa", "rtsps")]
    event = answer["event"]
    assert (event["header"]["namespace"], event["header"]["name"]) == (
        "Alexa.CameraStreamController",
        "Response",
    )
    assert event["header"]["correlationToken"] == message["directive"]["header"]["correlationToken"]
    assert event["endpoint"]["endpointId"] == demo["Front Door"]
    assert event["endpoint"]["scope"] == {"type": "BearerToken", "token": token}
    [stream] = event["payload"]["cameraStreams"]
    assert stream["protocol"] == "RTSP" and stream["authorizationType"] == "NONE"
    assert stream["resolution"] == {"width": 640, "height": 360}
    assert (stream["videoCodec"], stream["audioCodec"], stream["idleTimeoutSeconds"]) == (
        "H264",
        "AAC",
        30,
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d\dZ", stream["expirationTime"])
    assert stream["uri"].startswith(f"rtsps://127.0.0.1:443/cam/{demo['Front Door']}/")
    assert answer["context"]["properties"][0]["value"] == {"value": "OK"}
    image = play(event["payload"]["imageUri"].replace("http://127.0.0.1:8080", server.url))
    assert image.status_code == 200 and image.content.startswith(b"\xff\xd8")
    require_gstreamer()
    with running_relay(alexa_settings, server.url):
        mapped = stream["uri"].replace(":443/", f":{alexa_settings.rtsps_port}/", 1)  # the mapping
        assert play_rtsps(mapped, alexa_settings) == "h264"  # certificate verified


@pytest.mark.parametrize(
    ("camera", "error_type", "mode", "words"),
    [
        ("Garage", "NOT_SUPPORTED_IN_CURRENT_MODE", "OTHER", "Image Encryption"),
        ("Living Room", "NOT_SUPPORTED_IN_CURRENT_MODE", "ASLEEP", "sleep"),
        ("Backyard", "ENDPOINT_UNREACHABLE", None, "offline"),
    ],
)
def test_blocked_cameras_get_their_error(server: LiveServer, db: Database, token: str, demo: dict[str, str],
                                         camera: str, error_type: str, mode: str | None, words: str) -> None:  # fmt: skip
    message = streams_directive(token, demo[camera])
    answer = send(message)
    assert error_of(answer) == ("Alexa", error_type)
    payload = answer["event"]["payload"]
    assert payload.get("currentDeviceMode") == mode
    assert words in payload["message"]
    assert (
        answer["event"]["header"]["correlationToken"]
        == message["directive"]["header"]["correlationToken"]
    )
    assert answer["event"]["endpoint"]["endpointId"] == demo[camera]
    with db.session() as session:
        denied = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "stream.denied")
        ).one()
        assert denied.camera_id == demo[camera] and denied.assistant == "alexa"


def test_nursery_is_fine_for_alexa(server: LiveServer, token: str, demo: dict[str, str]) -> None:
    answer = send(streams_directive(token, demo["Nursery"]))
    assert answer["event"]["header"]["name"] == "Response"


def test_unknown_or_foreign_endpoint_is_no_such_endpoint(
    server: LiveServer, db: Database, token: str
) -> None:
    make_owner(db, "other@example.com", {"Shed": {}})
    with db.session() as session:
        shed = session.scalars(select(Camera).where(Camera.name == "Shed")).one().id
    for endpoint_id in (shed, "cam_doesnotexist"):
        assert error_of(send(streams_directive(token, endpoint_id))) == (
            "Alexa",
            "NO_SUCH_ENDPOINT",
        )


def test_token_failures(server: LiveServer, db: Database, token: str, demo: dict[str, str]) -> None:
    assert error_of(send(streams_directive("garbage", demo["Front Door"]))) == (
        "Alexa",
        "INVALID_AUTHORIZATION_CREDENTIAL",
    )
    with db.session() as session:
        session.execute(update(Token).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert error_of(send(streams_directive(token, demo["Front Door"]))) == (
        "Alexa",
        "EXPIRED_AUTHORIZATION_CREDENTIAL",
    )


def test_tokens_of_other_audiences_are_refused(
    server: LiveServer, db: Database, demo: dict[str, str]
) -> None:
    """A token is for its audience: Google's client and a client of neither are refused here."""
    for name, uris, audience in (("Google Home", GOOGLE_URIS, "google"),
                                 ("Home dashboard", ["http://127.0.0.1:9/cb"], "other")):  # fmt: skip
        client = register(db, name, uris, audience)
        _, issued = link(server, client, DEMO_EMAIL, password=DEMO_PASSWORD)
        answer = send(streams_directive(issued["access_token"], demo["Front Door"]))
        assert error_of(answer) == ("Alexa", "INVALID_AUTHORIZATION_CREDENTIAL")


# --- ReportState -----------------------------------------------------------------------------


def test_report_state_connectivity(server: LiveServer, token: str, demo: dict[str, str]) -> None:
    for name, value in (("Front Door", "OK"), ("Backyard", "UNREACHABLE")):
        message = directive("Alexa", "ReportState", token, demo[name])
        answer = send(message)
        assert answer["event"]["header"]["name"] == "StateReport"
        assert (
            answer["event"]["header"]["correlationToken"]
            == message["directive"]["header"]["correlationToken"]
        )
        [prop] = answer["context"]["properties"]
        assert (prop["namespace"], prop["name"], prop["value"]) == (
            "Alexa.EndpointHealth",
            "connectivity",
            {"value": value},
        )
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d\dZ", prop["timeOfSample"])


# --- malformed input and the forwarder's signature -------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        {
            "directive": {
                "header": {
                    "namespace": "Alexa.Nope",
                    "name": "Fly",
                    "payloadVersion": "3",
                    "messageId": "1",
                },
                "payload": {},
            }
        },
        {
            "directive": {
                "header": {
                    "namespace": "Alexa",
                    "name": "ReportState",
                    "payloadVersion": "2",
                    "messageId": "1",
                },
                "payload": {},
            }
        },
        {
            "directive": {
                "header": {
                    "namespace": "Alexa.CameraStreamController",
                    "name": "InitializeCameraStreams",
                    "payloadVersion": "3",
                    "messageId": "1",
                },
                "payload": {},
            }
        },
        {
            "directive": {
                "header": {
                    "namespace": "Alexa.Discovery",
                    "name": "Discover",
                    "payloadVersion": "3",
                    "messageId": "1",
                },
                "payload": "x",
            }
        },
        {"nothing": True},
        ["a", "list"],
    ],
)
def test_malformed_directives_are_invalid_directive(server: LiveServer, message: Any) -> None:
    answer = send(message)
    assert error_of(answer) == ("Alexa", "INVALID_DIRECTIVE")


def signed_post(
    live: LiveServer, body: bytes, timestamp: int | None = None, secret: str = SECRET
) -> requests.Response:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    sig = hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return requests.post(live.url + "/alexa/smart-home", data=body, timeout=10,
                         headers={"X-Camvoice-Timestamp": ts, "X-Camvoice-Signature": sig})  # fmt: skip


def test_signature_is_required_fresh_and_right(
    server: LiveServer, token: str, demo: dict[str, str]
) -> None:
    body = json.dumps(directive("Alexa", "ReportState", token, demo["Front Door"])).encode()
    assert signed_post(server, body).status_code == 200
    assert requests.post(server.url + "/alexa/smart-home", data=body, timeout=10).status_code == 401
    assert signed_post(server, body, secret="wrong-secret").status_code == 401
    assert signed_post(server, body, timestamp=int(time.time()) - 301).status_code == 401
    tampered = signed_post(server, body.replace(b"{", b"{ ", 1))  # a forward is accepted once
    assert tampered.status_code == 200
    not_json = signed_post(server, b"\xff{nope")
    assert not_json.status_code == 200
    assert error_of(not_json.json()) == ("Alexa", "INVALID_DIRECTIVE")


class SlowHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        time.sleep(5)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


class Context:
    def __init__(self, millis: int) -> None:
        self.deadline = time.monotonic() + millis / 1000

    def get_remaining_time_in_millis(self) -> int:
        return int((self.deadline - time.monotonic()) * 1000)


def test_forwarder_answers_in_time_when_camvoice_is_slow_or_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slow = ThreadingHTTPServer(("127.0.0.1", 0), SlowHandler)
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    monkeypatch.setenv("CAMVOICE_FORWARDER_SECRET", SECRET)
    message = directive("Alexa", "ReportState", "t", "cam_x")
    for url in (
        f"http://127.0.0.1:{slow.server_port}/alexa/smart-home",
        f"http://127.0.0.1:{free_port()}/x",
    ):
        monkeypatch.setenv("CAMVOICE_ENDPOINT", url)
        began = time.monotonic()
        answer = send(message, Context(2000))
        assert time.monotonic() - began < 2.0
        assert error_of(answer) == ("Alexa", "BRIDGE_UNREACHABLE")
        assert (
            answer["event"]["header"]["correlationToken"]
            == message["directive"]["header"]["correlationToken"]
        )
        assert answer["event"]["endpoint"]["endpointId"] == "cam_x"
    slow.shutdown()


# --- AcceptGrant and proactive events --------------------------------------------------------


def accept_grant(token: str, code: str) -> dict[str, Any]:
    return send(directive("Alexa.Authorization", "AcceptGrant", payload={
        "grant": {"type": "OAuth2.AuthorizationCode", "code": code},
        "grantee": {"type": "BearerToken", "token": token}}))  # fmt: skip


def test_accept_grant_stores_tokens_encrypted(
    server: LiveServer, db: Database, token: str, amazon: FakeAmazon
) -> None:
    answer = accept_grant(token, amazon.new_code())
    assert answer["event"]["header"]["namespace"] == "Alexa.Authorization"
    assert answer["event"]["header"]["name"] == "AcceptGrant.Response"
    assert amazon.lwa_calls[0]["grant_type"] == "authorization_code"
    with db.session() as session:
        stored = session.scalars(select(AlexaLink)).one()
        blob = stored.access_token + stored.refresh_token
    assert not any(t in blob for t in amazon.access_tokens | amazon.refresh_tokens)
    failed = accept_grant(token, "not-a-code")
    assert error_of(failed) == ("Alexa.Authorization", "ACCEPT_GRANT_FAILED")
    bad_grantee = accept_grant("garbage", amazon.new_code())
    assert error_of(bad_grantee) == ("Alexa.Authorization", "ACCEPT_GRANT_FAILED")


def drain(server: LiveServer) -> None:
    services = wiring(server.app)
    while outbox.drain_once(services.db, services.outbox, max_attempts=3):
        pass


def test_proactive_events_reach_the_gateway(
    server: LiveServer, db: Database, token: str, demo: dict[str, str], amazon: FakeAmazon
) -> None:
    drain(server)  # the demo cameras' own "added" events, from before the grant
    accept_grant(token, amazon.new_code())
    with db.session() as session:
        front = session.get(Camera, demo["Front Door"])
        registry(server).record(session, front, {"name": "Front Porch"}, actor="test")
        registry(server).record(session, front, {"online": False}, actor="test")
        # A readiness fix changes no property Alexa holds (connectivity follows `online`): no event.
        garage = session.get(Camera, demo["Garage"])
        registry(server).record(session, garage, {"image_encryption": False}, actor="test")
        nursery = session.get(Camera, demo["Nursery"])
        registry(server).record(session, nursery, {"audio": True}, actor="test")
        living = session.get(Camera, demo["Living Room"])
        registry(server).record(session, living, {"sleep_mode": False}, actor="test")
        owner = front.owner
        added = registry(server).add(session, owner, "Attic", actor="test")
    with db.session() as session:
        registry(server).remove(session, session.get(Camera, added.id), actor="test")
    drain(server)
    assert amazon.problems == []
    names = [
        (
            e["event"]["header"]["name"],
            e["event"].get("endpoint", {}).get("endpointId")
            or e["event"]["payload"]["endpoints"][0]["endpointId"],
        )
        for e in amazon.events
    ]
    assert names == [
        ("AddOrUpdateReport", demo["Front Door"]),
        ("ChangeReport", demo["Front Door"]),
        ("DeleteReport", added.id),  # added and removed before delivery: only the removal is told
    ]
    renamed = amazon.events[0]["event"]["payload"]["endpoints"][0]
    assert renamed["friendlyName"] == "Front Porch"
    change = amazon.events[1]["event"]["payload"]["change"]["properties"][0]
    assert change["value"] == {"value": "UNREACHABLE"}


def test_expired_alexa_token_is_refreshed(
    server: LiveServer, db: Database, token: str, demo: dict[str, str], amazon: FakeAmazon
) -> None:
    drain(server)  # the demo cameras' own "added" events, from before the grant
    accept_grant(token, amazon.new_code())
    amazon.expire_all_access_tokens()
    with db.session() as session:
        session.execute(update(AlexaLink).values(expires_at=utcnow() - timedelta(seconds=1)))
        registry(server).record(
            session, session.get(Camera, demo["Garage"]), {"online": False}, actor="t"
        )
    drain(server)
    assert [c["grant_type"] for c in amazon.lwa_calls] == ["authorization_code", "refresh_token"]
    assert [e["event"]["header"]["name"] for e in amazon.events] == ["ChangeReport"]


def test_gateway_401_refreshes_once_and_retries(
    server: LiveServer, db: Database, token: str, demo: dict[str, str], amazon: FakeAmazon
) -> None:
    drain(server)  # the demo cameras' own "added" events, from before the grant
    accept_grant(token, amazon.new_code())
    posts: list[str] = []
    amazon.http.observers.append(posts.append)
    amazon.expire_all_access_tokens()  # the gateway stops accepting the token we hold
    with db.session() as session:
        registry(server).record(
            session, session.get(Camera, demo["Garage"]), {"online": False}, actor="t"
        )
    drain(server)
    # 401, one refresh_token grant at LWA, the same event again with the new token: 202.
    assert [c["grant_type"] for c in amazon.lwa_calls] == ["authorization_code", "refresh_token"]
    assert posts == ["/v3/events", "/auth/o2/token", "/v3/events"]
    assert [e["event"]["header"]["name"] for e in amazon.events] == ["ChangeReport"]

    # A gateway that refuses the refreshed token too gets no second refresh: the link is dead.
    posts.clear()
    amazon.gateway_reply = (401, "INVALID_ACCESS_TOKEN_EXCEPTION")
    with db.session() as session:
        registry(server).record(
            session, session.get(Camera, demo["Garage"]), {"online": True}, actor="t"
        )
    drain(server)
    refreshes = [c for c in amazon.lwa_calls if c["grant_type"] == "refresh_token"]
    assert len(refreshes) == 2  # one for each refused event
    assert posts == ["/v3/events", "/auth/o2/token", "/v3/events"]
    with db.session() as session:
        assert session.scalars(select(AlexaLink)).one().dead_at is not None


def test_disabled_skill_stops_events(
    server: LiveServer, db: Database, token: str, demo: dict[str, str], amazon: FakeAmazon
) -> None:
    drain(server)  # the demo cameras' own "added" events, from before the grant
    accept_grant(token, amazon.new_code())
    amazon.gateway_reply = (403, "SKILL_DISABLED_EXCEPTION")
    with db.session() as session:
        registry(server).record(
            session, session.get(Camera, demo["Garage"]), {"online": False}, actor="t"
        )
    drain(server)
    with db.session() as session:
        assert session.scalars(select(AlexaLink)).one().dead_at is not None
    amazon.gateway_reply = None
    with db.session() as session:
        registry(server).record(
            session, session.get(Camera, demo["Garage"]), {"online": True}, actor="t"
        )
    drain(server)
    assert amazon.events == []


def test_gateway_5xx_is_retried_by_the_outbox(
    server: LiveServer, db: Database, token: str, demo: dict[str, str], amazon: FakeAmazon
) -> None:
    from camvoice.models import OutboxEvent

    drain(server)  # the demo cameras' own "added" events, from before the grant
    accept_grant(token, amazon.new_code())
    amazon.gateway_reply = (503, "SERVICE_UNAVAILABLE_EXCEPTION")
    with db.session() as session:
        registry(server).record(
            session, session.get(Camera, demo["Garage"]), {"online": False}, actor="t"
        )
    drain(server)
    with db.session() as session:
        event = session.scalars(
            select(OutboxEvent).where(
                OutboxEvent.subscriber == "alexa.events", OutboxEvent.topic == "camera.changed"
            )
        ).one()
        assert (event.status, event.attempts) == ("pending", 1)
        assert "503" in (event.last_error or "")


def test_owner_without_accept_grant_gets_no_events(
    server: LiveServer, db: Database, token: str, demo: dict[str, str], amazon: FakeAmazon
) -> None:
    with db.session() as session:
        registry(server).record(
            session, session.get(Camera, demo["Garage"]), {"online": False}, actor="t"
        )
    drain(server)
    assert amazon.events == [] and amazon.lwa_calls == []


def test_no_transaction_is_open_while_login_with_amazon_is_asked(
    server: LiveServer,
    db: Database,
    db_url: str,
    token: str,
    demo: dict[str, str],
    amazon: FakeAmazon,
) -> None:
    """AcceptGrant's code exchange and the refresh before an event both reach LWA between
    transactions, so a slow LWA never holds a database lock or connection."""
    seen: list[tuple[str, int]] = []
    amazon.http.observers.append(lambda path: seen.append((path, open_transactions(db_url))))
    drain(server)
    accept_grant(token, amazon.new_code())
    with db.session() as session:
        session.execute(update(AlexaLink).values(expires_at=utcnow() - timedelta(seconds=1)))
        registry(server).record(
            session, session.get(Camera, demo["Garage"]), {"online": False}, actor="t"
        )  # type: ignore[arg-type]
    drain(server)
    assert [c["grant_type"] for c in amazon.lwa_calls] == ["authorization_code", "refresh_token"]
    assert [path for path, _ in seen].count("/auth/o2/token") == 2
    assert [(path, n) for path, n in seen if n] == []
