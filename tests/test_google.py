"""Google Home fulfillment over real HTTP with the demo cameras, and HomeGraph against a fake
Google on 127.0.0.1."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import select, update

from camvoice import outbox
from camvoice.cameras import Registry
from camvoice.db import Database
from camvoice.models import AuditEvent, Camera, utcnow
from camvoice.outbox import Outbox
from camvoice.settings import Settings
from oauth.models import Token
from service.app import create_app
from service.demo import DEMO_EMAIL, DEMO_PASSWORD, seed
from tests.conftest import LiveServer, statements, wiring
from tests.fake_google import FakeGoogle
from tests.media_support import probe_video
from tests.oauth_support import ALEXA_URIS, GOOGLE_URIS, make_owner, register

EXPECTED_ERRORS = {
    "Garage": ("ERROR", "securityRestriction"),
    "Nursery": ("ERROR", "deviceNotReady"),
    "Backyard": ("OFFLINE", "deviceOffline"),
    "Living Room": ("ERROR", "inSleepMode"),
}


@pytest.fixture
def demo(db: Database) -> dict[str, str]:
    """The demo account's cameras by name."""
    with db.session() as session:
        return {c.name: c.id for c in seed(session, Registry(Outbox())).cameras}


@pytest.fixture
def server(settings: Settings, db: Database, tmp_path: Path) -> Iterator[LiveServer]:
    app = create_app(settings.model_copy(update={"media_dir": tmp_path / "media"}), db)
    with LiveServer(app) as live:
        yield live
    app.extensions["camvoice.relays"].shutdown()


@pytest.fixture
def google(db: Database):  # type: ignore[no-untyped-def]
    return register(db, "Google Home", GOOGLE_URIS, "google")


def token_for(live: LiveServer, client, email: str, password: str = DEMO_PASSWORD) -> str:  # type: ignore[no-untyped-def]
    from tests.oauth_support import link

    _, token = link(live, client, email, "client_secret_post", password)
    return str(token["access_token"])


def fulfill(live: LiveServer, token: str | None, *inputs: dict[str, Any]) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = {"requestId": str(uuid.uuid4()), "inputs": list(inputs)}
    return requests.post(live.url + "/google/fulfillment", json=body, headers=headers, timeout=30)


def execute(ids: list[str], protocols: list[str] | None = None) -> dict[str, Any]:
    return {
        "intent": "action.devices.EXECUTE",
        "payload": {"commands": [{
            "devices": [{"id": i} for i in ids],
            "execution": [{"command": "action.devices.commands.GetCameraStream", "params": {
                "StreamToChromecast": True,
                "SupportedStreamProtocols": protocols or ["progressive_mp4", "hls", "dash"],
            }}],
        }]},
    }  # fmt: skip


def test_sync_lists_every_camera_with_camera_stream(server: LiveServer, google, demo) -> None:  # type: ignore[no-untyped-def]
    token = token_for(server, google, DEMO_EMAIL)
    response = fulfill(server, token, {"intent": "action.devices.SYNC"})
    assert response.status_code == 200
    body = response.json()
    payload = body["payload"]
    assert payload["agentUserId"].startswith("acc_") and "@" not in payload["agentUserId"]
    devices = {d["name"]["name"]: d for d in payload["devices"]}
    assert set(devices) == set(demo)  # blocked cameras are listed too
    front = devices["Front Door"]
    assert front["id"] == demo["Front Door"]
    assert front["type"] == "action.devices.types.CAMERA"
    assert front["traits"] == ["action.devices.traits.CameraStream"]
    assert front["name"]["nicknames"][:2] == ["porch", "puerta principal"]  # then the others
    assert front["roomHint"] == "Entrance"
    assert front["willReportState"] is False  # no HomeGraph key configured here
    assert front["deviceInfo"] == {
        "manufacturer": "camvoice",
        "model": "C6N demo",
        "swVersion": "1.0.0",
    }
    assert front["attributes"] == {  # WebRTC's signaling takes the ticket as its auth token
        "cameraStreamSupportedProtocols": ["webrtc", "hls"], "cameraStreamNeedAuthToken": True,
    }  # fmt: skip


def test_sync_is_per_owner(server: LiveServer, db: Database, google, demo) -> None:  # type: ignore[no-untyped-def]
    make_owner(db, "other@example.com", {"Shed": {}})
    token = token_for(server, google, "other@example.com", "owner password 1")
    devices = fulfill(server, token, {"intent": "action.devices.SYNC"}).json()["payload"]["devices"]
    assert [d["name"]["name"] for d in devices] == ["Shed"]


def test_query_online_offline_and_foreign(server: LiveServer, db: Database, google, demo) -> None:  # type: ignore[no-untyped-def]
    make_owner(db, "other@example.com", {"Shed": {}})
    with db.session() as session:
        shed = session.scalars(select(Camera).where(Camera.name == "Shed")).one().id
    token = token_for(server, google, DEMO_EMAIL)
    ids = [demo["Front Door"], demo["Backyard"], shed, "cam_nope"]
    query = {"intent": "action.devices.QUERY", "payload": {"devices": [{"id": i} for i in ids]}}
    devices = fulfill(server, token, query).json()["payload"]["devices"]
    assert devices[demo["Front Door"]] == {"online": True, "status": "SUCCESS"}
    assert devices[demo["Backyard"]] == {
        "online": False,
        "status": "OFFLINE",
        "errorCode": "deviceOffline",
    }
    assert (
        devices[shed] == devices["cam_nope"] == {"status": "ERROR", "errorCode": "deviceNotFound"}
    )


def test_execute_every_readiness_case_in_one_request(
    server: LiveServer, db: Database, google, demo
) -> None:  # type: ignore[no-untyped-def]
    token = token_for(server, google, DEMO_EMAIL)
    response = fulfill(server, token, execute(list(demo.values())))
    assert response.status_code == 200
    by_id = {c["ids"][0]: c for c in response.json()["payload"]["commands"]}
    assert len(by_id) == 5
    front = by_id[demo["Front Door"]]
    assert front["status"] == "SUCCESS"
    assert front["states"]["cameraStreamProtocol"] == "hls"
    assert front["states"]["online"] is True
    url = front["states"]["cameraStreamAccessUrl"]
    assert url.startswith(f"http://127.0.0.1:8080/streams/{demo['Front Door']}/")
    assert probe_video(url.replace("http://127.0.0.1:8080", server.url)) == "h264"
    for name, (status, code) in EXPECTED_ERRORS.items():
        result = by_id[demo[name]]
        assert (result["status"], result["errorCode"]) == (status, code), name
        assert "states" not in result
    with db.session() as session:
        actions = session.scalars(
            select(AuditEvent.action).where(AuditEvent.assistant == "google")
        ).all()
    assert actions.count("stream.requested") == 1 and actions.count("stream.denied") == 4


def test_execute_of_one_camera_reads_it_with_the_token(
    server: LiveServer, db: Database, google, demo
) -> None:  # type: ignore[no-untyped-def]
    """An EXECUTE naming one device reads the token and that camera in one statement, and
    answers exactly as if it read them apart: the token is judged first (401 whatever camera
    is named), another owner's camera is none, and a blocked camera says why."""
    token = token_for(server, google, DEMO_EMAIL)
    front = demo["Front Door"]
    stranger = make_owner(db, "stranger@example.com", {"Theirs": {}})
    with db.reading() as session:
        theirs = session.scalars(select(Camera.id).where(Camera.owner_id == stranger)).one()
    with statements(db) as seen:
        answer = fulfill(server, token, execute([front])).json()["payload"]["commands"][0]
    assert answer["status"] == "SUCCESS", answer
    reads = [sql for sql in seen if sql.lstrip().upper().startswith("SELECT")]
    assert len(reads) == 1 and "cameras" in reads[0] and "tokens" in reads[0], seen
    assert fulfill(server, "garbage", execute([front])).status_code == 401
    malformed = {"intent": "action.devices.EXECUTE", "payload": {"commands": [{"devices": 5}]}}
    assert fulfill(server, "garbage", malformed).status_code == 401  # the token first
    assert fulfill(server, token, malformed).status_code == 400
    assert fulfill(server, token, execute([theirs])).json()["payload"]["commands"] == [
        {"ids": [theirs], "status": "ERROR", "errorCode": "deviceNotFound"}
    ]
    for name, (status, code) in EXPECTED_ERRORS.items():
        result = fulfill(server, token, execute([demo[name]])).json()["payload"]["commands"][0]
        assert (result["status"], result.get("errorCode")) == (status, code), name
        assert "states" not in result, name
    # A second execution for the same device reads the camera again: the first may have
    # changed what is known of it (a camera cloud's answer).
    twice = execute([front])
    command = twice["payload"]["commands"][0]
    command["execution"] = command["execution"] * 2
    with statements(db) as seen:
        answers = fulfill(server, token, twice).json()["payload"]["commands"]
    assert [a["status"] for a in answers] == ["SUCCESS", "SUCCESS"], answers
    assert len([sql for sql in seen if sql.lstrip().upper().startswith("SELECT")]) == 2, seen
    alexa = register(db, "Amazon Alexa", ALEXA_URIS, "alexa")
    alexa_token = token_for(server, alexa, DEMO_EMAIL)
    assert fulfill(server, alexa_token, execute([front])).status_code == 401
    with db.session() as session:
        session.execute(update(Token).values(revoked_at=utcnow()))
    assert fulfill(server, token, execute([front])).status_code == 401


def test_no_common_protocol_is_function_not_supported(server: LiveServer, google, demo) -> None:  # type: ignore[no-untyped-def]
    token = token_for(server, google, DEMO_EMAIL)
    result = fulfill(server, token, execute([demo["Front Door"]], ["dash", "webrtc"]))
    assert result.json()["payload"]["commands"] == [
        {"ids": [demo["Front Door"]], "status": "ERROR", "errorCode": "functionNotSupported"}
    ]


def test_receiver_app_id_when_configured(
    settings: Settings, db: Database, google, demo, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    configured = settings.model_copy(
        update={"google_receiver_app_id": "ABCD1234", "media_dir": tmp_path / "m"}
    )
    with LiveServer(create_app(configured, db)) as live:
        token = token_for(live, google, DEMO_EMAIL)
        states = fulfill(live, token, execute([demo["Front Door"]])).json()["payload"]["commands"][
            0
        ]["states"]
        # A Nest display (StreamToChromecast false) plays the stream itself: no receiver app.
        display = execute([demo["Front Door"]])
        display["payload"]["commands"][0]["execution"][0]["params"]["StreamToChromecast"] = False
        shown = fulfill(live, token, display).json()["payload"]["commands"][0]
    assert states["cameraStreamReceiverAppId"] == "ABCD1234"
    assert shown["status"] == "SUCCESS" and "cameraStreamReceiverAppId" not in shown["states"]


def test_bad_tokens_get_401(server: LiveServer, db: Database, google, demo) -> None:  # type: ignore[no-untyped-def]
    sync = {"intent": "action.devices.SYNC"}
    assert fulfill(server, None, sync).status_code == 401
    assert fulfill(server, "garbage", sync).status_code == 401
    token = token_for(server, google, DEMO_EMAIL)
    with db.session() as session:
        session.execute(update(Token).values(expires_at=utcnow() - timedelta(seconds=1)))
    expired = fulfill(server, token, sync)
    assert expired.status_code == 401
    assert expired.headers["WWW-Authenticate"].startswith("Bearer")
    # A token issued to the Alexa client is not Google's: it cannot SYNC, nor DISCONNECT.
    alexa = register(db, "Amazon Alexa", ALEXA_URIS, "alexa")
    alexa_token = token_for(server, alexa, DEMO_EMAIL)
    assert fulfill(server, alexa_token, {"intent": "action.devices.DISCONNECT"}).status_code == 401
    assert fulfill(server, alexa_token, sync).status_code == 401
    # Nor is one issued to a client of neither assistant (`clients add --assistant other`).
    other = register(db, "Home dashboard", ["http://127.0.0.1:9/cb"], "other")
    assert fulfill(server, token_for(server, other, DEMO_EMAIL), sync).status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"requestId": "1"}',
        b'{"requestId": "1", "inputs": []}',
        b'{"requestId": "1", "inputs": [{"intent": "action.devices.FLY"}]}',
        b'{"requestId": "1", "inputs": [{"intent": "action.devices.QUERY", "payload": {"devices": "x"}}]}',
        b'{"requestId": "1", "inputs": [{"intent": "action.devices.EXECUTE", "payload": {"commands": [{"devices": [{"id": "a"}], "execution": [{"command": 1}]}]}}]}',
        b'{"requestId": "1", "inputs": [{"intent": "action.devices.EXECUTE", "payload": {"commands": [{"devices": [{"id": "a"}], "execution": [{"command": "action.devices.commands.GetCameraStream", "params": {}}]}]}}]}',
        b'{"requestId": "1", "inputs": [{"intent": "action.devices.QUERY", "payload": {"devices": [{"id": 5}]}}]}',
        b'{"requestId": "1", "inputs": [{"intent": []}]}',
        # Two inputs would need two payloads (two SYNCs would list every device twice).
        b'{"requestId": "1", "inputs": [{"intent": "action.devices.SYNC"}, {"intent": "action.devices.SYNC"}]}',
    ],
)
def test_garbage_bodies_get_400(server: LiveServer, google, demo, body: bytes) -> None:  # type: ignore[no-untyped-def]
    token = token_for(server, google, DEMO_EMAIL)
    response = requests.post(
        server.url + "/google/fulfillment",
        data=body,
        timeout=10,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["payload"]["errorCode"] == "protocolError"


def test_disconnect_revokes_only_that_link(server: LiveServer, db: Database, google, demo) -> None:  # type: ignore[no-untyped-def]
    mine = token_for(server, google, DEMO_EMAIL)
    household = token_for(server, google, DEMO_EMAIL)
    response = fulfill(server, mine, {"intent": "action.devices.DISCONNECT"})
    assert (response.status_code, response.json()["payload"]) == (200, {})
    assert fulfill(server, mine, {"intent": "action.devices.SYNC"}).status_code == 401
    assert fulfill(server, household, {"intent": "action.devices.SYNC"}).status_code == 200
    with db.session() as session:
        unlinked = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "account.unlinked")
        ).one()
        assert unlinked.detail["reason"] == "google_disconnect"


# --- HomeGraph ------------------------------------------------------------------------------


@pytest.fixture
def fake_google() -> Iterator[FakeGoogle]:
    fake = FakeGoogle()
    yield fake
    fake.close()


def test_homegraph_sync_and_report_state(
    settings: Settings, db: Database, google, demo, fake_google: FakeGoogle, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    configured = settings.model_copy(update={
        "google_homegraph_key": fake_google.key_file(tmp_path), "google_homegraph_url": fake_google.url,
        "media_dir": tmp_path / "m",
    })  # fmt: skip
    app = create_app(configured, db)
    registry, events = wiring(app).registry, wiring(app).outbox
    with LiveServer(app) as live:
        token = token_for(live, google, DEMO_EMAIL)
        assert fulfill(live, token, {"intent": "action.devices.SYNC"}).json()["payload"]["devices"][
            0
        ]["willReportState"]
    with db.session() as session:
        front = session.get(Camera, demo["Front Door"])
        registry.record(session, front, {"name": "Front Porch"}, actor="test")
        registry.record(session, front, {"online": False}, actor="test")
        # Readiness fixes change nothing Google holds (SYNC's fields, `online`): no call.
        fixes = {"Garage": {"image_encryption": False}, "Nursery": {"audio": True},
                 "Living Room": {"sleep_mode": False}}  # fmt: skip
        for name, fix in fixes.items():
            registry.record(session, session.get(Camera, demo[name]), fix, actor="test")
    while outbox.drain_once(db, events, max_attempts=3):
        pass
    account_id = front.owner_id
    assert fake_google.calls == [
        ("/v1/devices:requestSync", {"agentUserId": account_id, "async": False}),
        ("/v1/devices:reportStateAndNotification", {
            "requestId": fake_google.calls[1][1]["requestId"], "agentUserId": account_id,
            "payload": {"devices": {"states": {demo["Front Door"]: {"online": False}}}},
        }),
    ]  # fmt: skip
    assert fake_google.token_requests == 1  # the token is cached between calls

    # Google forgot this owner (404): calls for them stop.
    fake_google.unknown_users.add(account_id)
    with db.session() as session:
        registry.record(
            session, session.get(Camera, demo["Garage"]), {"name": "Garage 2"}, actor="t"
        )
    outbox.drain_once(db, events, max_attempts=3)
    fake_google.unknown_users.clear()
    with db.session() as session:
        registry.record(
            session, session.get(Camera, demo["Garage"]), {"name": "Garage 3"}, actor="t"
        )
    outbox.drain_once(db, events, max_attempts=3)
    assert len(fake_google.calls) == 2


def test_no_homegraph_without_key_or_google_link(
    settings: Settings, db: Database, demo, fake_google: FakeGoogle, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from camvoice.models import OutboxEvent

    bare = wiring(create_app(settings, db))  # no key: nothing is subscribed
    with db.session() as session:
        bare.registry.record(session, session.get(Camera, demo["Garage"]), {"name": "G"}, actor="t")
        assert session.scalars(select(OutboxEvent)).all() == []
    configured = settings.model_copy(update={
        "google_homegraph_key": fake_google.key_file(tmp_path), "google_homegraph_url": fake_google.url})  # fmt: skip
    keyed = wiring(create_app(configured, db))
    with db.session() as session:
        keyed.registry.record(
            session, session.get(Camera, demo["Garage"]), {"name": "G2"}, actor="t"
        )
    while outbox.drain_once(db, keyed.outbox, max_attempts=3):
        pass
    assert fake_google.calls == []  # the owner never linked Google


def test_homegraph_token_refresh_uses_homegraph_timeout(
    fake_google: FakeGoogle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service-account token is fetched with HomeGraph's 10 s timeout, not google-auth's
    120 s default: the outbox lease is computed from it (camvoice/outbox.py)."""
    from fulfillment.homegraph import TIMEOUT, HomeGraph

    client = HomeGraph(fake_google.key_file(tmp_path), fake_google.url)
    seen: list[float | None] = []
    real_session_request = client.http.request

    def spy(method: str, url: str, **kwargs: Any) -> Any:
        seen.append(kwargs.get("timeout"))
        return real_session_request(method, url, **kwargs)

    monkeypatch.setattr(client.http, "request", spy)
    assert client._authorization().startswith("Bearer ")
    assert seen == [TIMEOUT]  # one token request, with HomeGraph's timeout
