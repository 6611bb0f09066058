"""Alexa's error responses as exceptions: a handler raises one, `smarthome.handle` answers it.

Each class is one `type` of Alexa.ErrorResponse (or Alexa.Authorization.ErrorResponse), named
as in Amazon's reference; `payload()` is that error's payload, extra fields included.
"""

from __future__ import annotations

from typing import Any

from camvoice.readiness import BLOCKERS, Blocker, explain
from camvoice.webrtc import MediaBusy, OfferRefused, TicketRefused, WebRTCError


class AlexaError(Exception):
    namespace = "Alexa"
    error_type = "INTERNAL_ERROR"

    def payload(self) -> dict[str, Any]:
        return {"type": self.error_type, "message": str(self)}


class InvalidDirective(AlexaError):
    error_type = "INVALID_DIRECTIVE"


class InvalidValue(AlexaError):
    error_type = "INVALID_VALUE"


class NoSuchEndpoint(AlexaError):
    error_type = "NO_SUCH_ENDPOINT"


class EndpointUnreachable(AlexaError):
    error_type = "ENDPOINT_UNREACHABLE"


class EndpointBusy(AlexaError):
    """Busy with other work: Alexa may ask again later (too many live sessions now)."""

    error_type = "ENDPOINT_BUSY"


class InvalidCredential(AlexaError):
    """Makes Alexa drop the link: only for a token that really is not ours or is revoked."""

    error_type = "INVALID_AUTHORIZATION_CREDENTIAL"


class ExpiredCredential(AlexaError):
    error_type = "EXPIRED_AUTHORIZATION_CREDENTIAL"


class InternalError(AlexaError):
    error_type = "INTERNAL_ERROR"


class NotSupportedInCurrentMode(AlexaError):
    """Needs the device's mode: ASLEEP, NOT_PROVISIONED or OTHER (COLOR is for lights)."""

    error_type = "NOT_SUPPORTED_IN_CURRENT_MODE"

    def __init__(self, message: str, mode: str) -> None:
        super().__init__(message)
        self.mode = mode

    def payload(self) -> dict[str, Any]:
        return {**super().payload(), "currentDeviceMode": self.mode}


class AcceptGrantFailed(AlexaError):
    namespace = "Alexa.Authorization"
    error_type = "ACCEPT_GRANT_FAILED"


BY_TYPE: dict[str, type[AlexaError]] = {
    cls.error_type: cls for cls in (EndpointUnreachable, InvalidValue, InternalError)
}


def for_blocker(blocker: Blocker) -> AlexaError:
    """The error the core's readiness table names for a blocker, with its plain reason."""
    info = BLOCKERS[blocker]
    message = explain(blocker)
    if info.alexa_error == NotSupportedInCurrentMode.error_type:
        return NotSupportedInCurrentMode(message, info.alexa_mode or "OTHER")
    return BY_TYPE.get(info.alexa_error, InternalError)(message)


def for_ticket(reason: str) -> AlexaError:
    """The error for a stream ticket the media engine refused (the core's TicketError reason).

    A camera that became blocked since the directive was checked gets its table's error; a link
    revoked in between is a real token failure. Anything else (a ticket just minted cannot have
    expired) is our fault, not the caller's."""
    kind, _, detail = reason.partition(":")
    first = detail.split(",")[0]
    if kind == "blocked" and first in {blocker.value for blocker in Blocker}:
        return for_blocker(Blocker(first))
    if kind == "link_revoked":
        return InvalidCredential("the link this stream was asked for is revoked")
    if kind == "no_such_camera":
        return NoSuchEndpoint("no such camera for this account")
    return InternalError(f"stream ticket refused: {reason}")


def for_webrtc(exc: WebRTCError) -> AlexaError:
    """The error for a WebRTC engine failure while answering an offer.

    An offer the engine cannot serve is a value that is not valid for this endpoint; a full
    engine is busy (ask later); an engine that cannot read the camera leaves it unreachable."""
    if isinstance(exc, OfferRefused):
        return InvalidValue(f"the SDP offer cannot be served: {exc.reason}")
    if isinstance(exc, MediaBusy):
        return EndpointBusy(f"too many live sessions: {exc.reason}")
    if isinstance(exc, TicketRefused):
        return for_ticket(exc.reason)
    return EndpointUnreachable(f"the camera's video cannot be read now: {exc.reason}")
