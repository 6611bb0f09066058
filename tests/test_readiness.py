"""The readiness rules: the maker's prerequisites for each assistant, and their one table."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from camvoice.readiness import BLOCKERS, Assistant, Blocker, explain, readiness


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
        (Cam(image_encryption=True), [Blocker.ENCRYPTION_ON], [Blocker.ENCRYPTION_ON]),
        (Cam(audio=False), [], [Blocker.AUDIO_OFF]),
        (Cam(online=False), [Blocker.OFFLINE], [Blocker.OFFLINE]),
        (Cam(sleep_mode=True), [Blocker.SLEEPING], [Blocker.SLEEPING]),
        (Cam(source=None), [Blocker.NO_STREAM], [Blocker.NO_STREAM]),
        (
            Cam(online=False, image_encryption=True, audio=False),
            [Blocker.OFFLINE, Blocker.ENCRYPTION_ON],
            [Blocker.OFFLINE, Blocker.ENCRYPTION_ON, Blocker.AUDIO_OFF],
        ),
    ],
)
def test_rules(camera: Cam, alexa: list[Blocker], google: list[Blocker]) -> None:
    assert readiness(camera, Assistant.ALEXA) == alexa
    assert readiness(camera, Assistant.GOOGLE) == google


def test_every_blocker_has_both_protocols_and_both_languages() -> None:
    assert set(BLOCKERS) == set(Blocker)
    for info in BLOCKERS.values():
        assert info.alexa_error and info.google_error
        assert info.en and info.es and info.en != info.es
        if info.alexa_error == "NOT_SUPPORTED_IN_CURRENT_MODE":
            assert info.alexa_mode in {"COLOR", "ASLEEP", "NOT_PROVISIONED", "OTHER"}


def test_maker_prerequisites_map_to_documented_codes() -> None:
    assert BLOCKERS[Blocker.OFFLINE].alexa_error == "ENDPOINT_UNREACHABLE"
    assert BLOCKERS[Blocker.OFFLINE].google_error == "deviceOffline"
    assert BLOCKERS[Blocker.SLEEPING].alexa_mode == "ASLEEP"
    assert BLOCKERS[Blocker.ENCRYPTION_ON].alexa_mode == "OTHER"


def test_explain_picks_language() -> None:
    assert "Image Encryption" in explain(Blocker.ENCRYPTION_ON, "en-US")
    assert "cifrado de imagen" in explain(Blocker.ENCRYPTION_ON, "es-MX")
    assert explain(Blocker.AUDIO_OFF, "fr") == explain(Blocker.AUDIO_OFF, "en")
