"""Scale-out of WebRTC: web instances forward offers to media nodes by camera id.

Two media nodes (the real media-node app on real sockets) and two web instances (the real app
factory, CAMVOICE_MEDIA_URLS naming both nodes). Each node's engine here records what reached
it, so the test sees where every call landed; the aiortc engine behind the same endpoints is
tested in test_turn.py and the engine's own tests.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from camvoice.settings import Settings, load_settings
from camvoice.webrtc import (
    Answer,
    MediaBusy,
    MediaUnavailable,
    OfferRefused,
    TicketRefused,
    WebRTC,
)
from media.nodes import PREFIX, node_secret, ranked, signed_headers
from media.remote import RemoteWebRTC
from service.app import create_app
from service.media_node import create_media_app
from tests.conftest import TEST_SOURCE_NETWORKS, LiveServer, migrated_database

KEY = "test-secret-key-" + "x" * 32


class Recorder:
    """An engine that answers every offer and remembers which sessions it holds."""

    def __init__(self) -> None:
        self.sessions: dict[str, str] = {}  # session id -> camera id
        self.offers: list[str] = []  # camera ids, in arrival order

    def answer(
        self, token: str, camera_id: str, offer_sdp: str, session_id: str | None = None
    ) -> Answer:
        refusals = {"refused-ticket": TicketRefused("ticket expired"),
                    "refused-offer": OfferRefused("no H.264 in the offer"),
                    "refused-busy": MediaBusy("too many sessions")}  # fmt: skip
        if token in refusals:
            raise refusals[token]
        session_id = session_id or uuid.uuid4().hex
        self.sessions[session_id] = camera_id
        self.offers.append(camera_id)
        return Answer(session_id, f"v=0 answer to {offer_sdp}")

    def connected(self, session_id: str, camera_id: str) -> bool:
        return self.sessions.get(session_id) == camera_id

    def end(self, session_id: str, camera_id: str, reason: str) -> bool:
        if self.sessions.get(session_id) != camera_id:
            return False
        del self.sessions[session_id]
        return True


@pytest.fixture
def base(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Settings]:
    """Settings on a migrated SQLite database (routing does not depend on the database)."""
    for url in migrated_database("sqlite", request, tmp_path):
        yield load_settings(
            data_dir=tmp_path / "data",
            database_url=url,
            secret_key=KEY,
            source_networks=TEST_SOURCE_NETWORKS,
        )


@pytest.fixture
def nodes(base: Settings) -> Iterator[dict[str, tuple[LiveServer, Recorder]]]:
    """Two media nodes, by URL."""
    made = {}
    for _ in range(2):
        engine = Recorder()
        server = LiveServer(create_media_app(base, webrtc=engine)).__enter__()
        made[server.url] = (server, engine)
    yield made
    for server, _ in made.values():
        server.__exit__()


def web_engine(base: Settings, urls: list[str]) -> WebRTC:
    """What a web instance built by the app factory answers offers with."""
    app = create_app(base.model_copy(update={"media_urls": ",".join(urls)}))
    return app.extensions["camvoice"].webrtc


def test_every_web_instance_sends_a_camera_to_the_same_node(
    base: Settings, nodes: dict[str, tuple[LiveServer, Recorder]]
) -> None:
    urls = list(nodes)
    web_a, web_b = web_engine(base, urls), web_engine(base, urls[::-1])  # listed in any order
    assert isinstance(web_a, RemoteWebRTC)
    cameras = [f"cam-{n}" for n in range(12)]
    for camera in cameras:
        first = web_a.answer("ticket", camera, "offer-a")
        second = web_b.answer("ticket", camera, "offer-b", session_id="alexa-" + camera)
        assert first.sdp == "v=0 answer to offer-a" and second.session_id == "alexa-" + camera
        holders = [url for url, (_, engine) in nodes.items() if camera in engine.offers]
        assert holders == [ranked(tuple(urls), camera)[0]], "one camera, one node"
        assert nodes[holders[0]][1].offers.count(camera) == 2  # both viewers, one feed
        # connected and end reach the node holding the session, through either instance
        assert web_b.connected(first.session_id, camera) is True
        assert web_a.connected(first.session_id, "cam-other") is False
        assert web_b.end(first.session_id, camera, "user_hung_up") is True
        assert web_a.end(first.session_id, camera, "again") is False
    assert all(engine.offers for _, engine in nodes.values()), "cameras spread over both nodes"


def test_the_node_refusals_reach_the_caller_as_the_contract_errors(
    base: Settings, nodes: dict[str, tuple[LiveServer, Recorder]]
) -> None:
    web = web_engine(base, list(nodes))
    for token, error, reason in [
        ("refused-ticket", TicketRefused, "ticket expired"),
        ("refused-offer", OfferRefused, "no H.264 in the offer"),
        ("refused-busy", MediaBusy, "too many sessions"),
    ]:
        with pytest.raises(error) as caught:
            web.answer(token, "cam-1", "offer")
        assert caught.value.reason == reason
    assert not any(engine.offers for _, engine in nodes.values())  # and no second node asked


def test_a_node_down_moves_its_cameras_and_no_node_is_media_unavailable(
    base: Settings, nodes: dict[str, tuple[LiveServer, Recorder]]
) -> None:
    urls = list(nodes)
    web = web_engine(base, urls)
    cameras = [f"cam-{n}" for n in range(12)]
    down = urls[0]
    nodes[down][0].__exit__()  # stopped and closed (werkzeug): its port refuses connections
    for camera in cameras:
        web.answer("ticket", camera, "offer")
    assert nodes[urls[1]][1].offers == cameras  # the survivor took every camera
    assert web.end("no-such-session", "cam-1", "gone") is False
    nodes[urls[1]][0].__exit__()
    with pytest.raises(MediaUnavailable) as caught:
        web.answer("ticket", "cam-1", "offer")
    assert caught.value.reason == "no media node is reachable"


def test_a_node_refuses_unsigned_altered_or_stale_calls(
    base: Settings, nodes: dict[str, tuple[LiveServer, Recorder]]
) -> None:
    url = next(iter(nodes))
    path = f"{PREFIX}/answer"
    body = json.dumps({"token": "t", "camera_id": "c", "offer_sdp": "o", "session_id": None})
    secret = node_secret(KEY)
    calls = {
        "unsigned": {"Content-Type": "application/json"},
        "other key": signed_headers(node_secret("another-key-" + "y" * 32), path, body.encode()),
        "stale": signed_headers(secret, path, body.encode(), now=time.time() - 120),
        "other path": signed_headers(secret, f"{PREFIX}/end", body.encode()),
        "altered body": signed_headers(secret, path, body.replace('"c"', '"d"').encode()),
    }
    for what, headers in calls.items():
        refused = requests.post(url + path, data=body, headers=headers, timeout=10)
        assert refused.status_code == 401, what
        assert refused.json()["error"] == "unauthorized", what
    assert not nodes[url][1].offers
    # A web instance with another secret key gets no answer either: the offer is unavailable.
    wrong = RemoteWebRTC((url,), node_secret("another-key-" + "y" * 32))
    with pytest.raises(MediaUnavailable):
        wrong.answer("ticket", "c", "offer")
    # Signed but malformed: the node's 400, never a 500.
    for bad in (b"not json", b"[]", json.dumps({"token": 1, "camera_id": "c"}).encode()):
        answer = requests.post(
            url + path, data=bad, headers=signed_headers(secret, path, bad), timeout=10
        )
        assert answer.status_code == 400 and answer.json()["error"] == "bad_request"
