"""The readiness rules: can this camera be shown on this assistant, and if not, why.

This is the one place the camera maker's prerequisites live. Adapters never re-check settings;
they map a Blocker to their protocol through the BLOCKERS table below.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from camvoice.languages import N_, translate


class Assistant(StrEnum):
    ALEXA = "alexa"
    GOOGLE = "google"


class Blocker(StrEnum):
    OFFLINE = "OFFLINE"
    SLEEPING = "SLEEPING"
    ENCRYPTION_ON = "ENCRYPTION_ON"
    AUDIO_OFF = "AUDIO_OFF"
    NO_STREAM = "NO_STREAM"


class CameraSettings(Protocol):
    """What the rules read; the ORM Camera satisfies it, and so can a backend's own record."""

    online: bool
    sleep_mode: bool
    image_encryption: bool
    audio: bool
    source: str | None


@dataclass(frozen=True)
class BlockerInfo:
    """How each protocol and each language expresses one blocker.

    alexa_error: Alexa.ErrorResponse type; alexa_mode: its currentDeviceMode when the type is
    NOT_SUPPORTED_IN_CURRENT_MODE. google_error: Google's errorCode (errors-and-exceptions list).
    sentence: the owner's reason in English, the msgid of its translations (camvoice/languages).
    """

    alexa_error: str
    alexa_mode: str | None
    google_error: str
    sentence: str


BLOCKERS: dict[Blocker, BlockerInfo] = {
    Blocker.OFFLINE: BlockerInfo(
        "ENDPOINT_UNREACHABLE",
        None,
        "deviceOffline",
        N_("The camera is offline. Check its power and Wi-Fi connection, then try again."),
    ),
    Blocker.SLEEPING: BlockerInfo(
        "NOT_SUPPORTED_IN_CURRENT_MODE",
        "ASLEEP",
        "inSleepMode",
        N_("The camera is in sleep (privacy) mode. Wake it in the camera app to watch it."),
    ),
    Blocker.ENCRYPTION_ON: BlockerInfo(
        "NOT_SUPPORTED_IN_CURRENT_MODE",
        "OTHER",
        "securityRestriction",
        N_(
            "Image Encryption is on. Turn it off in the camera app (Settings, Image Encryption) "
            "so the assistant can show the video."
        ),
    ),
    Blocker.AUDIO_OFF: BlockerInfo(
        "NOT_SUPPORTED_IN_CURRENT_MODE",
        "OTHER",
        "deviceNotReady",
        N_("Audio is off. Google Assistant needs it on: turn on Audio in the camera app."),
    ),
    Blocker.NO_STREAM: BlockerInfo(
        "NOT_SUPPORTED_IN_CURRENT_MODE",
        "NOT_PROVISIONED",
        "functionNotSupported",
        N_("The camera has no video source configured. Add its stream in camvoice."),
    ),
}


def readiness(camera: CameraSettings, assistant: Assistant) -> list[Blocker]:
    """Every blocker that keeps this camera off this assistant, most fundamental first."""
    blockers: list[Blocker] = []
    if not camera.online:
        blockers.append(Blocker.OFFLINE)
    if camera.sleep_mode:
        blockers.append(Blocker.SLEEPING)
    if camera.image_encryption:
        blockers.append(Blocker.ENCRYPTION_ON)
    if assistant is Assistant.GOOGLE and not camera.audio:
        blockers.append(Blocker.AUDIO_OFF)
    if not camera.source:
        blockers.append(Blocker.NO_STREAM)
    return blockers


def explain(blocker: Blocker, language: str = "en") -> str:
    """The plain sentence for a blocker in a language tag's language ('es-MX', 'pt-BR', 'de'),
    English for one camvoice does not speak."""
    return translate(language, BLOCKERS[blocker].sentence)
