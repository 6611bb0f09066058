"""The RTSPS relay for Alexa: GStreamer's RTSP server over TLS, read back by ffmpeg/ffprobe.

Needs Debian's GStreamer packages (deploy/install-gstreamer.sh). Skips without them, unless
CAMVOICE_REQUIRE_GSTREAMER=1 (set by .ci/run), which makes their absence a failure.
"""

from __future__ import annotations

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
from tests.conftest import LiveServer, free_port, require_gstreamer, running_relay
from tests.media_support import bare_registry, mint, probe_video
from tests.oauth_support import make_owner


@pytest.fixture
def relay_settings(settings: Settings, tmp_path: Path) -> Settings:
    require_gstreamer()
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    self_signed(cert, key, "127.0.0.1")
    return settings.model_copy(update={
        "relay_enabled": True, "rtsps_port": free_port(), "rtsps_cert": cert, "rtsps_key": key,
        "media_dir": tmp_path / "media",
    })  # fmt: skip


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


def tls(settings: Settings) -> list[str]:
    return ["-rtsp_transport", "tcp", "-ca_file", str(settings.rtsps_cert)]


def refused(url: str, settings: Settings) -> bool:
    result = subprocess.run(
        [find_ffmpeg() or "ffmpeg", "-hide_banner", *tls(settings), "-i", url, "-frames:v", "1",
         "-f", "null", "-"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return result.returncode != 0


def test_rtsps_plays_h264_over_tls(
    relay_settings: Settings, relay: LiveServer, db: Database
) -> None:
    camera = demo_camera(db)
    url = mint(relay_settings, camera, Protocol.RTSPS, Audience.ALEXA)
    assert url.startswith(f"rtsps://127.0.0.1:{relay_settings.rtsps_port}/cam/{camera.id}/")
    assert probe_video(url, tls(relay_settings)) == "h264"
    with db.session() as session:
        started = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "stream.started")
        ).one()
        assert started.detail["protocol"] == "rtsps"


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
