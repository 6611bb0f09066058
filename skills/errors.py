"""Alexa's error responses as exceptions: a handler raises one, `smarthome.handle` answers it.

Each class is one `type` of Alexa.ErrorResponse (or Alexa.Authorization.ErrorResponse), named
as in Amazon's reference; `payload()` is that error's payload, extra fields included.
"""

from __future__ import annotations

from typing import Any

from camvoice.readiness import BLOCKERS, Blocker, explain


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
