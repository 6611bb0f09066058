"""Details Amazon's and Google's own sample messages check: names, facts left unknown rather than
made up, and the stream capability offered only where an Echo device can connect."""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
from pathlib import Path
from urllib.parse import urljoin

import pytest
from sqlalchemy import select

from camvoice.db import Database
from camvoice.models import Camera
from camvoice.settings import Settings
from camvoice.tickets import Audience, Protocol
from fulfillment.intents import device_info
from media.probe import picture_size
from media.relay import find_ffmpeg
from service.app import create_app
from service.wiring import build_services
from skills import messages
from tests.conftest import (
    LiveServer,
    free_port,
    require_gstreamer,
    run_cli,
    running_relay,
    with_relay,
)
from tests.media_support import mint
from tests.oauth_support import make_owner

FRIENDLY = re.compile(r"[^\W_]+( [^\W_]+)*")  # letters and digits, single spaces between


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Mary's Cam.  2  porch", "Marys Cam 2 porch"),
        ("front-door", "front door"),
        ("Cámara del jardín", "Cámara del jardín"),
        ("  garage_2 (side) ", "garage 2 side"),
        ("★★★", "Camera"),
    ],
)
def test_friendly_name_is_letters_digits_and_single_spaces(
    settings: Settings, name: str, expected: str
) -> None:
    endpoint = messages.endpoint(Camera(id="cam_1", name=name, source="demo"), settings, True, True)
    assert endpoint["friendlyName"] == expected
    assert FRIENDLY.fullmatch(endpoint["friendlyName"])


def real_camera(**fields: object) -> Camera:
    return Camera(id="cam_real", name="Porch", source="rtsp://192.0.2.7:554/stream1", **fields)


def test_unknown_model_firmware_and_size_are_left_unknown(settings: Settings) -> None:
    camera = real_camera()
    endpoint = messages.endpoint(camera, settings, streams=True, proactive=True)
    assert endpoint["additionalAttributes"] == {"manufacturer": "camvoice"}
    assert "virtual" not in endpoint["description"] and "None" not in endpoint["description"]
    # Alexa needs the stream's resolution; until a probe has measured it, no stream is offered.
    interfaces = {c["interface"] for c in endpoint["capabilities"]}
    assert "Alexa.CameraStreamController" not in interfaces
    assert device_info("camvoice", camera) == {"manufacturer": "camvoice"}


def test_the_probed_resolution_is_advertised(settings: Settings) -> None:
    camera = real_camera(model="DS-2CD2143", firmware="V5.7.3", width=2688, height=1520)
    endpoint = messages.endpoint(camera, settings, streams=True, proactive=True)
    assert endpoint["additionalAttributes"] == {
        "manufacturer": "camvoice",
        "model": "DS-2CD2143",
        "firmwareVersion": "V5.7.3",
    }
    [stream_capability] = [
        c for c in endpoint["capabilities"] if c["interface"] == "Alexa.CameraStreamController"
    ]
    [configuration] = stream_capability["cameraStreamConfigurations"]
    assert configuration["resolutions"] == [{"width": 2688, "height": 1520}]
    controller = messages.CameraStreamController(camera)
    assert controller.resolution() == {"width": 2688, "height": 1520}
    assert device_info("camvoice", camera) == {
        "manufacturer": "camvoice",
        "model": "DS-2CD2143",
        "swVersion": "V5.7.3",
    }


@pytest.mark.parametrize(
    ("update", "port", "advertised"),
    [
        ({"rtsps_url_template": "rtsps://cams.example.com/cam/{camera_id}/{ticket}"}, 322, False),
        (
            {"rtsps_url_template": "rtsps://cams.example.com:8554/c/{camera_id}/{ticket}"},
            8554,
            False,
        ),
        ({"rtsps_url_template": "rtsps://cams.example.com:443/c/{camera_id}/{ticket}"}, 443, True),
    ],
)
def test_stream_capability_only_where_echo_devices_connect(
    settings: Settings, db: Database, update: dict[str, object], port: int, advertised: bool
) -> None:
    configured = settings.model_copy(update=update)
    services = build_services(configured, db)
    assert configured.rtsps_url_port() == port
    assert messages.advertises_streams(services) is advertised


def test_public_port_names_the_mapped_port(settings: Settings) -> None:
    """A port mapping in front of the relay: URLs name 443 while the relay listens on 8554."""
    mapped = settings.model_copy(update={"rtsps_port": 8554, "rtsps_public_port": 443})
    assert mapped.rtsps_url_port() == 443
    assert settings.model_copy(update={"rtsps_port": 8554}).rtsps_url_port() == 8554


def test_picture_size_is_read_from_the_stream(tmp_path: Path) -> None:
    """What the probe reads is the stream's own size (a real H.264 file made by ffmpeg)."""
    ffmpeg = find_ffmpeg()
    assert ffmpeg, "no ffmpeg"
    clip = tmp_path / "clip.mp4"
    subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc=size=1280x720:rate=5",
                    "-t", "1", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(clip)],
                   check=True, timeout=60)  # fmt: skip
    assert picture_size(str(clip)) == (1280, 720)
    assert picture_size(str(tmp_path / "missing.mp4")) is None


def test_cameras_add_probes_an_rtsp_source_once(cli_env: dict[str, str], db: Database) -> None:
    """An unreachable camera gets no made-up size and the operator is told how to probe later."""
    make_owner(db, "probe@example.com")
    added = run_cli("cameras", "add", "--owner", "probe@example.com", "--name", "Porch",
                    "--source", f"rtsp://127.0.0.1:{free_port()}/stream1", "--json", env=cli_env)  # fmt: skip
    shown = json.loads(added.stdout)
    assert shown["picture"] is None and shown["model"] is None and shown["firmware"] is None
    assert "cameras probe" in added.stderr
    again = run_cli("cameras", "probe", shown["id"], env=cli_env, check=False)
    assert again.returncode == 2 and "could not read a picture" in again.stderr


def rtsp_request(port: int, ca: Path, lines: list[str]) -> tuple[str, dict[str, str], str]:
    """One RTSP request over verified TLS on a fresh connection: (status line, headers, body)."""
    context = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), 10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = tls.recv(4096)
            assert chunk, f"connection closed after {data!r}"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status, *rest = head.decode().split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in rest)}
        while len(body) < int(headers.get("content-length", "0")):
            body += tls.recv(4096)
    return status, headers, body.decode()


def test_rtsps_content_base_is_the_full_request_url(
    settings: Settings, db: Database, tmp_path: Path
) -> None:
    """Content-Base keeps scheme, camera and ticket, so a SETUP resolved against it works on a
    new connection too (before, it was rtsp://host:port/cam/ and the ticket was lost)."""
    require_gstreamer()
    relay = with_relay(settings, tmp_path)
    make_owner(db, "relay@example.com", {"Porch": {"source": "demo"}})
    with db.session() as session:
        camera = session.scalars(select(Camera)).one()
    with LiveServer(create_app(relay, db)) as live, running_relay(relay, live.url):
        url = mint(relay, camera, Protocol.RTSPS, Audience.ALEXA)
        assert relay.rtsps_cert is not None
        status, headers, sdp = rtsp_request(relay.rtsps_port, relay.rtsps_cert, [
            f"DESCRIBE {url} RTSP/1.0", "CSeq: 1", "Accept: application/sdp"])  # fmt: skip
        assert status == "RTSP/1.0 200 OK", status
        assert headers["content-base"] == url + "/"
        control = re.search(r"a=control:(\S+)", sdp.split("m=video", 1)[1])
        assert control, sdp
        setup_url = urljoin(headers["content-base"], control.group(1))
        status, headers, _ = rtsp_request(relay.rtsps_port, relay.rtsps_cert, [
            f"SETUP {setup_url} RTSP/1.0", "CSeq: 2",
            "Transport: RTP/AVP/TCP;unicast;interleaved=0-1"])  # fmt: skip
        assert status == "RTSP/1.0 200 OK", status
        assert "session" in headers
        # A made-up ticket is refused, and leaves the relay serving the real one.
        forged = url.rsplit("/", 1)[0] + "/forged.ticket"
        status, _, _ = rtsp_request(relay.rtsps_port, relay.rtsps_cert, [
            f"DESCRIBE {forged} RTSP/1.0", "CSeq: 3"])  # fmt: skip
        assert status != "RTSP/1.0 200 OK"
        status, _, _ = rtsp_request(relay.rtsps_port, relay.rtsps_cert, [
            f"DESCRIBE {url} RTSP/1.0", "CSeq: 4"])  # fmt: skip
        assert status == "RTSP/1.0 200 OK", status


MOUNTS_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
import rtsps_relay as relay

relay.Gst.init(None)
relay.MAX_MOUNTS = 3
mounts = relay.TicketMounts(relay.GstRtspServer.RTSPMediaFactory())
for i in range(10):
    mounts.ensure(f"/cam/c/t{i}")
assert list(mounts.added) == ["/cam/c/t7", "/cam/c/t8", "/cam/c/t9"], list(mounts.added)
mounts.forget("/cam/c/t9")
assert "/cam/c/t9" not in mounts.added
print("bounded")
"""


def test_relay_mounts_stay_bounded_whatever_urls_clients_make_up() -> None:
    """Each ticket URL gets a mount; refused ones are forgotten and the table has a cap, so
    DESCRIBEs with made-up tickets cannot grow it without end."""
    require_gstreamer()
    folder = Path(__file__).parent.parent / "media"
    result = subprocess.run(["/usr/bin/python3", "-c", MOUNTS_SCRIPT, str(folder)],
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert result.stdout.strip() == "bounded", result.stderr[-800:]
