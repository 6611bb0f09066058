"""The RTSPS relay for Alexa: GStreamer's RTSP server over TLS, read back by ffmpeg, which
verifies its certificate.

Needs Debian's GStreamer packages (deploy/install-gstreamer.sh). Skips without them, unless
CAMVOICE_REQUIRE_GSTREAMER=1 (set by .ci/run), which makes their absence a failure.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from camvoice.db import Database
from camvoice.models import AuditEvent, Camera
from camvoice.settings import Settings
from camvoice.tickets import Audience, Protocol
from media.relay import find_ffmpeg
from media.rtsps import self_signed
from service.app import create_app
from tests.conftest import LiveServer, require_gstreamer, running_relay, with_relay
from tests.media_support import bare_registry, mint
from tests.oauth_support import make_owner


@pytest.fixture
def relay_settings(settings: Settings, tmp_path: Path) -> Settings:
    require_gstreamer()
    return with_relay(settings, tmp_path)


@pytest.fixture
def relay(relay_settings: Settings, db: Database) -> Iterator[LiveServer]:
    with (
        LiveServer(create_app(relay_settings, db)) as live,
        running_relay(relay_settings, live.url),
    ):
        yield live


def demo_camera(db: Database, **fields: object) -> Camera:
    make_owner(db, "owner@example.com")
    with db.session() as session:
        from camvoice.accounts import find_account

        owner = find_account(session, "owner@example.com")
        return bare_registry().add(session, owner, "Front Door", actor="test", **fields)


def tls(settings: Settings, ca_file: Path | None = None) -> list[str]:
    """ffmpeg's options for the relay: TCP, and the relay's certificate checked against
    `ca_file` (its own self-signed one by default). `-tls_verify 1` makes the check explicit:
    older ffmpeg (Debian's 5.1) loads the CA file and still accepts any certificate without
    it; the pip-installed one verifies by default."""
    ca = ca_file or settings.rtsps_cert
    return ["-rtsp_transport", "tcp", "-tls_verify", "1", "-ca_file", str(ca)]


def probe(url: str, options: list[str], frames: int = 1) -> subprocess.CompletedProcess[str]:
    """The pip-installed ffmpeg reading video frames from `url`, as a player would.

    Not Debian's ffprobe (5.1), which probe_video prefers: its RTSP client does not pass
    -tls_verify or -ca_file on to TLS, so it accepts any certificate whatever it is told."""
    return subprocess.run(
        [find_ffmpeg() or "ffmpeg", "-hide_banner", *options, "-i", url, "-map", "0:v:0",
         "-frames:v", str(frames), "-f", "null", "-"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def play_rtsps(url: str, settings: Settings) -> str:
    """The video codec a player decodes frames of at the relay, its certificate verified."""
    result = probe(url, tls(settings), frames=5)
    assert result.returncode == 0, result.stderr[-500:]
    assert re.search(r"frame=\s*[1-9]", result.stderr), "no frames decoded"
    match = re.search(r"Stream #0:\d+.*?: Video: (\w+)", result.stderr)
    assert match, result.stderr[-500:]
    return match.group(1)


def refused(url: str, settings: Settings) -> bool:
    return probe(url, tls(settings)).returncode != 0


def test_rtsps_plays_h264_over_tls(
    relay_settings: Settings, relay: LiveServer, db: Database
) -> None:
    camera = demo_camera(db)
    url = mint(relay_settings, camera, Protocol.RTSPS, Audience.ALEXA)
    assert url.startswith(f"rtsps://127.0.0.1:{relay_settings.rtsps_port}/cam/{camera.id}/")
    assert play_rtsps(url, relay_settings) == "h264"
    with db.session() as session:
        started = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "stream.started")
        ).one()
        assert started.detail["protocol"] == "rtsps"


def test_rtsps_certificate_is_verified(
    relay_settings: Settings, relay: LiveServer, db: Database, tmp_path: Path
) -> None:
    """The player checks who it talks to: a certificate from another CA, or one for another
    host name, is refused before any ticket is read."""
    url = mint(relay_settings, demo_camera(db), Protocol.RTSPS, Audience.ALEXA)
    other_ca, other_key = tmp_path / "other-ca.pem", tmp_path / "other-key.pem"
    self_signed(other_ca, other_key, "127.0.0.1")  # same name, different key: not our relay's
    wrong_ca = probe(url, tls(relay_settings, other_ca))
    assert wrong_ca.returncode != 0
    assert "certificate" in wrong_ca.stderr.lower(), wrong_ca.stderr[-500:]
    # The relay's certificate names 127.0.0.1 and localhost; the relay listens on all of
    # 127.0.0.0/8, but 127.0.0.2 is not a name in its certificate.
    wrong_name = probe(url.replace("//127.0.0.1:", "//127.0.0.2:"), tls(relay_settings))
    assert wrong_name.returncode != 0
    assert "certificate" in wrong_name.stderr.lower(), wrong_name.stderr[-500:]
    assert play_rtsps(url.replace("//127.0.0.1:", "//localhost:"), relay_settings) == "h264"
    with db.session() as session:
        started = session.scalars(select(AuditEvent).where(AuditEvent.action == "stream.started"))
        assert len(started.all()) == 1  # only the trusted connection reached the ticket check


def test_rtsps_refuses_bad_tickets(
    relay_settings: Settings, relay: LiveServer, db: Database
) -> None:
    camera = demo_camera(db)
    url = mint(relay_settings, camera, Protocol.RTSPS, Audience.ALEXA)
    assert refused(url[:-4] + "AAAA", relay_settings)
    hls_ticket = mint(relay_settings, camera, Protocol.HLS, Audience.ALEXA).split("/")[-2]
    assert refused(url.rsplit("/", 1)[0] + "/" + hls_ticket, relay_settings)
    with db.session() as session:
        bare_registry().record(
            session, session.get(Camera, camera.id), {"image_encryption": True}, actor="t"
        )
    assert refused(url, relay_settings)
    with db.session() as session:
        reasons = [
            e.detail["reason"]
            for e in session.scalars(select(AuditEvent).where(AuditEvent.action == "stream.denied"))
        ]
    assert "tampered" in reasons and "wrong_protocol" in reasons
    assert any(r.startswith("blocked:ENCRYPTION_ON") for r in reasons)
