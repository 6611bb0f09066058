"""The WebRTC engine of a web process: aiortc peer connections fed by shared camera feeds.

Why aiortc rather than GStreamer's webrtcbin: it is a pip dependency (no system packages, like
the HLS relay's ffmpeg wheel), runs in-process in plain asyncio so a Flask request can hand it an
offer and wait for the answer, gathers every ICE candidate inside setLocalDescription (the
complete, non-trickle answer Alexa and Google want), and accepts already-encoded packets from a
track (RTCRtpSender packs an av.Packet without re-encoding), so a camera's H.264 reaches the
display as the camera made it. The test client is aiortc too. Its limits: no ICE-TCP (TURN over
TCP/TLS covers networks without UDP), ephemeral UDP ports, H.264 offered only as constrained
baseline (42e01f/42001f; a camera's main/high profile stream is passed through as it is).

One asyncio loop runs in a daemon thread. `answer` (a request thread) admits the ticket in the
database, prepares the offer (media/sdp_offer.py), then runs the negotiation on the loop with a
deadline, and answers at once: it never waits for the camera. The camera's feed (media/feeds.py)
is joined after the answer and its packets flow into the session's tracks when they come.

A session ends on `end`, when its peer connection fails or closes, when it has not connected
within `webrtc_idle_timeout`, after `stream_max_view`, and when the periodic re-check (every
`stream_recheck_interval`, at most 5 s) finds its ticket would no longer be admitted: Image
Encryption on, the camera asleep, offline or removed, the link revoked, the owner signed out.
SDP and tickets are never logged (an SDP holds the ICE password).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Coroutine
from concurrent.futures import CancelledError as FutureCancelled
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, TypeVar

import av
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from camvoice import audit
from camvoice.cameras import Registry
from camvoice.db import Database
from camvoice.metrics import Metrics
from camvoice.models import Camera
from camvoice.sealing import Unsealable
from camvoice.settings import Settings
from camvoice.streams import Streams, record_denial
from camvoice.tickets import Protocol, Ticket, TicketError
from camvoice.webrtc import Answer, MediaBusy, MediaUnavailable, OfferRefused, TicketRefused
from media import sdp_offer
from media.feeds import Feeds

log = logging.getLogger(__name__)

T = TypeVar("T")
# aiortc logs every SDP at DEBUG (ICE passwords in them); aioice every check at INFO.
QUIET_LOGGERS = {"aiortc": logging.INFO, "aioice": logging.WARNING}
ANSWER_DEADLINE = (
    6.0  # negotiation; an unreachable STUN/TURN server costs aioice 5 s; Alexa waits 8
)
QUEUE_LIMIT = 600  # packets waiting for a slow peer before its video restarts at a keyframe
AUDIO_KEPT = 5  # audio packets (20 ms each) kept for a peer that has just connected
SESSION_ID_MAX = 128


class PacketTrack(MediaStreamTrack):
    """A track whose recv() gives the feed's encoded packets (aiortc packs them as they are).

    Packets wait here until the peer has connected and aiortc asks; then the wait is cut to
    the newest keyframe (video) or the last few packets (audio), so a slow ICE or DTLS setup
    does not become lasting latency. A peer that cannot keep up loses what waits and resumes at
    the next keyframe.
    """

    def __init__(self, kind: str, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.kind = kind
        self._loop = loop
        self._packets: deque[av.Packet] = deque()
        self._arrived = asyncio.Event()
        self._want_keyframe = False
        self._sending = False

    def offer(self, packet: av.Packet) -> None:
        """From the feed's thread: hand the packet into the loop."""
        self._loop.call_soon_threadsafe(self._put, packet)

    def _put(self, packet: av.Packet) -> None:
        if self.readyState != "live":
            return
        if len(self._packets) >= QUEUE_LIMIT:
            self._packets.clear()
            self._want_keyframe = self.kind == "video"
        if self._want_keyframe:
            if not packet.is_keyframe:
                return
            self._want_keyframe = False
        self._packets.append(packet)
        self._arrived.set()

    def wake(self) -> None:
        """On the loop, once stopped: a recv() waiting for a packet raises instead."""
        self._arrived.set()

    def _catch_up(self) -> None:
        """Drop what waited before the peer could take it, keeping a decodable start."""
        if self.kind == "video":
            keyframes = [i for i, p in enumerate(self._packets) if p.is_keyframe]
            for _ in range(keyframes[-1] if keyframes else 0):
                self._packets.popleft()
        else:
            while len(self._packets) > AUDIO_KEPT:
                self._packets.popleft()

    async def recv(self) -> av.Packet:  # type: ignore[override]
        if not self._sending:
            self._sending = True
            self._catch_up()
        while not self._packets:
            if self.readyState != "live":
                raise MediaStreamError
            self._arrived.clear()
            await self._arrived.wait()
        return self._packets.popleft()


class SessionViewer:
    """A session's end of the camera feed: video and audio packets into its two tracks."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.video = PacketTrack("video", loop)
        self.audio = PacketTrack("audio", loop)

    def deliver(self, kind: str, packet: av.Packet) -> None:
        (self.video if kind == "video" else self.audio).offer(packet)


@dataclass
class Session:
    id: str
    camera_id: str
    ticket: Ticket
    viewer: SessionViewer
    pc: RTCPeerConnection | None = None  # made on the loop (aiortc binds the running loop)
    created: float = field(default_factory=time.monotonic)
    connected_at: float | None = None
    ended: bool = False


def ice_servers(settings: Settings) -> list[RTCIceServer]:
    return [
        RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
        for s in settings.ice_server_list()
    ]


class WebRTCEngine:
    """camvoice.webrtc.WebRTC for this process (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        streams: Streams,
        registry: Registry,
        feeds: Feeds,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.settings = settings
        self.db = db
        self.streams = streams
        self.registry = registry
        self.feeds = feeds
        self.max_sessions = settings.max_webrtc_sessions
        self.idle_timeout = settings.webrtc_idle_timeout
        self.recheck_interval = settings.stream_recheck_interval
        self.sessions: dict[str, Session] = {}
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self.loop = asyncio.new_event_loop()
        self._started = False  # the loop's threads start with the first offer: most apps get none
        for name, floor in QUIET_LOGGERS.items():  # whatever the root logger's level
            logging.getLogger(name).setLevel(max(logging.getLogger(name).level, floor))

    def _start(self) -> None:
        with self.lock:
            if self._started:
                return
            self._started = True
        threading.Thread(target=self.loop.run_forever, daemon=True, name="webrtc-loop").start()
        threading.Thread(target=self._watch_forever, daemon=True, name="webrtc-watch").start()
        atexit.register(self.shutdown)

    # -- the adapters' interface ------------------------------------------------------------

    def answer(
        self, token: str, camera_id: str, offer_sdp: str, session_id: str | None = None
    ) -> Answer:
        if self._stop.is_set():
            raise MediaUnavailable("the WebRTC engine is shut down")
        if not isinstance(offer_sdp, str) or not isinstance(token, str):
            raise OfferRefused("the offer must be SDP text")
        if session_id is not None and not (0 < len(session_id) <= SESSION_ID_MAX):
            raise OfferRefused("bad session id")
        prepared = sdp_offer.prepare(offer_sdp)
        self._start()
        camera, ticket = self._admit(token, camera_id)
        source = self._source(camera)
        session_id = session_id or secrets.token_urlsafe(16)
        with self.lock:
            old = self.sessions.get(session_id)
            if old is None and len(self.sessions) >= self.max_sessions:
                raise MediaBusy("too many live WebRTC sessions")
        if old is not None and (old.camera_id, old.ticket.account_id) != (
            camera.id,
            ticket.account_id,
        ):
            raise OfferRefused("the session id is in use")
        if old is not None:  # the same caller negotiating again: the new offer replaces it
            self._end(old, "renegotiated")
        session = Session(session_id, camera.id, ticket, SessionViewer(self.loop))
        with self.lock:
            if len(self.sessions) >= self.max_sessions:
                raise MediaBusy("too many live WebRTC sessions")
            self.sessions[session_id] = session
        self.metrics.webrtc_sessions.inc()
        try:
            sdp = self._run(self._negotiate(session, prepared), ANSWER_DEADLINE)
        except FutureTimeout:
            self._end(session, "answer_timeout", started=False)
            raise MediaUnavailable("the answer took too long") from None
        except Exception as exc:  # aiortc's parser and negotiation raise many kinds
            self._end(session, "offer_refused", started=False)
            log.info("offer for camera %s refused: %s", camera.id, type(exc).__name__)
            raise OfferRefused("the offer cannot be answered") from None
        self.feeds.join(camera.id, source, camera.name, session.viewer)
        with self.db.session() as db_session:
            self.streams.record_view(db_session, ticket, camera)
        log.info("webrtc session %s started for camera %s", _short(session_id), camera.id)
        return Answer(session_id, sdp_offer.complete(sdp, prepared))

    def connected(self, session_id: str, camera_id: str) -> bool:
        with self.lock:
            session = self.sessions.get(session_id)
        return session is not None and session.camera_id == camera_id

    def end(self, session_id: str, camera_id: str, reason: str) -> bool:
        with self.lock:
            session = self.sessions.get(session_id)
        if session is None or session.camera_id != camera_id:
            return False
        self._end(session, reason[:64])
        return True

    # -- admission --------------------------------------------------------------------------

    def _admit(self, token: str, camera_id: str) -> tuple[Camera, Ticket]:
        """The ticket verified and admitted (TicketRefused otherwise), with its camera."""
        try:
            ticket = self.settings.signer().verify(token, camera_id, Protocol.WEBRTC)
            if ticket.expired:
                raise TicketError("expired")
            with self.db.session() as session:
                return self.streams.recheck(session, ticket), ticket
        except TicketError as exc:
            with self.db.session() as session:
                record_denial(session, camera_id, exc.reason, Protocol.WEBRTC)
            self.metrics.stream_denied("media", Protocol.WEBRTC.value, exc.reason)
            raise TicketRefused(exc.reason) from None

    def _source(self, camera: Camera) -> str:
        try:
            source = self.registry.source_url(camera)
        except Unsealable as exc:
            log.warning("%s; its owner must set the source again", exc)
            source = None
        if not source:
            raise MediaUnavailable("the camera's source cannot be read")
        return source

    # -- the loop ---------------------------------------------------------------------------

    def _run(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise

    async def _negotiate(self, session: Session, offer: sdp_offer.Prepared) -> str:
        """Answer on the loop: a sendonly transceiver per kind served (aiortc cannot answer
        with one the offer has no m-line for), codecs narrowed to what the feed carries."""
        pc = session.pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers(self.settings)))

        @pc.on("connectionstatechange")
        def _state() -> None:
            if pc.connectionState == "connected" and session.connected_at is None:
                session.connected_at = time.monotonic()
            elif pc.connectionState in ("failed", "closed"):
                self._end_soon(session, f"connection_{pc.connectionState}")

        video = pc.addTransceiver(session.viewer.video, direction="sendonly")
        video.setCodecPreferences(_codecs("video", ("video/H264", "video/rtx")))
        if "audio" in offer.kinds:
            audio = pc.addTransceiver(session.viewer.audio, direction="sendonly")
            audio.setCodecPreferences(_codecs("audio", ("audio/opus",)))
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())  # gathers every candidate
        return str(pc.localDescription.sdp)

    # -- ending -----------------------------------------------------------------------------

    def _end_soon(self, session: Session, reason: str) -> None:
        """From the loop: end off the loop (ending joins the loop, and leaves the feed)."""
        threading.Thread(target=self._end, args=(session, reason), daemon=True).start()

    def _end(self, session: Session, reason: str, started: bool = True) -> None:
        """Tear the session down; a started one (answered) is audited as ended, with why.
        Never on the loop's thread (it waits for the loop)."""
        with self.lock:
            if session.ended:
                return
            session.ended = True
            if self.sessions.get(session.id) is session:
                del self.sessions[session.id]
                self.metrics.webrtc_sessions.dec()
        self.feeds.leave(session.camera_id, session.viewer)
        if not self.loop.is_closed():
            try:
                self._run(self._close(session), 5.0)
            except (FutureTimeout, FutureCancelled, RuntimeError):  # cancelled: shutting down
                log.warning("webrtc session %s did not close in time", _short(session.id))
        log.info("webrtc session %s ended: %s", _short(session.id), reason)
        if started:
            try:
                self._audit_end(session, reason)
            except Exception:  # at exit the database may be gone: the session ends all the same
                log.exception("webrtc session %s: its end was not audited", _short(session.id))

    def _audit_end(self, session: Session, reason: str) -> None:
        ticket = session.ticket
        with self.db.session() as db_session:
            audit.record(db_session, "stream.ended", actor=ticket.audience.value,
                         account_id=ticket.account_id, camera_id=session.camera_id,
                         assistant=ticket.audience.value, protocol=Protocol.WEBRTC.value,
                         reason=reason)  # fmt: skip

    @staticmethod
    async def _close(session: Session) -> None:
        for track in (session.viewer.video, session.viewer.audio):
            track.stop()
            track.wake()
        if session.pc is not None:
            await session.pc.close()

    def _watch_forever(self) -> None:
        """Idle, too long and no longer admitted sessions end; every half second."""
        last_recheck = time.monotonic()
        while not self._stop.wait(0.5):
            try:
                now = time.monotonic()
                with self.lock:
                    sessions = list(self.sessions.values())
                for session in sessions:
                    if session.connected_at is None and now - session.created > self.idle_timeout:
                        self._end(session, "never_connected")
                    elif now - session.created > self.settings.stream_max_view:
                        self._end(session, "max_view")
                if now - last_recheck >= self.recheck_interval:
                    last_recheck = now
                    self.recheck()
            except Exception:
                log.exception("webrtc watch failed")

    def recheck(self) -> list[str]:
        """End the sessions whose tickets would no longer be admitted; their ids."""
        with self.lock:
            sessions = list(self.sessions.values())
        ended = []
        for session in sessions:
            try:
                with self.db.session() as db_session:
                    camera = self.streams.recheck(db_session, session.ticket)
                    self.streams.record_view(db_session, session.ticket, camera)
            except TicketError as exc:
                self._end(session, exc.reason)
                ended.append(session.id)
        return ended

    def shutdown(self) -> None:
        """End every session and feed, and the loop: at exit, or when a test is done with it."""
        if self._stop.is_set():
            return
        self._stop.set()
        with self.lock:
            sessions = list(self.sessions.values())
        for session in sessions:
            self._end(session, "shutdown")
        self.feeds.shutdown()
        if self._started:
            with contextlib.suppress(FutureTimeout, FutureCancelled, RuntimeError):
                self._run(_cancel_pending(), 5.0)
            self.loop.call_soon_threadsafe(self.loop.stop)


async def _cancel_pending() -> None:
    """What aiortc left running (connection attempts of peers that never connected)."""
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _codecs(kind: str, mime_types: tuple[str, ...]) -> list[Any]:
    capabilities = RTCRtpSender.getCapabilities(kind)
    return [c for c in capabilities.codecs if c.mimeType in mime_types]


def _short(session_id: str) -> str:
    """Enough of a session id to follow it in the log."""
    return session_id[:8]
