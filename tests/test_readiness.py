"""The readiness rules, stated here from the maker's manual and the design brief, not read back
from the table the code uses:

- Alexa: Image Encryption must be off.
- Google: Image Encryption off and Audio on.
- Offline, sleep (privacy) mode and no video source keep a camera off both assistants.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest

from camvoice.readiness import BLOCKERS, Assistant, Blocker, explain, readiness

ALEXA, GOOGLE = Assistant.ALEXA, Assistant.GOOGLE


@dataclass
class Cam:
    online: bool = True
    sleep_mode: bool = False
    image_encryption: bool = False
    audio: bool = True
    source: str | None = "demo"


@pytest.mark.parametrize(
    ("camera", "alexa", "google"),
    [
        (Cam(), [], []),
        (Cam(image_encryption=True), ["ENCRYPTION_ON"], ["ENCRYPTION_ON"]),
        (Cam(audio=False), [], ["AUDIO_OFF"]),
        (Cam(online=False), ["OFFLINE"], ["OFFLINE"]),
        (Cam(sleep_mode=True), ["SLEEPING"], ["SLEEPING"]),
        (Cam(source=None), ["NO_STREAM"], ["NO_STREAM"]),
        (Cam(source=""), ["NO_STREAM"], ["NO_STREAM"]),
        (
            Cam(online=False, image_encryption=True, audio=False),
            ["OFFLINE", "ENCRYPTION_ON"],
            ["OFFLINE", "ENCRYPTION_ON", "AUDIO_OFF"],
        ),
        (
            Cam(online=False, sleep_mode=True, image_encryption=True, audio=False, source=None),
            ["OFFLINE", "SLEEPING", "ENCRYPTION_ON", "NO_STREAM"],
            ["OFFLINE", "SLEEPING", "ENCRYPTION_ON", "AUDIO_OFF", "NO_STREAM"],
        ),
    ],
)
def test_rules(camera: Cam, alexa: list[str], google: list[str]) -> None:
    assert readiness(camera, ALEXA) == alexa
    assert readiness(camera, GOOGLE) == google


# The order the owner is told things in: what must be fixed first comes first.
ORDER = ["OFFLINE", "SLEEPING", "ENCRYPTION_ON", "AUDIO_OFF", "NO_STREAM"]


@pytest.mark.parametrize(
    ("online", "sleep_mode", "image_encryption", "audio", "source"),
    list(
        itertools.product(
            [True, False], [False, True], [False, True], [True, False], ["demo", None]
        )
    ),
)
def test_every_combination_of_settings(
    online: bool, sleep_mode: bool, image_encryption: bool, audio: bool, source: str | None
) -> None:
    """All 32 cameras: each blocker appears exactly when its setting is wrong, Audio counts for
    Google only, and a camera with no blocker is exactly one the brief says may be shown."""
    camera = Cam(online, sleep_mode, image_encryption, audio, source)
    wrong = {
        "OFFLINE": not online,
        "SLEEPING": sleep_mode,
        "ENCRYPTION_ON": image_encryption,
        "AUDIO_OFF": not audio,
        "NO_STREAM": source is None,
    }
    google = [b for b in ORDER if wrong[b]]
    alexa = [b for b in google if b != "AUDIO_OFF"]
    assert readiness(camera, ALEXA) == alexa
    assert readiness(camera, GOOGLE) == google
    shown_on_alexa = online and not sleep_mode and not image_encryption and source is not None
    assert (readiness(camera, ALEXA) == []) is shown_on_alexa
    assert (readiness(camera, GOOGLE) == []) is (shown_on_alexa and audio)


# What each protocol is told (Alexa.ErrorResponse type and currentDeviceMode; Google errorCode).
# Alexa: ENDPOINT_UNREACHABLE for an offline device; NOT_SUPPORTED_IN_CURRENT_MODE must carry a
# currentDeviceMode from COLOR, ASLEEP, NOT_PROVISIONED, OTHER: ASLEEP for sleep mode, OTHER for
# a setting the owner must change. Google: deviceOffline for an offline device.
PROTOCOL_ERRORS = {
    "OFFLINE": ("ENDPOINT_UNREACHABLE", None, "deviceOffline"),
    "SLEEPING": ("NOT_SUPPORTED_IN_CURRENT_MODE", "ASLEEP", "inSleepMode"),
    "ENCRYPTION_ON": ("NOT_SUPPORTED_IN_CURRENT_MODE", "OTHER", "securityRestriction"),
    "AUDIO_OFF": ("NOT_SUPPORTED_IN_CURRENT_MODE", "OTHER", "deviceNotReady"),
    "NO_STREAM": ("NOT_SUPPORTED_IN_CURRENT_MODE", "NOT_PROVISIONED", "functionNotSupported"),
}


def test_each_blocker_maps_to_its_protocol_errors() -> None:
    mapped = {
        str(b): (info.alexa_error, info.alexa_mode, info.google_error)
        for b, info in BLOCKERS.items()
    }
    assert mapped == PROTOCOL_ERRORS


# What the owner reads: the sentence names what is wrong and the setting to change.
SENTENCES = {
    "OFFLINE": (["offline", "Wi-Fi"], ["sin conexión", "Wi-Fi"]),
    "SLEEPING": (["sleep", "privacy"], ["reposo", "privacidad"]),
    "ENCRYPTION_ON": (["Image Encryption", "Turn it off"], ["cifrado de imagen", "Desactívalo"]),
    "AUDIO_OFF": (["Audio is off", "Google", "turn on Audio"], ["audio", "Google", "activa"]),
    "NO_STREAM": (["no video source"], ["fuente de vídeo"]),
}


@pytest.mark.parametrize("blocker", ORDER)
def test_explain_in_english_and_spanish(blocker: str) -> None:
    english, spanish = SENTENCES[blocker]
    for language in ("en", "en-US", "EN-gb", "nl", "zh-CN", ""):  # English unless we speak it
        said = explain(Blocker(blocker), language)
        assert all(words in said for words in english), (language, said)
    for language in ("es", "es-MX", "ES-es"):
        said = explain(Blocker(blocker), language)
        assert all(words in said for words in spanish), (language, said)
    assert explain(Blocker(blocker)) == explain(Blocker(blocker), "en")
