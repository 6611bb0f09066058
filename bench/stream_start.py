"""Time from minting a stream URL to the first playable media, for WebRTC, HLS and RTSPS.

Starts `camvoice serve` (gunicorn) on a scratch SQLite database with one demo camera, then for
each run: post a WebRTC offer to the signaling URL and decode the first video frame (aiortc as
the display, as a Nest Hub does), fetch the playlist and its first segment (HLS), or decode the
first video frame over TLS (RTSPS, when the GStreamer relay is installed). Between runs the feeds
are left to go idle, so every run is a cold start of ffmpeg / the GStreamer pipeline; a second
WebRTC viewer joining a running feed is timed too ("webrtc warm"). A run counts only if it got
what a player needs (a decoded video frame; a playlist listing an MPEG-TS segment that starts
with the TS sync byte); otherwise the run stops with a non-zero exit.

    .venv/bin/python bench/stream_start.py [--runs 7]
    .venv/bin/python bench/stream_start.py --runs 1   # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NoReturn

import av
import requests
from aiortc import RTCPeerConnection, RTCSessionDescription

from camvoice.accounts import create_account
from camvoice.cameras import Registry
from camvoice.db import Database
from camvoice.outbox import Outbox
from camvoice.settings import load_settings
from camvoice.streams import Streams
from camvoice.tickets import Audience, Protocol
from media.relay import find_ffmpeg
from media.rtsps import gstreamer_available, self_signed

BIN = Path(sys.executable).parent


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, timeout: float = 60) -> None:
    """Until the server answers: a booting worker may accept and then answer late."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=5).ok:
                return
        except requests.RequestException:
            time.sleep(0.2)
    fail(f"{url} did not come up within {timeout:.0f} s")


def fail(message: str) -> NoReturn:
    """Stop the run: the time to an error is not a stream start."""
    sys.exit(f"bench/stream_start.py FAILED: {message}")


def hls_start(url: str) -> float:
    """Seconds to a playlist and its first segment, checked to be MPEG-TS."""
    began = time.perf_counter()
    playlist = requests.get(url, timeout=30)
    while playlist.status_code == 503 and time.perf_counter() - began < 30:
        # A relay still starting: retry when Retry-After says, as a player does.
        time.sleep(float(playlist.headers.get("Retry-After", 1)))
        playlist = requests.get(url, timeout=30)
    segments = [line for line in playlist.text.splitlines() if line.endswith(".ts")]
    if playlist.status_code != 200 or not segments:
        fail(f"HLS playlist answered HTTP {playlist.status_code} with no segment")
    segment = requests.get(url.rsplit("/", 1)[0] + "/" + segments[0], timeout=30)
    if segment.status_code != 200 or segment.content[:1] != b"\x47":
        fail(f"HLS first segment is not MPEG-TS (HTTP {segment.status_code})")
    return time.perf_counter() - began


async def _webrtc_first_frame(
    signal_url: str,
    token: str,
    camera_id: str,
    playing: asyncio.Event | None = None,
    hold: asyncio.Event | None = None,
) -> float:
    """Seconds from creating the offer to the first decoded video frame, as a display sees it;
    `playing` is set at that frame, and with `hold` the display goes on until it is set."""
    pc = RTCPeerConnection()
    try:
        began = time.perf_counter()
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
        tracks: asyncio.Queue[object] = asyncio.Queue()
        pc.on("track", tracks.put_nowait)
        await pc.setLocalDescription(await pc.createOffer())  # gathers: no trickle
        answered = await asyncio.to_thread(
            requests.post,
            signal_url,
            json={"action": "offer", "deviceId": camera_id, "sdp": pc.localDescription.sdp},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        if answered.status_code != 200:
            fail(f"WebRTC offer answered HTTP {answered.status_code}: {answered.text[:200]}")
        await pc.setRemoteDescription(RTCSessionDescription(answered.json()["sdp"], "answer"))
        while True:
            track = await asyncio.wait_for(tracks.get(), 30)
            if getattr(track, "kind", None) == "video":
                break
        while not isinstance(await asyncio.wait_for(track.recv(), 30), av.VideoFrame):  # type: ignore[attr-defined]
            pass
        took = time.perf_counter() - began
        if playing is not None:
            playing.set()
        if hold is not None:
            await hold.wait()
        return took
    except TimeoutError:
        fail("WebRTC: no decoded video frame within 30 s")
    finally:
        await pc.close()


def webrtc_start(signal_url: str, token: str, camera_id: str) -> float:
    return asyncio.run(_webrtc_first_frame(signal_url, token, camera_id))


def webrtc_warm(signal_url: str, tokens: list[str], camera_id: str) -> float:
    """A second display joining a camera already playing: the feed runs, its GOP is kept."""

    async def both() -> float:
        playing, hold = asyncio.Event(), asyncio.Event()
        first = asyncio.create_task(
            _webrtc_first_frame(signal_url, tokens[0], camera_id, playing, hold)
        )
        await asyncio.wait(
            [first, asyncio.create_task(playing.wait())], return_when=asyncio.FIRST_COMPLETED
        )
        if first.done():
            first.result()  # it failed: fail() already raised SystemExit
        try:
            return await _webrtc_first_frame(signal_url, tokens[1], camera_id)
        finally:
            hold.set()
            await first

    return asyncio.run(both())


def rtsps_start(url: str, cert: Path) -> float:
    """Seconds from the TLS handshake to one decoded video frame, as ffprobe-like players see it."""
    began = time.perf_counter()
    decoded = subprocess.run(
        [find_ffmpeg() or "ffmpeg", "-v", "error", "-rtsp_transport", "tcp", "-ca_file", str(cert),
         "-i", url, "-frames:v", "1", "-f", "null", "-"],
        check=False, timeout=30, capture_output=True, text=True,
    )  # fmt: skip
    if decoded.returncode != 0:
        fail(f"RTSPS: ffmpeg decoded no frame: {decoded.stderr.strip()[-300:]}")
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=7, help="cold starts of each (1: smoke)")
    parser.add_argument("--idle", type=float, default=2.0, help="relay idle timeout (s)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="camvoice-bench-"))
    port, rtsps_port = free_port(), free_port()
    cert, key = scratch / "cert.pem", scratch / "key.pem"
    self_signed(cert, key, "127.0.0.1")
    relay = gstreamer_available()
    env = {
        **os.environ,
        "CAMVOICE_DATA_DIR": str(scratch),
        "CAMVOICE_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "CAMVOICE_RELAY_IDLE_TIMEOUT": str(args.idle),
        "CAMVOICE_RELAY_ENABLED": "true" if relay else "false",
        "CAMVOICE_RTSPS_PORT": str(rtsps_port),
        "CAMVOICE_RTSPS_CERT": str(cert),
        "CAMVOICE_RTSPS_KEY": str(key),
        "CAMVOICE_LOG_LEVEL": "WARNING",
    }
    env.pop("CAMVOICE_DATABASE_URL", None)
    os.environ.update(env)
    settings = load_settings()
    db = Database(settings.sqlalchemy_url)
    db.upgrade()
    registry = Registry(Outbox())
    streams = Streams(settings, registry)
    with db.session() as session:
        owner = create_account(session, "bench@example.com", "bench-password")
        camera = registry.add(session, owner, "Bench Door", actor="bench")
    server = subprocess.Popen([str(BIN / "camvoice"), "serve", "--port", str(port)], env=env)
    try:
        wait_for(f"http://127.0.0.1:{port}/readyz")
        results: dict[str, list[float]] = {"webrtc": [], "webrtc warm": [], "hls": [], "rtsps": []}
        signal = f"http://127.0.0.1:{port}/webrtc/signal"
        for run in range(args.runs):
            if run:
                time.sleep(args.idle + 2.5)  # let the relays stop: this run is a cold start
            token = streams.mint(camera, Protocol.WEBRTC, Audience.GOOGLE)
            results["webrtc"].append(webrtc_start(signal, token, camera.id))
            # Two displays, two tickets: the signaling URL keys a session by its ticket.
            tokens = [streams.mint(camera, Protocol.WEBRTC, Audience.GOOGLE) for _ in range(2)]
            results["webrtc warm"].append(webrtc_warm(signal, tokens, camera.id))
            results["hls"].append(hls_start(streams.mint(camera, Protocol.HLS, Audience.GOOGLE)))
            if relay:
                url = streams.mint(camera, Protocol.RTSPS, Audience.ALEXA)
                results["rtsps"].append(rtsps_start(url, cert))
        print(f"stream start, cold, {args.runs} runs (seconds from mint to first media)")
        for name, times in results.items():
            if times:
                print(
                    f"  {name:11} median {statistics.median(times):.2f}  "
                    f"min {min(times):.2f}  max {max(times):.2f}"
                )
            else:
                print(f"  {name:11} not measured (GStreamer relay not installed)")
    finally:
        server.terminate()
        server.wait(15)


if __name__ == "__main__":
    main()
