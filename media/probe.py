"""Measuring what a camera's stream really sends, once, so Discovery can say it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from camvoice.addresses import AddressPolicy
from media.relay import find_ffmpeg
from media.rtsp_check import SourceRefused, guarded_source

VIDEO_SIZE = re.compile(r"Stream #\d+:\d+.*?: Video: .*?\b(\d{2,5})x(\d{2,5})\b")
PROBE_TIMEOUT = 15.0


def picture_size(
    source: str, ffmpeg: str | None = None, addresses: AddressPolicy | None = None
) -> tuple[int, int] | None:
    """The width and height of the first video stream at `source`, or None when it cannot be
    read (unreachable, no video, no ffmpeg, an address the policy refuses: a source is probed
    before it is registered, so the policy applies here too). RTSP is pulled over TCP, as the
    relays pull it."""
    binary = find_ffmpeg(ffmpeg)
    if binary is None:
        return None
    if not Path(source).is_file():  # a file of the operator's own is read as it is
        try:
            source = guarded_source(addresses or AddressPolicy(), source)
        except SourceRefused:
            return None
    transport = ["-rtsp_transport", "tcp"] if source.startswith("rtsp") else []
    command = [binary, "-hide_banner", "-nostdin", *transport, "-i", source,
               "-map", "0:v:0", "-frames:v", "1", "-f", "null", "-"]  # fmt: skip
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=PROBE_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = VIDEO_SIZE.search(result.stderr)
    return (int(match.group(1)), int(match.group(2))) if match else None
