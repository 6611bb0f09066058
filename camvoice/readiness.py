"""The readiness rules: can this camera be shown on this assistant, and if not, why.

This is the one place the camera maker's prerequisites live. Adapters never re-check settings;
they map a Blocker to their protocol through the BLOCKERS table below.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


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
    """

    alexa_error: str
    alexa_mode: str | None
    google_error: str
    en: str
    es: str


BLOCKERS: dict[Blocker, BlockerInfo] = {
    Blocker.OFFLINE: BlockerInfo(
        "ENDPOINT_UNREACHABLE",
        None,
        "deviceOffline",
        "The camera is offline. Check its power and Wi-Fi connection, then try again.",
        "La cámara está sin conexión. Comprueba su alimentación y la conexión Wi-Fi y vuelve a "
        "intentarlo.",
    ),
    Blocker.SLEEPING: BlockerInfo(
        "NOT_SUPPORTED_IN_CURRENT_MODE",
        "ASLEEP",
        "inSleepMode",
        "The camera is in sleep (privacy) mode. Wake it in the camera app to watch it.",
        "La cámara está en modo reposo (privacidad). Actívala en la aplicación de la cámara para "
        "verla.",
    ),
    Blocker.ENCRYPTION_ON: BlockerInfo(
        "NOT_SUPPORTED_IN_CURRENT_MODE",
        "OTHER",
        "securityRestriction",
        "Image Encryption is on. Turn it off in the camera app (Settings, Image Encryption) so "
        "the assistant can show the video.",
        "El cifrado de imagen está activado. Desactívalo en la aplicación de la cámara "
        "(Configuración, Cifrado de imagen) para que el asistente pueda mostrar el vídeo.",
    ),
    Blocker.AUDIO_OFF: BlockerInfo(
        "NOT_SUPPORTED_IN_CURRENT_MODE",
        "OTHER",
        "deviceNotReady",
        "Audio is off. Google Assistant needs it on: turn on Audio in the camera app.",
        "El audio está desactivado. El Asistente de Google lo necesita: activa el audio en la "
        "aplicación de la cámara.",
    ),
    Blocker.NO_STREAM: BlockerInfo(
        "NOT_SUPPORTED_IN_CURRENT_MODE",
        "NOT_PROVISIONED",
        "functionNotSupported",
        "The camera has no video source configured. Add its stream in camvoice.",
        "La cámara no tiene una fuente de vídeo configurada. Añade su transmisión en camvoice.",
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
    """The plain sentence for a blocker; Spanish for any es-* language, English otherwise."""
    info = BLOCKERS[blocker]
    return info.es if language.lower().startswith("es") else info.en
