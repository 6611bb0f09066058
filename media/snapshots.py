"""Snapshots: a current JPEG of a camera, from its running relay or a one-frame grab.

A grab runs off the request thread, one at a time per camera however many fetches ask for it,
in a small pool; a fetch waits for it at most `wait` seconds and then gets the camera's last
good image (if recent enough) or nothing, so a camera that never answers holds no web thread.
A grab that failed (source refused, no frame) is not tried again for `RETRY_AFTER_FAILURE`
seconds: fetches meanwhile are told at once that there is no image.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections import OrderedDict
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor

from camvoice.redact import redact
from media.relay import RETRY_AFTER_FAILURE, RelayManager, demo_input
from media.rtsp_check import SourceRefused, guarded_source

log = logging.getLogger(__name__)
TIMEOUT = 8.0  # one grab, in the pool (not in a request)
WAIT = 2.0  # longest a fetch waits for a grab
FRESH = 2.0  # an image this recent is served without a new grab
KEEP = 120.0  # an older image than this is never served
CACHED = 256  # cameras whose last image this process keeps
GRABBERS = 4  # grabs at once in this process


class SnapshotFailed(Exception):
    """The camera's last grab failed, recently, and there is no image to show instead."""


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
        try:  # the address policy again, and redirects followed here, not by ffmpeg
            checked = guarded_source(relays.addresses, source)
        except SourceRefused as exc:
            log.warning("snapshot of camera %s refused its source: %s", camera_id, exc)
            return None
        inputs = ["-rtsp_transport", "tcp", "-timeout", "5000000", "-i", checked]
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


class Snapshots:
    """This process's snapshot grabs: shared per camera, bounded in time, last image kept."""

    def __init__(self, relays: RelayManager, wait: float = WAIT) -> None:
        self.relays = relays
        self.wait = wait
        self.lock = threading.Lock()
        self.pending: dict[str, Future[None]] = {}
        self.failed: dict[str, float] = {}  # camera -> until when (monotonic) not to grab again
        self.last: OrderedDict[str, tuple[float, bytes]] = OrderedDict()  # camera -> (when, jpeg)
        self.pool = ThreadPoolExecutor(GRABBERS, thread_name_prefix="snapshot")

    def get(self, camera_id: str, source: str | None, name: str) -> tuple[float, bytes] | None:
        """(time taken, JPEG) of the camera, at most KEEP seconds old; None if there is none yet.

        Joins the camera's grab in progress or starts one (unless the last one failed less than
        RETRY_AFTER_FAILURE ago), and waits for it at most `wait`. Raises SnapshotFailed when
        the grab failed and no image is recent enough to show instead.
        """
        with self.lock:
            last = self.last.get(camera_id)
            if last is not None and time.time() - last[0] < FRESH:
                return last
            pending = self.pending.get(camera_id)
            if pending is None and self.failed.get(camera_id, 0.0) <= time.monotonic():
                pending = self.pool.submit(self._grab, camera_id, source, name)
                self.pending[camera_id] = pending
        if pending is not None:
            futures.wait([pending], timeout=self.wait)  # unfinished, it goes on for a later fetch
        with self.lock:
            last = self.last.get(camera_id)
            failed = camera_id in self.failed and camera_id not in self.pending
        if last is not None and time.time() - last[0] < KEEP:
            return last
        if failed:
            raise SnapshotFailed(camera_id)
        return None

    def _grab(self, camera_id: str, source: str | None, name: str) -> None:
        image = None
        try:
            image = grab(self.relays, camera_id, source, name)
        except OSError as exc:  # ffmpeg missing or not startable: no image, like a failed grab
            log.warning("snapshot of camera %s could not run ffmpeg: %s", camera_id, exc)
        finally:
            with self.lock:
                del self.pending[camera_id]
                if image is None:
                    self.failed[camera_id] = time.monotonic() + RETRY_AFTER_FAILURE
                else:
                    self.failed.pop(camera_id, None)
                    self.last[camera_id] = (time.time(), image)
                    self.last.move_to_end(camera_id)
                    while len(self.last) > CACHED:
                        self.last.popitem(last=False)
