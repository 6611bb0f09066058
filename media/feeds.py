"""Camera feeds for WebRTC: one upstream pull per camera, shared by every viewer in the process.

A feed is one ffmpeg that pulls the camera and writes MPEG-TS to a pipe, and one thread that
demuxes it with PyAV and hands each packet to every viewer that joined. Nothing is decoded here:
a real camera's H.264 is copied as it comes (`-c:v copy`, its SPS/PPS repeated in-band before
each keyframe so a viewer that joins later can decode), and aiortc packs those packets into RTP
as they are. Only the demo camera, and a camera found to send another codec (H.265, MJPEG), are
encoded (libx264, constrained baseline: the profile aiortc offers), once for every viewer.
Audio is transcoded once per camera to Opus 48 kHz, WebRTC's codec; a camera without audio
gives video only.

The video packets since the last keyframe (the current GOP) are kept, so a viewer that joins a
running feed gets a keyframe at once instead of waiting up to a GOP for the next one.

A camera that hangs holds no request thread: `join` only registers the viewer and, for the
first one, starts the feed's own thread, which checks the source (the address policy, RTSP
redirects, the guard: media/rtsp_check.py) and starts ffmpeg from the long-lived spawner, so
ffmpeg dies with this process (PR_SET_PDEATHSIG). A feed whose ffmpeg exits while viewers remain
is started again after a pause; one whose last viewer left is stopped after a short grace, so a
viewer that reconnects at once finds it running.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
import typing
from dataclasses import dataclass, field

import av

from camvoice.addresses import AddressPolicy, AddressRefused
from camvoice.redact import redact  # ffmpeg echoes its input URL, credentials included
from media.relay import Spawner, source_args
from media.rtsp_check import SourceRefused, guarded_source

log = logging.getLogger(__name__)

GRACE = 3.0  # a feed without viewers runs this long, for a viewer that reconnects at once
RESTART_AFTER = 2.0  # a feed whose ffmpeg exited is started again after this pause
MAX_GOP = 600  # packets kept for a joining viewer; a camera with a longer GOP keeps the last ones

# The demo camera, and a camera that sends anything but H.264 (H.265, MJPEG), are encoded as
# WebRTC players decode it everywhere: constrained baseline (aiortc offers only profile-level-id
# 42e01f/42001f), no B-frames, a keyframe every second.
ENCODE_VIDEO = [
    "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency",
    "-profile:v", "baseline", "-pix_fmt", "yuv420p", "-bf", "0",
    "-force_key_frames", "expr:gte(t,n_forced*1)", "-sc_threshold", "0", "-b:v", "1000k",
]  # fmt: skip


class Viewer(typing.Protocol):
    """Where a feed hands its packets; called from the feed's thread, must not block."""

    def deliver(self, kind: str, packet: av.Packet) -> None: ...


def feed_command(ffmpeg: str, source: str, name: str, encode: bool = False) -> list[str]:
    """ffmpeg pulling `source` into MPEG-TS on stdout: H.264 copied (the demo, or with `encode`:
    encoded), audio as Opus."""
    inputs, video = source_args(source, name)
    audio_map = "1:a:0?" if source == "demo" else "0:a:0?"
    if source == "demo" or encode:
        video = ENCODE_VIDEO
    else:
        video = [*video, "-bsf:v", "dump_extra=freq=keyframe"]
    return [
        ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "warning", *inputs,
        "-map", "0:v:0", "-map", audio_map, *video,
        "-c:a", "libopus", "-ar", "48000", "-ac", "2", "-b:a", "48k",
        "-f", "mpegts", "-muxdelay", "0", "-flush_packets", "1", "pipe:1",
    ]  # fmt: skip


@dataclass
class Feed:
    """One camera's pull, its viewers and its current GOP."""

    camera_id: str
    source: str
    name: str
    viewers: set[Viewer] = field(default_factory=set)
    gop: list[av.Packet] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    idle_since: float | None = None  # monotonic, since the last viewer left
    stopped: threading.Event = field(default_factory=threading.Event)
    starts: int = 0  # how many ffmpeg were started (tests: one for many viewers)
    encode: bool = False  # the camera sends no H.264: encoded once here, for every viewer
    # Timestamps continue across a restart of ffmpeg (which starts its own again near 0):
    # viewers' RTP timestamps must not jump back. Shifted once here, before the fan-out.
    last_pts: int = 0
    offset: int | None = None


class Feeds:
    """This process's camera feeds for WebRTC viewers."""

    def __init__(self, ffmpeg: str | None, addresses: AddressPolicy, grace: float = GRACE) -> None:
        self.ffmpeg = ffmpeg
        self.addresses = addresses
        self.grace = grace
        self.feeds: dict[str, Feed] = {}
        self.lock = threading.Lock()  # bookkeeping only, never held across I/O
        self._stop = threading.Event()
        self._spawner: Spawner | None = None  # with the first feed: most web apps get none

    def _spawner_started(self) -> Spawner:
        """The spawner (and the reaper), started once. Holds self.lock."""
        if self._spawner is None:
            self._spawner = Spawner("feed-spawner")
            threading.Thread(target=self._reap_forever, daemon=True, name="feed-reaper").start()
        return self._spawner

    def join(self, camera_id: str, source: str, name: str, viewer: Viewer) -> None:
        """Add a viewer to the camera's feed, starting it if none runs; never waits for it.

        The viewer gets the current GOP at once (from a keyframe), then every packet as it comes.
        """
        with self.lock:
            if self._stop.is_set():
                return
            feed = self.feeds.get(camera_id)
            if feed is None:
                feed = self.feeds[camera_id] = Feed(camera_id, source, name)
                threading.Thread(
                    target=self._run, args=(feed,), daemon=True, name=f"feed-{camera_id}"
                ).start()
            feed.viewers.add(viewer)
            feed.idle_since = None
            backlog = list(feed.gop)
        for packet in backlog:
            viewer.deliver("video", packet)

    def leave(self, camera_id: str, viewer: Viewer) -> None:
        """Remove a viewer; the feed stops `grace` seconds after its last one left."""
        with self.lock:
            feed = self.feeds.get(camera_id)
            if feed is not None and viewer in feed.viewers:
                feed.viewers.discard(viewer)
                if not feed.viewers:
                    feed.idle_since = time.monotonic()

    def running(self, camera_id: str) -> Feed | None:
        """The camera's feed, if one runs or starts (tests and operators look at it)."""
        with self.lock:
            return self.feeds.get(camera_id)

    def _run(self, feed: Feed) -> None:
        """The feed's thread: check the source, pull it, start again while viewers remain."""
        while not feed.stopped.is_set():
            encoding = feed.encode
            try:
                self._pull(feed)
            except (SourceRefused, AddressRefused) as exc:
                # The reason names the rule, never the address.
                log.warning("feed for camera %s refused its source: %s", feed.camera_id, exc)
            except Exception:
                log.exception("feed for camera %s failed", feed.camera_id)
            finally:
                self._end_process(feed)
            if feed.encode != encoding:
                continue  # found to need encoding: again at once
            if feed.stopped.wait(RESTART_AFTER):
                break
            with self.lock:
                if not feed.viewers:
                    break
        with self.lock:
            if self.feeds.get(feed.camera_id) is feed:
                del self.feeds[feed.camera_id]
        feed.stopped.set()

    def _pull(self, feed: Feed) -> None:
        if not self.ffmpeg:
            raise RuntimeError("no ffmpeg available")
        source = guarded_source(self.addresses, feed.source)  # talks to the camera: up to 2 s
        with self.lock:
            if feed.stopped.is_set():
                return
            feed.gop = []
            feed.offset = None
            spawner = self._spawner_started()
        process = spawner.spawn(
            feed_command(self.ffmpeg, source, feed.name, feed.encode), stdout=subprocess.PIPE
        )
        with self.lock:
            feed.process = process
            feed.starts += 1
            if feed.stopped.is_set():
                return
        threading.Thread(
            target=self._log_stderr, args=(feed.camera_id, process), daemon=True, name="feed-log"
        ).start()
        log.info("feed started for camera %s (pid %s)", feed.camera_id, process.pid)
        assert process.stdout is not None
        # Small probe: the PMT names the streams at once; nothing is decoded here.
        options = {"probesize": "32768", "analyzeduration": "0"}
        with av.open(process.stdout, format="mpegts", options=options) as container:
            codecs = {stream.codec_context.name for stream in container.streams.video}
            if codecs and "h264" not in codecs and not feed.encode:
                log.warning("camera %s sends %s, not H.264: encoding it", feed.camera_id, *codecs)
                feed.encode = True
                return
            for packet in container.demux():
                if feed.stopped.is_set():
                    return
                if packet.size == 0 or packet.pts is None:
                    continue
                kind = packet.stream.type
                if kind not in ("video", "audio"):
                    continue
                self._shift(feed, packet)
                with self.lock:
                    if kind == "video":
                        if packet.is_keyframe:
                            feed.gop = [packet]
                        elif feed.gop:
                            feed.gop.append(packet)
                            del feed.gop[:-MAX_GOP]
                    viewers = list(feed.viewers)
                for viewer in viewers:
                    viewer.deliver(kind, packet)
        log.warning("feed for camera %s ended (ffmpeg exited)", feed.camera_id)

    @staticmethod
    def _shift(feed: Feed, packet: av.Packet) -> None:
        """Continue the feed's timeline: this pull's first packet comes a frame after the last
        one of the previous pull (both kinds shifted alike, so they stay in sync)."""
        assert packet.pts is not None and packet.time_base is not None
        ticks = int(1 / packet.time_base)  # per second (MPEG-TS: 90 kHz)
        if feed.offset is None:
            feed.offset = feed.last_pts + ticks // 15 - packet.pts if feed.starts > 1 else 0
        packet.pts += feed.offset
        if packet.dts is not None:
            packet.dts += feed.offset
        feed.last_pts = max(feed.last_pts, packet.pts)

    def _end_process(self, feed: Feed) -> None:
        with self.lock:
            process, feed.process = feed.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process is not None and process.stdout is not None:
            process.stdout.close()

    def _log_stderr(self, camera_id: str, process: subprocess.Popen[bytes]) -> None:
        assert process.stderr is not None
        for raw in process.stderr:
            log.warning("ffmpeg[%s]: %s", camera_id, redact(raw.decode(errors="replace").rstrip()))

    def stop(self, camera_id: str) -> None:
        """Stop a camera's feed now; its viewers get nothing more."""
        with self.lock:
            feed = self.feeds.pop(camera_id, None)
        if feed is not None:
            self._halt(feed)

    def _halt(self, feed: Feed) -> None:
        """Stop the feed's thread: ffmpeg terminated, so the demuxer sees the pipe end."""
        feed.stopped.set()
        with self.lock:
            process = feed.process
        if process is not None and process.poll() is None:
            process.terminate()

    def reap(self) -> None:
        """Stop feeds whose last viewer left more than `grace` seconds ago."""
        now = time.monotonic()
        with self.lock:
            idle = [
                feed
                for feed in self.feeds.values()
                if feed.idle_since is not None and now - feed.idle_since > self.grace
            ]
            for feed in idle:
                del self.feeds[feed.camera_id]
        for feed in idle:
            log.info("feed for camera %s stopped: no viewers", feed.camera_id)
            self._halt(feed)

    def _reap_forever(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.reap()
            except Exception:
                log.exception("feed reaper failed")

    def shutdown(self) -> None:
        with self.lock:
            self._stop.set()
            feeds = list(self.feeds.values())
            self.feeds.clear()
        for feed in feeds:
            self._halt(feed)
