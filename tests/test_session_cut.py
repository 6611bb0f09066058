"""A change that blocks a camera or ends a link ends its playing sessions within 10 s.

README ("Streams"): every playlist, segment and snapshot fetch is admitted again, and the RTSPS
relay re-admits each live session every CAMVOICE_STREAM_RECHECK_INTERVAL seconds. These tests
watch real players: ffmpeg reading RTSPS through the relay (TLS verified against the test
certificate) until the change, and HLS fetches over HTTP. Every wait is a poll with a deadline.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from sqlalchemy import delete

from camvoice.db import Database
from camvoice.models import Camera
from camvoice.settings import Settings
from camvoice.tickets import Audience, Protocol
from media.relay import find_ffmpeg
from oauth.models import Grant
from oauth.tokens import authenticate_bearer, revoke_grant
from service.app import create_app
from tests.conftest import LiveServer, require_gstreamer, running_relay, with_relay
from tests.media_support import bare_registry, ffmpeg_pids, mint, play
from tests.oauth_support import ALEXA_URIS, GOOGLE_URIS, link, make_owner, register

CUT_WITHIN = 10.0  # seconds from the change to the end of every session (design.md, "Media")
OWNER = "owner@example.com"


class Player:
    """ffmpeg playing a stream to nowhere (no decoding), reporting its frame count as it goes."""

    def __init__(self, url: str, extra: list[str]) -> None:
        command = [
            find_ffmpeg() or "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", *extra,
            "-i", url, "-map", "0:v:0", "-c", "copy", "-f", "null", "-",
            "-progress", "pipe:1", "-nostats",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.frames = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._read_progress, daemon=True).start()

    def _read_progress(self) -> None:
        """ffmpeg writes `frame=N` about twice a second while packets arrive."""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("frame="):
                with self.lock:
                    self.frames = int(line.split("=", 1)[1])

    def count(self) -> int:
        with self.lock:
            return self.frames

    def wait_frames(self, more_than: int, within: float) -> int:
        """Poll until more than `more_than` frames have arrived; the count reached."""
        deadline = time.monotonic() + within
        while (frames := self.count()) <= more_than:
            assert self.process.poll() is None, f"player exited: {self.stderr()}"
            assert time.monotonic() < deadline, f"stuck at {frames} frames"
            time.sleep(0.1)
        return frames

    def wait_ended(self, within: float) -> float:
        """Seconds until ffmpeg exits (the relay closed the session); fails after `within`."""
        start = time.monotonic()
        while self.process.poll() is None:
            elapsed = time.monotonic() - start
            assert elapsed < within, f"still playing after {elapsed:.1f} s, {self.count()} frames"
            time.sleep(0.05)
        return time.monotonic() - start

    def stderr(self) -> str:
        if self.process.poll() is None or self.process.stderr is None:
            return ""
        return self.process.stderr.read()[-500:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


@pytest.fixture
def players() -> Iterator[list[Player]]:
    started: list[Player] = []
    yield started
    for player in started:
        player.stop()


def add_camera(db: Database, name: str, **fields: object) -> Camera:
    """A demo camera of the test owner (created on first use)."""
    from camvoice.accounts import find_account

    with db.reading() as session:
        exists = find_account(session, OWNER) is not None
    if not exists:
        make_owner(db, OWNER)
    with db.session() as session:
        owner = find_account(session, OWNER)
        return bare_registry().add(session, owner, name, actor="test", **fields)


def change_camera(db: Database, camera: Camera, **changes: object) -> None:
    """What a backend sync or the owner's app does: the camera's settings change."""
    with db.session() as session:
        bare_registry().record(session, session.get(Camera, camera.id), changes, actor="test")


def linked_grant(live: LiveServer, db: Database, assistant: str) -> tuple[str, dict]:
    """Link the owner to an assistant through the real OAuth flow: (grant id, token response)."""
    uris = ALEXA_URIS if assistant == "alexa" else GOOGLE_URIS
    client = register(db, f"{assistant} test client", uris, assistant)
    _, token = link(live, client, OWNER)
    with db.session() as session:
        principal = authenticate_bearer(session, token["access_token"])
        assert not isinstance(principal, str)
        return principal.grant_id, {**token, "client": client}


def revoke(db: Database, grant_id: str) -> None:
    """Unlink, as the console's Unlink button and Google's DISCONNECT do."""
    with db.session() as session:
        assert revoke_grant(session, grant_id, "unlinked_by_owner", actor="test")


# --- RTSPS -----------------------------------------------------------------------------------


@pytest.fixture
def rtsps_settings(settings: Settings, tmp_path: Path) -> Settings:
    require_gstreamer()
    return with_relay(settings, tmp_path)


@pytest.fixture
def rtsps(rtsps_settings: Settings, db: Database) -> Iterator[LiveServer]:
    """The app and its RTSPS relay, as `camvoice serve` runs them."""
    app = create_app(rtsps_settings, db)
    with LiveServer(app) as live, running_relay(rtsps_settings, live.url):
        yield live
    app.extensions["camvoice.relays"].shutdown()


def play_rtsps(settings: Settings, url: str, players: list[Player]) -> Player:
    """An RTSPS player that verifies the relay's certificate, playing (frames arriving)."""
    tls = ["-rtsp_transport", "tcp", "-tls_verify", "1", "-ca_file", str(settings.rtsps_cert)]
    player = Player(url, tls)
    players.append(player)
    player.wait_frames(15, within=30)
    return player


def keeps_playing(player: Player, seconds: float) -> None:
    """Frames still arrive `seconds` from now: the periodic re-checks admitted the session."""
    before = player.count()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert player.process.poll() is None, f"cut while admitted: {player.stderr()}"
        time.sleep(0.1)
    player.wait_frames(before, within=10)


# The three camera changes that block it for every audience, as a backend sync records them.
CAMERA_CHANGES: dict[str, dict[str, object]] = {
    "image_encryption_on": {"image_encryption": True},
    "sleep": {"sleep_mode": True},
    "offline": {"online": False},
}


@pytest.mark.parametrize("name", list(CAMERA_CHANGES))
def test_rtsps_session_ends_when_its_camera_becomes_blocked(
    rtsps_settings: Settings, rtsps: LiveServer, db: Database, players: list[Player], name: str
) -> None:
    front, garage = add_camera(db, "Front Door"), add_camera(db, "Garage")
    front_player = play_rtsps(
        rtsps_settings, mint(rtsps_settings, front, Protocol.RTSPS, Audience.ALEXA), players
    )
    garage_player = play_rtsps(
        rtsps_settings, mint(rtsps_settings, garage, Protocol.RTSPS, Audience.ALEXA), players
    )
    keeps_playing(front_player, 2 * rtsps_settings.stream_recheck_interval)
    change_camera(db, front, **CAMERA_CHANGES[name])
    took = front_player.wait_ended(within=CUT_WITHIN)
    print(f"RTSPS session of the changed camera ended {took:.1f} s after {name}")
    keeps_playing(garage_player, rtsps_settings.stream_recheck_interval + 1)


def test_rtsps_session_ends_when_its_link_is_revoked(
    rtsps_settings: Settings, rtsps: LiveServer, db: Database, players: list[Player]
) -> None:
    front = add_camera(db, "Front Door")
    grant_id, _ = linked_grant(rtsps, db, "alexa")
    url = mint(rtsps_settings, front, Protocol.RTSPS, Audience.ALEXA, grant_id)
    linked = play_rtsps(rtsps_settings, url, players)
    unlinked_ticket = play_rtsps(
        rtsps_settings, mint(rtsps_settings, front, Protocol.RTSPS, Audience.ALEXA), players
    )
    keeps_playing(linked, 2 * rtsps_settings.stream_recheck_interval)
    revoke(db, grant_id)
    took = linked.wait_ended(within=CUT_WITHIN)
    print(f"RTSPS session of the revoked link ended {took:.1f} s after the unlink")
    # Another session of the same camera, not bound to that link, carries on.
    keeps_playing(unlinked_ticket, rtsps_settings.stream_recheck_interval + 1)


def test_rtsps_relay_fails_closed_when_camvoice_stops_answering(
    rtsps_settings: Settings, rtsps: LiveServer, db: Database, players: list[Player]
) -> None:
    front = add_camera(db, "Front Door")
    player = play_rtsps(
        rtsps_settings, mint(rtsps_settings, front, Protocol.RTSPS, Audience.ALEXA), players
    )
    rtsps.server.shutdown()  # the app hangs: connections queue, nothing answers
    # 10 s without a confirmed ticket (FAIL_CLOSED_AFTER in media/rtsps_relay.py), plus one
    # interval and one unanswered question (3 s), plus slack for a loaded machine.
    took = player.wait_ended(within=10 + rtsps_settings.stream_recheck_interval + 3 + 8)
    print(f"RTSPS session ended {took:.1f} s after camvoice stopped answering")


# --- HLS -------------------------------------------------------------------------------------


@pytest.fixture
def hls_settings(settings: Settings, tmp_path: Path) -> Settings:
    """The default idle timeout (30 s): a relay that stops sooner was stopped by the re-check."""
    return settings.model_copy(update={"media_dir": tmp_path / "media"})


@pytest.fixture
def hls(hls_settings: Settings, db: Database) -> Iterator[LiveServer]:
    app = create_app(hls_settings, db)
    with LiveServer(app) as live:
        yield live
    app.extensions["camvoice.relays"].shutdown()


def hls_url(settings: Settings, live: LiveServer, camera: Camera, **kw: object) -> str:
    url = mint(settings, camera, Protocol.HLS, kw.pop("audience", Audience.GOOGLE), **kw)  # type: ignore[arg-type]
    return url.replace(settings.public_url, live.url)


def first_segment(playlist_url: str) -> str:
    """A segment URL of the playlist, which must be admitted (200) now."""
    playlist = play(playlist_url)
    assert playlist.status_code == 200, playlist.text
    name = next(line for line in playlist.text.splitlines() if line.endswith(".ts"))
    segment = playlist_url.rsplit("/", 1)[0] + "/" + name
    assert requests.get(segment, timeout=10).status_code == 200
    return segment


def revoke_refresh_token(live: LiveServer, token: dict) -> None:
    """The assistant revokes its refresh token (RFC 7009): that ends the link."""
    client = token["client"]
    answer = requests.post(
        live.url + "/oauth/revoke",
        data={"token": token["refresh_token"], "token_type_hint": "refresh_token"},
        auth=(client.client_id, client.secret),
        timeout=10,
    )
    assert answer.status_code == 200, answer.text


def delete_grant(db: Database, grant_id: str) -> None:
    """The link is gone altogether (its client or account deleted)."""
    with db.session() as session:
        session.execute(delete(Grant).where(Grant.id == grant_id))


LINK_CHANGES = ("unlink", "refresh_token_revoked", "grant_deleted")


def end_link(name: str, live: LiveServer, db: Database, grant_id: str, token: dict) -> None:
    """One of the ways a link (OAuth grant) ends."""
    if name == "unlink":
        revoke(db, grant_id)
    elif name == "refresh_token_revoked":
        revoke_refresh_token(live, token)
    else:
        delete_grant(db, grant_id)


@pytest.mark.parametrize("name", [*CAMERA_CHANGES, *LINK_CHANGES])
def test_hls_fetches_are_refused_after_each_change(
    hls_settings: Settings, hls: LiveServer, db: Database, name: str
) -> None:
    front = add_camera(db, "Front Door")
    grant_id, token = linked_grant(hls, db, "google")
    url = hls_url(hls_settings, hls, front, grant_id=grant_id)
    segment = first_segment(url)
    if name in CAMERA_CHANGES:
        change_camera(db, front, **CAMERA_CHANGES[name])
    else:
        end_link(name, hls, db, grant_id, token)
    for fetch in (url, segment):
        refused = requests.get(fetch, timeout=10)
        assert refused.status_code == 403, (name, fetch.rsplit("/", 1)[1], refused.status_code)
    expected = "link_revoked" if name in LINK_CHANGES else "blocked:"
    assert expected in refused.json()["message"]


@pytest.mark.parametrize("name", list(CAMERA_CHANGES))
def test_hls_relay_of_a_blocked_camera_stops(
    hls_settings: Settings, hls: LiveServer, db: Database, name: str
) -> None:
    front, garage = add_camera(db, "Front Door"), add_camera(db, "Garage")
    first_segment(hls_url(hls_settings, hls, front))
    first_segment(hls_url(hls_settings, hls, garage))
    front_folder = hls_settings.media_path / front.id
    assert len(ffmpeg_pids(front_folder)) == 1
    change_camera(db, front, **CAMERA_CHANGES[name])
    start = time.monotonic()
    while ffmpeg_pids(front_folder):
        elapsed = time.monotonic() - start
        assert elapsed < CUT_WITHIN, f"ffmpeg still pulls the camera {elapsed:.1f} s after {name}"
        time.sleep(0.1)
    print(f"HLS relay stopped {time.monotonic() - start:.1f} s after {name}")
    # The other camera's relay, still admitted, is left running.
    assert len(ffmpeg_pids(hls_settings.media_path / garage.id)) == 1


def test_hls_link_change_spares_viewers_of_other_links(
    hls_settings: Settings, hls: LiveServer, db: Database
) -> None:
    front = add_camera(db, "Front Door")
    grant_id, _ = linked_grant(hls, db, "google")
    linked = hls_url(hls_settings, hls, front, grant_id=grant_id)
    console = hls_url(hls_settings, hls, front, audience=Audience.WEB)
    first_segment(linked)
    revoke(db, grant_id)
    assert requests.get(linked, timeout=10).status_code == 403
    first_segment(console)
