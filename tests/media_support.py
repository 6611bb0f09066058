"""Reading streams the way a player does: ffprobe when installed, else the pip-installed ffmpeg."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from camvoice.addresses import AddressPolicy, parse_networks
from camvoice.cameras import Registry
from camvoice.models import Camera
from camvoice.outbox import Outbox
from camvoice.settings import Settings
from camvoice.streams import Streams
from camvoice.tickets import Audience, Protocol
from media.relay import find_ffmpeg
from tests.conftest import TEST_SOURCE_NETWORKS, free_port, require_gstreamer, until


def play(url: str, deadline: float = 30) -> requests.Response:
    """GET a playlist or snapshot as a player does: again while it answers 503 (a relay still
    starting, a grab under way), until it answers something else or `deadline` passes. Every
    503 must say when to come back (Retry-After); the test polls sooner than that."""
    answers: list[requests.Response] = []

    def answered() -> bool:
        answers.append(requests.get(url, timeout=30))
        if answers[-1].status_code == 503:
            assert answers[-1].headers.get("Retry-After", "").isdigit(), answers[-1].headers
            return False
        return True

    until(answered, deadline)
    return answers[-1]


def probe_video(url: str, extra: list[str] | None = None, timeout: float = 30) -> str:
    """The codec of the first video stream that a player reads frames from at `url`."""
    extra = extra or []
    if url.startswith("http") and url.endswith(".m3u8"):
        assert play(url).status_code == 200  # ffprobe does not retry a relay still starting
    ffprobe = shutil.which("ffprobe")
    if ffprobe:
        result = subprocess.run(
            [ffprobe, "-v", "error", *extra, "-select_streams", "v:0", "-count_packets",
             "-read_intervals", "%+2", "-show_entries", "stream=codec_name,nb_read_packets",
             "-of", "json", url],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        stream = json.loads(result.stdout)["streams"][0]
        assert int(stream["nb_read_packets"]) > 0, "no video packets read"
        return str(stream["codec_name"])
    ffmpeg = find_ffmpeg()
    assert ffmpeg, "no ffmpeg"
    result = subprocess.run(
        [ffmpeg, "-hide_banner", *extra, "-i", url, "-map", "0:v:0", "-frames:v", "5",
         "-f", "null", "-"],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-500:]
    assert re.search(r"frame=\s*[1-9]", result.stderr), "no frames decoded"
    match = re.search(r"Stream #0:\d+.*?: Video: (\w+)", result.stderr)
    assert match, result.stderr[-500:]
    return match.group(1)


def ffmpeg_pids(folder: Path) -> list[int]:
    """ffmpeg processes writing into `folder` (read from /proc, as `ps` would)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            state = (entry / "stat").read_text().split()[2]
        except OSError:
            continue
        if "ffmpeg" in cmdline.split("\0")[0] and str(folder) in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


def zombies() -> list[int]:
    """Zombie children of this test process."""
    me = str(os.getpid())
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if stat[0] == "Z" and stat[1] == me:
                found.append(int(entry.name))
    return found


def bare_registry(settings: Settings | None = None) -> Registry:
    """A registry whose changes reach no subscriber: for tests about media, not events. Given
    settings, it seals source credentials as the app's does."""
    return Registry(
        Outbox(),
        AddressPolicy(parse_networks(TEST_SOURCE_NETWORKS)),
        settings.sealer() if settings else None,
    )


def mint(
    settings: Settings,
    camera: Camera,
    protocol: Protocol,
    audience: Audience,
    grant_id: str | None = None,
) -> str:
    """A stream URL as the core mints it for a camera that passed its readiness rules."""
    return Streams(settings, bare_registry()).mint(camera, protocol, audience, grant_id)


# What a test camera sends (GStreamer launch lines; the payloaders are pay0, pay1...).
TEST_PICTURE = "videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=15/1"
H264_ONLY = f"{TEST_PICTURE} ! x264enc tune=zerolatency key-int-max=15 ! rtph264pay name=pay0 pt=96"
H265_ONLY = f"{TEST_PICTURE} ! x265enc tune=zerolatency key-int-max=15 ! rtph265pay name=pay0 pt=96"
H264_AND_PCMA = (
    f"{H264_ONLY} audiotestsrc is-live=true ! audio/x-raw,rate=8000,channels=1 ! alawenc"
    " ! rtppcmapay name=pay1 pt=8"
)


@contextmanager
def rtsp_camera(tmp_path: Path, sends: str = H264_ONLY) -> Iterator[str]:
    """A real camera over plain RTSP from GStreamer's server on 127.0.0.2, its URL; by default
    H.264 (x264, 320x240, 15 fps) and no audio. Skips the test without GStreamer. A fixture:

        @pytest.fixture
        def real_camera(tmp_path: Path) -> Iterator[str]:
            with rtsp_camera(tmp_path) as url:
                yield url
    """
    require_gstreamer()
    port = free_port()
    script = tmp_path / "camera.py"
    script.write_text(PLAIN_RTSP_CAMERA)
    process = subprocess.Popen(["/usr/bin/python3", str(script), "127.0.0.2", str(port), sends],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        assert process.stdout is not None and process.stdout.readline() == b"ready\n"
        yield f"rtsp://127.0.0.2:{port}/stream"
    finally:
        process.terminate()
        process.wait(10)


# A real camera: GStreamer's RTSP server, run by the system Python (Debian's gi bindings).
PLAIN_RTSP_CAMERA = """
import sys
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer
Gst.init(None)
server = GstRtspServer.RTSPServer()
server.set_address(sys.argv[1])
server.set_service(sys.argv[2])
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch("( " + sys.argv[3] + " )")
factory.set_shared(True)
server.get_mount_points().add_factory("/stream", factory)
server.attach(None)
print("ready", flush=True)
GLib.MainLoop().run()
"""
