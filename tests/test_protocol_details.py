"""Details Amazon's and Google's own sample messages check: names, facts left unknown rather than
made up, and the stream capability offered only where an Echo device can connect."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from camvoice.db import Database
from camvoice.models import Camera
from camvoice.settings import Settings
from fulfillment.intents import device_info
from media.probe import picture_size
from media.relay import find_ffmpeg
from service.wiring import build_services
from skills import messages
from tests.conftest import free_port, run_cli
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
