"""WebRTC through TURN, for displays on networks without UDP (issue 16, "Media engine and
networks"): a real coturn, started from the shipped deploy/coturn/turnserver.conf on loopback,
and camvoice's aiortc engine.

The display (aiortc) may use relay candidates only, reaching coturn over TCP or TLS; camvoice's
answer keeps its relay candidates only, so no host path exists on either side. Both ends
authenticate with credentials camvoice minted from the secret it shares with coturn.

coturn is a Debian package (`apt-get install coturn`). Outside CI a missing coturn skips these
tests with the reason; with CAMVOICE_REQUIRE_TURN=1 (set by .ci/run) it fails them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from flask import Flask
from pydantic import SecretStr

from camvoice.db import Database
from camvoice.ice import IceServer, ice_servers, turn_credential
from camvoice.services import Services
from camvoice.settings import Settings
from camvoice.tickets import Audience, Protocol
from service.app import create_app
from tests.conftest import free_port, wait_for
from tests.test_webrtc import add_camera
from tests.webrtc_support import Watcher

CONF = Path(__file__).resolve().parents[1] / "deploy/coturn/turnserver.conf"
SECRET = "turn-rest-secret-for-tests-0123456789"


def require_coturn() -> str:
    path = shutil.which("turnserver")
    if path is None:
        if os.environ.get("CAMVOICE_REQUIRE_TURN") == "1":
            pytest.fail("coturn (turnserver) missing and CAMVOICE_REQUIRE_TURN=1")
        pytest.skip("coturn not installed (apt-get install coturn)")
    return path


@dataclass
class Coturn:
    port: int  # plain TURN, UDP and TCP
    tls_port: int  # TURN over TLS (443 in production)
    cert: Path
    log: Path


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[Coturn]:
    """coturn on 127.0.0.1 with the shipped configuration, and what only a test needs on top:
    free ports, a self-signed certificate, and loopback allowed as a peer (the shipped file
    denies private and loopback peers, as production should)."""
    from media.rtsps import self_signed

    binary = require_coturn()
    cert, key = tmp_path / "turn-cert.pem", tmp_path / "turn-key.pem"
    self_signed(cert, key, "127.0.0.1")
    turn = Coturn(free_port(), free_port(), cert, tmp_path / "coturn.log")
    args = [
        binary, "-c", str(CONF), "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1",
        f"--listening-port={turn.port}", f"--tls-listening-port={turn.tls_port}",
        f"--cert={cert}", f"--pkey={key}", f"--static-auth-secret={SECRET}",
        "--realm=camvoice.test", "--allow-loopback-peers", "--allowed-peer-ip=127.0.0.1",
        f"--userdb={tmp_path / 'turndb'}", f"--pidfile={tmp_path / 'turnserver.pid'}",
    ]  # fmt: skip
    with open(turn.log, "wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)

    def listening() -> bool:
        assert process.poll() is None, f"coturn exited:\n{turn.log.read_text()[-2000:]}"
        try:
            socket.create_connection(("127.0.0.1", turn.tls_port), 1).close()
            return True
        except OSError:
            return False

    try:
        wait_for(listening, "coturn to listen", 20)
        yield turn
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def app(settings: Settings, db: Database, coturn: Coturn, tmp_path: Path) -> Iterator[Flask]:
    """camvoice with coturn as its TURN server: the engine's own peer uses the first URL (UDP,
    beside coturn); displays get all three."""
    urls = (
        f"turn:127.0.0.1:{coturn.port}?transport=udp,"
        f"turn:127.0.0.1:{coturn.port}?transport=tcp,"
        f"turns:127.0.0.1:{coturn.tls_port}?transport=tcp"
    )
    turned = settings.model_copy(
        update={
            "media_dir": tmp_path / "media",
            "turn_urls": urls,
            "turn_secret": SecretStr(SECRET),
        }
    )
    app = create_app(turned, db)
    yield app
    Services.of(app).webrtc.shutdown()  # type: ignore[attr-defined]
    app.extensions["camvoice.relays"].shutdown()


def display_config(servers: list[IceServer], scheme: str) -> RTCConfiguration:
    """What a display without UDP does with the servers camvoice handed it: the TURN URL of
    `scheme` (aiortc takes one), relay candidates only."""
    turn = next(s for s in servers if s.username)
    url = next(u for u in turn.urls if u.startswith(scheme))
    return RTCConfiguration(
        iceServers=[RTCIceServer([url], turn.username, turn.credential)],
        iceTransportPolicy=RTCIceTransportPolicy.RELAY,
    )


def relay_only(sdp: str) -> str:
    """camvoice's answer without its host candidates: only the relayed path is left."""
    lines = sdp.split("\r\n")
    return "\r\n".join(
        line for line in lines if not line.startswith("a=candidate:") or " typ relay" in line
    )


def selected_pair(display: Watcher) -> tuple[str, str]:
    """The candidate types of the pair ICE nominated on the display's side (aioice's own
    record: aiortc has no public accessor for it)."""
    assert display.pc is not None
    ice = display.pc.getTransceivers()[0].receiver.transport.transport
    pair = ice._connection._nominated[1]
    return pair.local_candidate.type, pair.remote_candidate.type


@pytest.mark.parametrize("scheme", ["turn:", "turns:"], ids=["tcp", "tls"])
def test_a_display_without_udp_plays_through_turn(
    app: Flask,
    db: Database,
    scheme: str,
    monkeypatch: pytest.MonkeyPatch,
    coturn: Coturn,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(coturn.cert))  # the display trusts coturn's cert
    minted: list[str] = []  # every TURN password camvoice made, to look for in the logs

    def recording(secret: str, expires: int, label: str) -> tuple[str, str]:
        pair = turn_credential(secret, expires, label)
        minted.append(pair[1])
        return pair

    monkeypatch.setattr("camvoice.ice.turn_credential", recording)
    caplog.set_level(logging.DEBUG)  # aiortc and aioice log SDPs and STUN messages at DEBUG
    services = Services.of(app)
    camera = add_camera(db)
    opened = services.streams.open(services.db, camera, Audience.GOOGLE, Protocol.WEBRTC)
    answers: list[str] = []

    def answer(offer: str) -> str:
        assert " typ host" not in offer and " typ relay" in offer  # the display has no UDP
        answers.append(services.webrtc.answer(opened.token or "", camera.id, offer).sdp)
        return relay_only(answers[-1])

    config = display_config(ice_servers(services.settings), scheme)
    with Watcher(answer, configuration=config) as display:
        assert " typ relay" in answers[0], "camvoice's peer got no TURN allocation"
        assert display.wait_frames(5), "no video frames decoded through TURN"
        assert selected_pair(display) == ("relay", "relay")
    assert len(minted) >= 2  # camvoice's peer's and the display's
    logged = caplog.text + coturn.log.read_text()
    assert not any(secret in logged for secret in [SECRET, *minted])


def gathered_relays(server: IceServer, url: str) -> int:
    """How many relay candidates an aiortc peer gets from coturn with these credentials."""

    async def gather() -> int:
        pc = RTCPeerConnection(
            RTCConfiguration(
                iceServers=[RTCIceServer([url], server.username, server.credential)],
                iceTransportPolicy=RTCIceTransportPolicy.RELAY,
            )
        )
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        count = pc.localDescription.sdp.count(" typ relay")
        await pc.close()
        return count

    return asyncio.run(gather())


def test_coturn_takes_minted_credentials_until_they_expire(app: Flask, coturn: Coturn) -> None:
    settings = Services.of(app).settings
    url = f"turn:127.0.0.1:{coturn.port}?transport=tcp"
    fresh = ice_servers(settings)[-1]
    assert fresh.username is not None and fresh.username.split(":")[0].isdigit()
    assert gathered_relays(fresh, url) == 1
    expired = ice_servers(settings, now=time.time() - (settings.turn_ttl or 0) - 86400)[-1]
    assert gathered_relays(expired, url) == 0
    user, _ = turn_credential(SECRET, int(time.time()) + 600, "someone")
    forged = IceServer(fresh.urls, user, turn_credential("not-the-secret", 0, "x")[1])
    assert gathered_relays(forged, url) == 0
    assert "credential" not in repr(fresh) and (fresh.credential or "?") not in repr(fresh)


def test_bad_network_settings_stop_with_the_variable_named_and_no_secret_echoed() -> None:
    from camvoice.settings import ConfigError, load_settings

    bad = {
        "ice_servers": '[{"urls": "turn:turn.example.com:443?transport=tcp", "username": "u"}]',
        "turn_urls": "https://turn.example.com",
        "media_urls": "http://media-a:8090,http://media-a:8090",
    }
    for name, value in bad.items():
        with pytest.raises(ConfigError) as caught:
            load_settings(**{name: value})
        assert str(caught.value).startswith(f"CAMVOICE_{name.upper()}: ")
    leaky = '[{"urls": "stun:s"}, {"urls": "turns:t", "username": 7, "credential": "hunter2"}]'
    with pytest.raises(ConfigError) as caught:
        load_settings(ice_servers=leaky)
    assert "entry 2" in str(caught.value) and "hunter2" not in str(caught.value)
    quiet = load_settings(turn_urls="turn:t.example.com:3478", turn_secret=SECRET)
    assert SECRET not in str(quiet.masked()) and ice_servers(quiet)[0].username
