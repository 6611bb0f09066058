"""WebRTC live sessions as the adapters see them: what they may ask, and how it can fail.

The engine that answers offers lives in media/ (aiortc); the composition root puts one on the
Services object (`services.webrtc`). Alexa's RTCSessionController handlers, Google's signaling
URL and the console all speak to it through this interface, so none of them imports media/.

Every offer comes with a stream ticket of protocol `webrtc` (camvoice/tickets.py), minted by
`Streams.open` after the readiness rules passed: the engine admits the ticket again (signature,
camera, link or sign-in session, readiness), keeps re-checking it while the session runs, and
ends the session within 10 s once it no longer would be admitted.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass


class WebRTCError(Exception):
    """A session could not be set up or found; `reason` is safe to log and to show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OfferRefused(WebRTCError):
    """The SDP offer cannot be served (unparseable, no H.264 video, no BUNDLE/rtcp-mux...)."""


class TicketRefused(WebRTCError):
    """The ticket is not admitted; `reason` is the core's TicketError reason."""


class MediaBusy(WebRTCError):
    """Too many live sessions now; the caller answers its protocol's 'try again later'."""


class MediaUnavailable(WebRTCError):
    """No engine is wired in this process, or the camera's source cannot be read."""


@dataclass(frozen=True)
class Answer:
    """A complete (non-trickle) SDP answer and the session it belongs to."""

    session_id: str
    sdp: str


class WebRTC(typing.Protocol):
    """What an adapter may ask of the WebRTC engine."""

    def answer(
        self, token: str, camera_id: str, offer_sdp: str, session_id: str | None = None
    ) -> Answer:
        """Admit the ticket, start (or join) the camera's feed, answer the offer.

        `session_id` is the caller's own (Alexa's sessionId); a new one is made when None.
        Raises TicketRefused, OfferRefused, MediaBusy or MediaUnavailable.
        """
        ...

    def connected(self, session_id: str, camera_id: str) -> bool:
        """The assistant says the peer connected; False when no such session of that camera."""
        ...

    def end(self, session_id: str, camera_id: str, reason: str) -> bool:
        """Tear a session of that camera down; False when there was none."""
        ...


class NoWebRTC:
    """The engine until one is wired in (CLI, worker): every offer is refused, fail closed."""

    def answer(
        self, token: str, camera_id: str, offer_sdp: str, session_id: str | None = None
    ) -> Answer:
        raise MediaUnavailable("no WebRTC engine in this process")

    def connected(self, session_id: str, camera_id: str) -> bool:
        return False

    def end(self, session_id: str, camera_id: str, reason: str) -> bool:
        return False
