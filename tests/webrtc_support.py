"""A display playing a camera over WebRTC, for tests: aiortc as the client, as Echo Show or Nest
Hub would be.

Usage (the test is synchronous; the client runs its own asyncio loop in a thread):

    def answer(offer_sdp: str) -> str:        # however the test reaches camvoice:
        return engine.answer(token, camera.id, offer_sdp).sdp   # the engine, or HTTP signaling

    with Watcher(answer) as display:          # offers recvonly video + audio, sets the answer
        assert display.wait_frames(3)         # 3 video frames DECODED (av.VideoFrame) within 20 s
        ...
        assert display.wait_ended()           # the peer connection closed/failed, or the video
                                              # track ended (camvoice ended the session)

`make_offer()` is just an offer (for refusal tests). `Watcher(answer, alexa=True)` sends the offer in Alexa's shape (`alexa_shape`). `display.answer`
is the answer SDP; `display.error` what `answer` raised (Watcher.start re-raises it);
`display.frames`, `display.audio_frames` count decoded frames; `display.state` is the client's
connectionState. `Watcher(answer, connect=False)` offers without candidates (and no
end-of-candidates) and never applies the answer: ICE never starts, for idle-timeout tests.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable
from typing import Any

import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from tests.conftest import until


def alexa_shape(offer: str) -> str:
    """An aiortc offer rewritten the way Alexa's look: `s=a 2 z`, the connection line at session
    level (none per m-line), payload types 0 and 8 on the audio m-line without rtpmap lines, and
    host candidates only."""
    lines = offer.replace("\r\n", "\n").strip().split("\n")
    host = next((line for line in lines if line.startswith("c=")), "c=IN IP4 0.0.0.0")
    out: list[str] = []
    kind = ""
    for line in lines:
        if line.startswith("s="):
            out.append("s=a 2 z")
            out.append(host)
            continue
        if line.startswith("c="):
            continue
        if line.startswith("m="):
            kind = line[2:].split(" ", 1)[0]
            if kind == "audio":
                head, formats = line.split(" ")[:3], line.split(" ")[3:]
                formats = [f for f in formats if f not in ("0", "8")] + ["0", "8"]
                line = " ".join(head + formats)
        if kind == "audio" and re.match(r"a=(rtpmap|fmtp):(0|8) ", line):
            continue
        if line.startswith("a=candidate:") and " typ host" not in line:
            continue
        out.append(line)
    return "\r\n".join(out) + "\r\n"


def without_opus(offer: str) -> str:
    """An offer whose audio is PCMU/PCMA only (camvoice answers that m-line rejected)."""
    lines = offer.replace("\r\n", "\n").strip().split("\n")
    out, kind, dropped = [], "", set()
    for line in lines:
        if line.startswith("m="):
            kind = line[2:].split(" ", 1)[0]
        if kind == "audio" and line.startswith("a=rtpmap:") and "PCM" not in line:
            dropped.add(line[9:].split(" ", 1)[0])
            continue
        fmtp = re.match(r"a=(?:fmtp|rtcp-fb):(\d+) ", line)
        if kind == "audio" and fmtp and fmtp[1] in dropped:
            continue
        out.append(line)
    result = []
    for line in out:
        if line.startswith("m=audio"):
            parts = line.split(" ")
            line = " ".join(parts[:3] + [f for f in parts[3:] if f not in dropped])
        result.append(line)
    return "\r\n".join(result) + "\r\n"


def make_offer(shape: Callable[[str], str] | None = None) -> str:
    """Just an offer as the display sends it (for refusal tests): recvonly video and audio."""

    async def offer() -> str:
        pc = RTCPeerConnection()
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        await pc.close()
        return (shape or (lambda text: text))(sdp)

    return asyncio.run(offer())


class Watcher:
    """A display playing one WebRTC session (see the module docstring)."""

    def __init__(
        self,
        answer: Callable[[str], str],
        alexa: bool = False,
        shape: Callable[[str], str] | None = None,
        connect: bool = True,
        configuration: RTCConfiguration | None = None,
    ) -> None:
        self._answer = answer
        self._configuration = configuration  # ICE servers and policy (test_turn.py: relay)
        self._shape = shape or (alexa_shape if alexa else (lambda sdp: sdp))
        self._connect = connect
        self.answer: str | None = None
        self.offer: str | None = None
        self.error: BaseException | None = None
        self.frames = 0
        self.audio_frames = 0
        self.state = "new"
        self.track_ended = False
        self.frame_size: tuple[int, int] | None = None
        self.loop = asyncio.new_event_loop()
        self.pc: RTCPeerConnection | None = None
        self._tasks: list[asyncio.Future[None]] = []
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def start(self, timeout: float = 20) -> str:
        """Offer, get the answer, set it: the answer SDP. Re-raises what `answer` raised."""
        future = asyncio.run_coroutine_threadsafe(self._start(), self.loop)
        future.result(timeout)
        if self.error is not None:
            raise self.error
        assert self.answer is not None
        return self.answer

    async def _start(self) -> None:
        pc = self.pc = RTCPeerConnection(self._configuration)
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")

        @pc.on("track")
        def _track(track: MediaStreamTrack) -> None:
            self._tasks.append(asyncio.ensure_future(self._consume(track)))

        @pc.on("connectionstatechange")
        def _state() -> None:
            self.state = pc.connectionState

        await pc.setLocalDescription(await pc.createOffer())
        self.offer = self._shape(pc.localDescription.sdp)
        if not self._connect:  # no candidate, none to come: camvoice has nobody to check
            self.offer = "\r\n".join(
                line
                for line in self.offer.split("\r\n")
                if not line.startswith(("a=candidate:", "a=end-of-candidates"))
            )
        try:
            self.answer = await self.loop.run_in_executor(None, self._answer, self.offer)
        except BaseException as exc:  # handed to the test thread
            self.error = exc
            return
        if self._connect:  # else the answer is not applied: this side never checks either
            await pc.setRemoteDescription(RTCSessionDescription(sdp=self.answer, type="answer"))

    async def _consume(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                if isinstance(frame, av.VideoFrame):
                    self.frames += 1
                    self.frame_size = (frame.width, frame.height)
                else:
                    self.audio_frames += 1
        except MediaStreamError:
            if track.kind == "video":
                self.track_ended = True

    @property
    def ended(self) -> bool:
        return self.track_ended or self.state in ("closed", "failed")

    def wait_frames(self, count: int = 3, seconds: float = 20) -> bool:
        """Whether `count` more video frames were decoded within `seconds`."""
        target = self.frames + count
        return until(lambda: self.frames >= target, seconds)

    def wait_ended(self, seconds: float = 10) -> bool:
        """Whether the session ended (as the display sees it) within `seconds`."""
        return until(lambda: self.ended, seconds)

    def close(self) -> None:
        if self.pc is not None:
            asyncio.run_coroutine_threadsafe(self.pc.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    def __enter__(self) -> Watcher:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
