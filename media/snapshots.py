"""Snapshots: a current JPEG of a camera, from its running relay or a one-frame grab."""

from __future__ import annotations

import logging
import subprocess

from camvoice.redact import redact
from media.relay import RelayManager, demo_input

log = logging.getLogger(__name__)
TIMEOUT = 8.0


def grab(relays: RelayManager, camera_id: str, source: str | None, name: str) -> bytes | None:
    """JPEG bytes, or None if the camera gave no frame in time."""
    if not relays.ffmpeg or not source:
        return None
    segments = sorted(relays.folder(camera_id).glob("seg_*.ts"))
    if segments:
        inputs = ["-i", str(segments[-1])]
    elif source == "demo":
        inputs = [arg for arg in demo_input(name) if arg != "-re"]
    else:
        inputs = ["-rtsp_transport", "tcp", "-timeout", "5000000", "-i", source]
    command = [
        relays.ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", *inputs,
        "-map", "0:v:0", "-frames:v", "1", "-f", "image2", "-c:v", "mjpeg", "pipe:1",
    ]  # fmt: skip
    try:
        result = subprocess.run(command, capture_output=True, timeout=TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        log.warning("snapshot of camera %s timed out", camera_id)
        return None
    if result.returncode != 0 or not result.stdout.startswith(b"\xff\xd8"):
        log.warning(
            "snapshot of camera %s failed: %s", camera_id, redact(result.stderr.decode()[-300:])
        )
        return None
    return result.stdout
