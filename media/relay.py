"""The HLS relay: one ffmpeg per camera, shared by every viewer and every web process.

Each camera gets a private folder under the media dir. Whichever process first holds the
folder's lock (flock) runs ffmpeg for it; the others only serve the files. Every fetch touches a
marker file, so the owner sees viewers of all processes, stops an idle relay, and releases the
lock when ffmpeg dies so the next fetch (in any process) starts a new one. ffmpeg is started with
PR_SET_PDEATHSIG, so it cannot outlive its owner: no orphans, no zombies. Given a `watch`, the
owner also asks every few seconds whether each camera may still be relayed at all, and stops the
relay of one that may not (Image Encryption on, asleep, offline, removed) without waiting for its
viewers' fetches (refused from then on) to run out.

A camera that hangs must not hold the web threads: a relay starts (the source's pre-flight
check, which talks to the camera, and ffmpeg) in a start pool, never in a request, one start per
camera shared by every fetch; a fetch never waits long for it (one fetch per process waits up to
`start_wait` for the first segment, every other one is told at once to retry); a start that fails
is answered as failed, without a new attempt, for `RETRY_AFTER_FAILURE` seconds; and one owner's
cameras, starting or running, take at most `max_per_owner` of the relays.
"""

from __future__ import annotations

import atexit
import ctypes
import fcntl
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from camvoice.addresses import AddressPolicy, AddressRefused
from camvoice.metrics import Metrics
from camvoice.redact import redact  # ffmpeg echoes its input URL, credentials included
from media.rtsp_check import SourceRefused, guarded_source

log = logging.getLogger(__name__)

PLAYLIST = "index.m3u8"
LOCK = "relay.lock"
LAST_FETCH = "last_fetch"
OWNER = "owner"  # the camera owner's account id, so every process can count an owner's relays
START_TIMEOUT = 15.0  # a relay with no segment by then is stopped as failed
RETRY_AFTER_FAILURE = 5.0  # a failed start is not tried again for this long (per process)
SEGMENT = re.compile(r"^seg_\d{5,}\.ts$")
FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
)


class RelayBusy(Exception):
    """Too many relays already run; the caller answers 503 with Retry-After."""


class RelayFailed(Exception):
    """ffmpeg exited before producing a playable segment."""


class RelayStarting(Exception):
    """The relay runs but has no segment yet; the caller answers 503 with Retry-After."""


def find_ffmpeg(configured: str | None = None) -> str | None:
    """The configured ffmpeg, the one the imageio-ffmpeg wheel ships, or a system ffmpeg."""
    if configured:
        return configured
    try:
        import imageio_ffmpeg

        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except (ImportError, RuntimeError):
        return shutil.which("ffmpeg")


def _font() -> str | None:
    return next((f for f in FONT_CANDIDATES if Path(f).exists()), None)


def _drawtext_escape(text: str) -> str:
    return re.sub(r"[\\':%,\[\];=]", " ", text)[:60]


def demo_input(name: str) -> list[str]:
    """A synthetic camera: moving test pattern, the camera's name, a running clock, a tone."""
    video = "testsrc2=size=640x360:rate=15"
    font = _font()
    if font:
        label = _drawtext_escape(name)
        video += (
            f",drawtext=fontfile={font}:text='{label}':x=16:y=16:fontsize=28:fontcolor=white"
            ":box=1:boxcolor=black@0.5,"
            f"drawtext=fontfile={font}:text='%{{localtime\\:%H\\\\\\:%M\\\\\\:%S}}'"
            ":x=16:y=h-48:fontsize=28:fontcolor=white:box=1:boxcolor=black@0.5"
        )
    return [
        "-re", "-f", "lavfi", "-i", video,
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
    ]  # fmt: skip


def source_args(source: str, name: str) -> tuple[list[str], list[str]]:
    """(input args, video codec args) for a camera's source."""
    if source == "demo":
        encode = [
            "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency",
            "-profile:v", "main", "-pix_fmt", "yuv420p",
            "-g", "15", "-keyint_min", "15", "-sc_threshold", "0", "-b:v", "800k",
        ]  # fmt: skip
        return demo_input(name), encode
    # A real camera: pull over TCP, copy H.264 as it comes (no re-encoding).
    return ["-rtsp_transport", "tcp", "-timeout", "5000000", "-i", source], ["-c:v", "copy"]


def hls_command(ffmpeg: str, source: str, name: str, folder: Path) -> list[str]:
    inputs, video = source_args(source, name)
    return [
        ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "warning", *inputs,
        "-map", "0:v:0", "-map", "1:a:0?" if source == "demo" else "0:a:0?",
        *video, "-c:a", "aac", "-b:a", "96k", "-ar", "44100",
        "-f", "hls", "-hls_time", "1", "-hls_list_size", "6",
        "-hls_flags", "delete_segments+independent_segments+temp_file",
        "-hls_segment_filename", str(folder / "seg_%05d.ts"), str(folder / PLAYLIST),
    ]  # fmt: skip


def die_with_parent() -> None:
    """In the child: get SIGTERM when the process that started us dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Spawner:
    """Starts child processes from one long-lived thread, each with PR_SET_PDEATHSIG.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child ends; request threads and
    start pools come and go, so ffmpeg must be forked by a thread that lives as long as its
    manager.
    """

    def __init__(self, name: str) -> None:
        self._spawns: queue.Queue[tuple[list[str], int, Future[subprocess.Popen[bytes]]]] = (
            queue.Queue()
        )
        threading.Thread(target=self._spawn_forever, daemon=True, name=name).start()

    def spawn(
        self, command: list[str], stdout: int = subprocess.DEVNULL
    ) -> subprocess.Popen[bytes]:
        """The started process: stdin closed, stderr a pipe, stdout as asked."""
        done: Future[subprocess.Popen[bytes]] = Future()
        self._spawns.put((command, stdout, done))
        return done.result(timeout=10)

    def _spawn_forever(self) -> None:
        while True:
            command, stdout, done = self._spawns.get()
            try:
                done.set_result(
                    subprocess.Popen(
                        command,
                        stdin=subprocess.DEVNULL,
                        stdout=stdout,
                        stderr=subprocess.PIPE,
                        preexec_fn=die_with_parent,  # prctl must run in the child
                    )
                )
            except Exception as exc:
                done.set_exception(exc)


@dataclass
class Starting:
    """A start under way in the start pool; every fetch of the camera shares it."""

    owner: str
    done: threading.Event = field(default_factory=threading.Event)
    failure: str | None = None  # why it failed, once done


@dataclass
class Failed:
    """A start that failed recently: fetches are told so until `until` (monotonic)."""

    reason: str
    until: float


@dataclass
class Running:
    camera_id: str
    folder: Path
    lock: IO[bytes]
    process: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)
    ready: bool = False  # has listed a segment


def has_segment(folder: Path) -> bool:
    """True once the folder's playlist lists a segment (a player can start)."""
    try:
        return "#EXTINF" in (folder / PLAYLIST).read_text()
    except FileNotFoundError:
        return False


class RelayManager:
    """Starts, shares, stops and restarts HLS relays for this process."""

    def __init__(
        self,
        base: Path,
        ffmpeg: str | None,
        idle_timeout: float,
        max_relays: int,
        max_per_owner: int | None = None,
        start_wait: float = 2.0,
        addresses: AddressPolicy | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.base = base
        self.metrics = metrics or Metrics()
        # Where camera sources may point; checked again at each start (DNS answers change).
        self.addresses = addresses or AddressPolicy()
        self.ffmpeg = ffmpeg
        self.idle_timeout = idle_timeout
        self.max_relays = max_relays
        # Unset: half the relays, so one owner's hung cameras cannot take every slot.
        self.max_per_owner = max_per_owner or max(1, max_relays // 2)
        self.start_wait = start_wait
        # Fetches waiting for a starting relay hold web threads: one per process at a time.
        self._waiter = threading.BoundedSemaphore(1)
        self.running: dict[str, Running] = {}
        self.starting: dict[str, Starting] = {}
        self.failed: dict[str, Failed] = {}
        # Relays being stopped: their folder still lists segments their cleanup is deleting.
        self.stopping: set[str] = set()
        self.retry_after_failure = RETRY_AFTER_FAILURE
        # Held only for bookkeeping, never across the camera's network I/O or ffmpeg's start.
        self.lock = threading.Lock()
        self.may_relay: Callable[[str], bool] | None = None
        self.recheck_interval = 3.0
        self._last_recheck = time.monotonic()
        self.base.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.base, 0o700)
        self._stop = threading.Event()
        self._spawner = Spawner("relay-spawner")
        # Starts wait on cameras (up to the pre-flight's 2 s): off the request threads, and one
        # worker per relay slot, so a hung camera's start never queues a healthy camera's.
        self._starter = ThreadPoolExecutor(max_relays, thread_name_prefix="relay-start")
        threading.Thread(target=self._reap_forever, daemon=True, name="relay-reaper").start()
        atexit.register(self.shutdown)

    def watch(self, may_relay: Callable[[str], bool], interval: float) -> None:
        """Re-check each running relay's camera every `interval` seconds with `may_relay`.

        Fetches are refused as soon as a camera is blocked, but ffmpeg would keep pulling the
        camera until the idle timeout: this stops it within one interval instead.
        """
        self.recheck_interval = interval
        self.may_relay = may_relay

    def recheck(self) -> list[str]:
        """Stop the relays of cameras that may no longer be relayed; their ids."""
        if self.may_relay is None:
            return []
        with self.lock:
            cameras = list(self.running)
        stopped = [camera_id for camera_id in cameras if not self.may_relay(camera_id)]
        for camera_id in stopped:
            log.info("relay for camera %s stopped: the camera may no longer be shown", camera_id)
            self.stop(camera_id)
        return stopped

    def folder(self, camera_id: str) -> Path:
        return self.base / camera_id

    def touch(self, camera_id: str) -> None:
        """Record a fetch, visible to whichever process owns the relay."""
        marker = self.folder(camera_id) / LAST_FETCH
        marker.touch(exist_ok=True)

    def ensure(self, camera_id: str, source: str, name: str, owner: str) -> Path:
        """The camera's relay folder once it lists a segment; starts the relay if none runs.

        Every fetch shares the one start attempt per camera, which runs in the start pool. While
        the relay has no segment, one fetch per process waits for it up to `start_wait` seconds
        (a camera that starts quickly plays on the first fetch) and the others get RelayStarting
        at once: a camera that never answers holds no web thread for longer than that. A start
        that failed is RelayFailed at once until `retry_after_failure` has passed.
        """
        if not self.ffmpeg:
            raise RelayFailed("no ffmpeg available")
        folder = self.folder(camera_id)
        folder.mkdir(exist_ok=True, mode=0o700)
        self.touch(camera_id)
        with self.lock:
            if camera_id in self.stopping:
                # Serving its old playlist would name segments about to be deleted (404s):
                # the player comes back in a second and starts a new relay.
                raise RelayStarting(camera_id)
            self._release_if_killed(camera_id)
            run = self.running.get(camera_id)
            pending = self.starting.get(camera_id)
            if run is None and pending is None and not self._owned_elsewhere(folder):
                self._refuse_if_failed(camera_id)  # (another process's relay is served as is)
                if self._stop.is_set():
                    raise RelayFailed("the relay manager is shut down")
                self._admit(owner)
                pending = self.starting[camera_id] = Starting(owner)
                self._starter.submit(self._start, camera_id, source, name, folder, pending)
        if pending is None and has_segment(folder):
            return folder
        if run is not None and run.process.poll() is not None:
            # It never played: the reaper releases it within a second and remembers the failure,
            # so a camera that drops ffmpeg at once costs one start per `retry_after_failure`.
            raise RelayFailed(f"the relay of camera {camera_id} exited")
        if not self._waiter.acquire(blocking=False):
            raise RelayStarting(camera_id)
        try:
            return self._wait_for_segment(camera_id, folder, pending, self.start_wait)
        finally:
            self._waiter.release()

    def _refuse_if_failed(self, camera_id: str) -> None:
        """RelayFailed while the camera's last start failed recently. Holds self.lock."""
        failed = self.failed.get(camera_id)
        if failed is None:
            return
        if time.monotonic() < failed.until:
            raise RelayFailed(f"the relay of camera {camera_id} failed to start: {failed.reason}")
        del self.failed[camera_id]

    def _remember_failure(self, camera_id: str, reason: str) -> None:
        """Answer the camera's fetches as failed for a while. Holds self.lock."""
        self.failed[camera_id] = Failed(reason, time.monotonic() + self.retry_after_failure)
        self.metrics.relay_failures.labels(reason).inc()

    def _release_if_killed(self, camera_id: str) -> None:
        """Release a relay that was playing and whose ffmpeg has exited (killed, or the camera
        hung up), so this fetch starts a new one now, not after the reaper's next round.
        Holds self.lock."""
        run = self.running.get(camera_id)
        if run is None or run.process.poll() is None or not (run.ready or has_segment(run.folder)):
            return
        log.warning("relay for camera %s exited (%s)", camera_id, run.process.returncode)
        del self.running[camera_id]
        self._terminate(run)  # already dead: no wait, just its files and lock

    def _admit(self, owner: str) -> None:
        """Refuse a new relay beyond the cap, or beyond the owner's share of it. Holds self.lock."""
        owners = self.active_owners()
        if len(owners) >= self.max_relays or owners.count(owner) >= self.max_per_owner:
            raise RelayBusy

    def _owned_elsewhere(self, folder: Path) -> bool:
        """True if another process holds this folder's lock (so its ffmpeg runs)."""
        path = folder / LOCK
        if not path.exists():
            return False
        with path.open("rb") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
        return False

    def active_owners(self) -> list[str]:
        """The owner of each relay starting here or running in any process (held locks)."""
        owners = [pending.owner for pending in self.starting.values()]
        for folder in self.base.iterdir():
            if folder.name in self.starting:
                continue  # counted above (its lock, taken by the start, is this process's)
            if folder.name in self.running or (folder.is_dir() and self._owned_elsewhere(folder)):
                try:
                    owners.append((folder / OWNER).read_text())
                except FileNotFoundError:
                    owners.append("")  # its owner file is about to be written
        return owners

    def _start(
        self, camera_id: str, source: str, name: str, folder: Path, pending: Starting
    ) -> None:
        """In the start pool: start the relay, then record how it went for every fetch.

        Only the outcome is recorded under self.lock; the camera is asked without it. A start
        cancelled meanwhile (stop, shutdown) has its ffmpeg stopped at once.
        """
        run, failure = None, None
        try:
            run = self._launch(camera_id, source, name, folder, pending.owner)
        except (SourceRefused, AddressRefused) as exc:
            # The reason names the rule, never the address; the player is told only "failed".
            log.warning("relay for camera %s refused its source: %s", camera_id, exc)
            failure = "its source is refused"
        except Exception:
            log.exception("relay for camera %s could not start", camera_id)
            failure = "it could not start"
        with self.lock:
            current = self.starting.get(camera_id) is pending and not self._stop.is_set()
            if current:
                del self.starting[camera_id]
                if run is not None:
                    self.running[camera_id] = run
                elif failure is not None:
                    self._remember_failure(camera_id, failure)
        pending.failure = failure
        pending.done.set()
        if run is not None and not current:
            self._terminate(run)

    def _launch(
        self, camera_id: str, source: str, name: str, folder: Path, owner: str
    ) -> Running | None:
        """Lock the folder, check the source and start ffmpeg in it; None if another process
        won the lock. Raises SourceRefused (the lock is released again)."""
        lock = (folder / LOCK).open("wb")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            return None  # another process won the race; it runs the relay
        try:
            for stale in folder.iterdir():
                if stale.name not in (LOCK, LAST_FETCH):
                    stale.unlink(missing_ok=True)
            (folder / OWNER).write_text(owner)  # other processes count it while it is checked
            (folder / LAST_FETCH).touch()  # this fetch counts, even after a dead relay's cleanup
            source = guarded_source(self.addresses, source)
            process = self._spawner.spawn(
                hls_command(self.ffmpeg or "ffmpeg", source, name, folder)
            )
        except BaseException:
            (folder / OWNER).unlink(missing_ok=True)
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()
            raise
        threading.Thread(
            target=self._log_stderr, args=(camera_id, process), daemon=True, name="relay-log"
        ).start()
        log.info("relay started for camera %s (pid %s)", camera_id, process.pid)
        self.metrics.relays.inc()
        return Running(camera_id, folder, lock, process)

    def _log_stderr(self, camera_id: str, process: subprocess.Popen[bytes]) -> None:
        assert process.stderr is not None
        for raw in process.stderr:
            log.warning("ffmpeg[%s]: %s", camera_id, redact(raw.decode(errors="replace").rstrip()))

    def _wait_for_segment(
        self, camera_id: str, folder: Path, pending: Starting | None, wait: float
    ) -> Path:
        """The folder once it lists a segment, within `wait` seconds: the start under way
        first (RelayFailed if it failed), then ffmpeg's first segment."""
        deadline = time.monotonic() + wait
        if pending is not None:
            if not pending.done.wait(max(0.0, deadline - time.monotonic())):
                raise RelayStarting(camera_id)
            if pending.failure is not None:
                raise RelayFailed(f"the relay of camera {camera_id} did not start")
        while time.monotonic() < deadline:
            if has_segment(folder):
                return folder
            run = self.running.get(camera_id)
            if run is not None and run.process.poll() is not None:
                raise RelayFailed(f"the relay of camera {camera_id} exited")
            time.sleep(0.1)
        raise RelayStarting(camera_id)

    def stop(self, camera_id: str) -> None:
        with self.lock:
            self.starting.pop(camera_id, None)  # a start under way stops its ffmpeg when done
            run = self.running.pop(camera_id, None)
            if run is not None:
                self.stopping.add(camera_id)
        if run is not None:
            self._retire([run])

    def _retire(self, runs: list[Running]) -> None:
        """Stop relays taken off `running` and marked `stopping` (under the lock) by the caller:
        until their files are gone, fetches are told to retry rather than served them."""
        for run in runs:
            try:
                self._terminate(run)
            finally:
                with self.lock:
                    self.stopping.discard(run.camera_id)

    def _terminate(self, run: Running) -> None:
        if run.process.poll() is None:
            run.process.terminate()
            try:
                run.process.wait(5)
            except subprocess.TimeoutExpired:
                run.process.kill()
                run.process.wait()
        for item in run.folder.iterdir():
            if item.name != LOCK:
                item.unlink(missing_ok=True)
        fcntl.flock(run.lock, fcntl.LOCK_UN)
        run.lock.close()
        log.info("relay stopped for camera %s", run.camera_id)
        self.metrics.relays.dec()

    def reap(self) -> None:
        """Stop idle relays and ones that never started; release dead ones so the next fetch
        restarts them. ffmpeg is stopped outside the lock: fetches never wait on it."""
        now = time.time()
        done = []
        with self.lock:
            for camera_id, run in list(self.running.items()):
                try:
                    idle = now - (run.folder / LAST_FETCH).stat().st_mtime
                except FileNotFoundError:
                    idle = self.idle_timeout + 1
                run.ready = run.ready or has_segment(run.folder)
                stuck = not run.ready and time.monotonic() - run.started > START_TIMEOUT
                dead = run.process.poll() is not None
                if dead or stuck or idle > self.idle_timeout:
                    if dead:
                        log.warning(
                            "relay for camera %s exited (%s)", camera_id, run.process.returncode
                        )
                    elif stuck:
                        log.warning("relay for camera %s gave no segment: stopped", camera_id)
                    if (dead or stuck) and not run.ready:
                        self._remember_failure(camera_id, "the camera gave no stream")
                    done.append(self.running.pop(camera_id))
                    self.stopping.add(camera_id)
        self._retire(done)

    def _reap_forever(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.reap()
                if time.monotonic() - self._last_recheck >= self.recheck_interval:
                    self._last_recheck = time.monotonic()
                    self.recheck()
            except Exception:
                log.exception("relay reaper failed")

    def shutdown(self) -> None:
        with self.lock:  # so no fetch submits a start between the two
            self._stop.set()
            self._starter.shutdown(wait=False, cancel_futures=True)
            runs = list(self.running.values())
            self.running.clear()
            self.starting.clear()  # starts under way stop their ffmpeg when done
        for run in runs:
            self._terminate(run)
