"""Scale-out of WebRTC: web instances forward offers to media nodes by camera id.

Two media nodes (the real media-node app on real sockets) and two web instances (the real app
factory, CAMVOICE_MEDIA_URLS naming both nodes) whose nodes' engines record what reached them,
so the first tests see where every call landed; then two real `camvoice media` processes with
the aiortc engine behind two web instances' signaling URLs, and `camvoice serve` with its own
media node, where displays decode frames and the test counts the ffmpeg pulls per process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from camvoice.settings import Settings, load_settings
from camvoice.tickets import Audience, Protocol
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


def descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process below `pid`, read from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for child, its_parent in parents.items():
            if its_parent == parent:
                try:
                    line = (Path("/proc") / str(child) / "cmdline").read_bytes()
                except OSError:
                    continue
                found.append((child, line.replace(b"\0", b" ").decode(errors="replace")))
                frontier.append(child)
    return found


def feeds_of(node: subprocess.Popen[bytes]) -> int:
    """How many camera pulls (ffmpeg) a media node process runs."""
    return sum(1 for _, line in descendants(node.pid) if "ffmpeg" in line.split(" ", 1)[0])


@pytest.fixture
def pg_settings(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Settings]:
    for url in migrated_database("postgresql", request, tmp_path):
        yield load_settings(data_dir=tmp_path / "data", database_url=url, secret_key=KEY,
                            source_networks=TEST_SOURCE_NETWORKS)  # fmt: skip


@pytest.fixture
def media_processes(
    pg_settings: Settings, tmp_path: Path
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """Two `camvoice media` processes on the same database, by URL, answering."""
    from tests.conftest import VENV_BIN, free_port, wait_for

    assert pg_settings.database_url is not None
    env = {**os.environ, "CAMVOICE_DATA_DIR": str(tmp_path / "node"), "CAMVOICE_SECRET_KEY": KEY,
           "CAMVOICE_DATABASE_URL": pg_settings.database_url.get_secret_value()}  # fmt: skip
    procs = {}
    for port in (free_port(), free_port()):
        procs[f"http://127.0.0.1:{port}"] = subprocess.Popen(
            [str(VENV_BIN / "camvoice"), "media", "--port", str(port)], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    try:
        for url, proc in procs.items():
            wait_for(lambda url=url, proc=proc: healthy(url, proc), f"media node {url}", 90)
        yield procs
    finally:
        for proc in procs.values():
            if proc.poll() is None:  # its gunicorn worker, and ffmpeg (PR_SET_PDEATHSIG) with it
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(20)


@pytest.mark.postgres
def test_real_nodes_one_feed_per_camera_and_a_node_down(
    pg_settings: Settings, media_processes: dict[str, subprocess.Popen[bytes]]
) -> None:
    """Two `camvoice media` processes running the aiortc engine; two web instances; two
    displays of one camera, one through each instance: one node, one upstream pull. That node
    stopped, the next display is answered by the other node."""
    from tests.conftest import until
    from tests.test_webrtc import add_camera
    from tests.webrtc_support import Watcher

    nodes = media_processes
    update = {"media_urls": ",".join(nodes)}
    webs = [create_app(pg_settings.model_copy(update=update)) for _ in range(2)]
    services = webs[0].extensions["camvoice"]
    camera = add_camera(services.db)
    owner = ranked(tuple(nodes), camera.id)[0]
    other = next(url for url in nodes if url != owner)

    def display(web: LiveServer) -> Watcher:
        """A Nest Hub whose offer reaches camvoice through `web`'s signaling URL."""
        opened = services.streams.open(services.db, camera, Audience.GOOGLE, Protocol.WEBRTC)

        def signal_offer(offer: str) -> str:
            body = {"action": "offer", "deviceId": camera.id, "sdp": offer}
            headers = {"Authorization": f"Bearer {opened.token}"}
            answer = web.post("/webrtc/signal", json=body, headers=headers)
            assert answer.status_code == 200, answer.text
            return str(answer.json()["sdp"])

        return Watcher(signal_offer)

    with LiveServer(webs[0]) as web_a, LiveServer(webs[1]) as web_b:
        with display(web_a) as first, display(web_b) as second:
            assert first.wait_frames(3) and second.wait_frames(3), "no frames via the nodes"
            assert feeds_of(nodes[owner]) == 1 and feeds_of(nodes[other]) == 0
        os.killpg(nodes[owner].pid, signal.SIGKILL)  # down hard, its worker and ffmpeg too
        nodes[owner].wait(20)
        with display(web_b) as third:
            assert third.wait_frames(3), "the surviving node did not take the camera"
            assert until(lambda: feeds_of(nodes[other]) == 1, 10), descendants(nodes[other].pid)


def healthy(url: str, proc: subprocess.Popen[bytes]) -> bool:
    assert proc.poll() is None, f"media node {url} exited"
    try:
        return requests.get(url + "/healthz", timeout=2).ok
    except requests.RequestException:
        return False


def test_serve_runs_one_media_node_for_its_workers(base: Settings, tmp_path: Path) -> None:
    """`camvoice serve` without CAMVOICE_MEDIA_URLS: one `camvoice media` child on loopback holds
    every session, so two displays, whichever of the two workers took their offer, share one
    upstream pull, and it runs under that child, not under a web worker."""
    from tests.conftest import VENV_BIN, free_port, wait_for
    from tests.test_webrtc import add_camera
    from tests.webrtc_support import Watcher

    app = create_app(base)
    services = app.extensions["camvoice"]
    camera = add_camera(services.db)
    port = free_port()
    assert base.database_url is not None
    env = {**os.environ, "CAMVOICE_DATA_DIR": str(tmp_path / "serve"), "CAMVOICE_SECRET_KEY": KEY,
           "CAMVOICE_DATABASE_URL": base.database_url.get_secret_value(),
           "CAMVOICE_SOURCE_NETWORKS": TEST_SOURCE_NETWORKS}  # fmt: skip
    env.pop("CAMVOICE_MEDIA_URLS", None)
    serve = subprocess.Popen(
        [str(VENV_BIN / "camvoice"), "serve", "--port", str(port), "--workers", "2"], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: healthy(url, serve), "camvoice serve", 120)
        # the node's gunicorn master first (a child of serve), then its one worker
        # one node (its gunicorn master, a child of serve, comes first; then its worker)
        nodes = [(pid, line) for pid, line in descendants(serve.pid) if "cli media" in line]
        assert len({line for _, line in nodes}) == 1, descendants(serve.pid)
        node_url = "http://127.0.0.1:" + nodes[0][1].split("--port ")[1].split()[0]
        wait_for(lambda: healthy(node_url, serve), "its media node", 90)

        def offer_to_serve(offer: str) -> str:
            opened = services.streams.open(services.db, camera, Audience.GOOGLE, Protocol.WEBRTC)
            body = {"action": "offer", "deviceId": camera.id, "sdp": offer}
            headers = {"Authorization": f"Bearer {opened.token}"}
            answer = requests.post(url + "/webrtc/signal", json=body, headers=headers, timeout=20)
            assert answer.status_code == 200, answer.text
            return str(answer.json()["sdp"])

        with Watcher(offer_to_serve) as first, Watcher(offer_to_serve) as second:
            assert first.wait_frames(3) and second.wait_frames(3), "no frames via `serve`"
            pulls = [pid for pid, line in descendants(serve.pid) if "ffmpeg" in line.split()[0]]
            assert len(pulls) == 1, descendants(serve.pid)
            assert pulls[0] in {pid for pid, _ in descendants(nodes[0][0])}
        os.kill(serve.pid, signal.SIGKILL)  # serve itself killed: no `finally` of its own runs
        serve.wait(20)
        wait_for(lambda: gone(nodes[0][0]), "the media node to die with serve", 60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(serve.pid, signal.SIGKILL)
        serve.wait(30)


def gone(pid: int) -> bool:
    """Whether the process has exited (a zombie waiting for its reaper counts)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except OSError:
        return True


def test_no_media_node_reachable_is_a_clean_503_at_the_signaling_url(base: Settings) -> None:
    """A web instance whose media nodes are all down answers Google's offer with 503
    `unavailable` (MediaUnavailable), never a 500, and its `end` is still {}."""
    from tests.conftest import free_port
    from tests.test_webrtc import add_camera
    from tests.webrtc_support import make_offer

    down = f"http://127.0.0.1:{free_port()},http://127.0.0.1:{free_port()}"  # nobody listens
    app = create_app(base.model_copy(update={"media_urls": down}))
    services = app.extensions["camvoice"]
    camera = add_camera(services.db)
    opened = services.streams.open(services.db, camera, Audience.GOOGLE, Protocol.WEBRTC)
    headers = {"Authorization": f"Bearer {opened.token}"}
    with LiveServer(app) as live:
        body = {"action": "offer", "deviceId": camera.id, "sdp": make_offer()}
        refused = live.post("/webrtc/signal", json=body, headers=headers)
        assert refused.status_code == 503 and refused.json()["error"] == "unavailable"
        ended = live.post("/webrtc/signal", json={"action": "end", "deviceId": camera.id},
                          headers=headers)  # fmt: skip
        assert ended.status_code == 200 and ended.json() == {}
