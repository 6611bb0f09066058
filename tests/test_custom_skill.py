"""The custom skill through the Flask app: real ask-sdk request envelopes in, response JSON out."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from camvoice.cameras import Registry
from camvoice.db import Database
from camvoice.names import normalize, resolve
from camvoice.outbox import Outbox
from camvoice.settings import Settings
from service.app import create_app
from service.demo import DEMO_EMAIL, DEMO_PASSWORD, seed
from tests.conftest import LiveServer
from tests.media_support import probe_video
from tests.oauth_support import ALEXA_URIS, link, make_owner, register, streams_requested

SKILL_ID = "amzn1.ask.skill.00000000-1111-2222-3333-444444444444"


@pytest.fixture
def server(settings: Settings, db: Database, tmp_path: Path) -> Iterator[LiveServer]:
    configured = settings.model_copy(update={
        "alexa_skill_id": SKILL_ID, "alexa_verify_requests": False, "media_dir": tmp_path / "m"})  # fmt: skip
    app = create_app(configured, db)
    with LiveServer(app) as live:
        yield live
    app.extensions["camvoice.relays"].shutdown()


@pytest.fixture
def token(server: LiveServer, db: Database) -> str:
    with db.session() as session:
        seed(session, Registry(Outbox()))
    client = register(db, "Amazon Alexa", ALEXA_URIS, "alexa")
    _, issued = link(server, client, DEMO_EMAIL, password=DEMO_PASSWORD)
    return str(issued["access_token"])


def envelope(request: dict[str, Any], token: str | None, locale: str = "en-US", screen: bool = True,
             app_id: str = SKILL_ID) -> dict[str, Any]:  # fmt: skip
    user = {"userId": "amzn1.ask.account.TEST", **({"accessToken": token} if token else {})}
    interfaces = {"VideoApp": {}} if screen else {}
    return {
        "version": "1.0",
        "session": {"new": True, "sessionId": "amzn1.echo-api.session." + uuid.uuid4().hex,
                    "application": {"applicationId": app_id}, "user": user},
        "context": {"System": {
            "application": {"applicationId": app_id}, "user": user,
            "device": {"deviceId": "amzn1.ask.device.TEST", "supportedInterfaces": interfaces},
            "apiEndpoint": "https://api.amazonalexa.com", "apiAccessToken": "x"}},
        "request": {"requestId": "amzn1.echo-api.request." + uuid.uuid4().hex,
                    "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "locale": locale, **request},
    }  # fmt: skip


def intent(name: str, camera: str | None = None) -> dict[str, Any]:
    slots = (
        {"camera": {"name": "camera", "value": camera, "confirmationStatus": "NONE"}}
        if camera
        else {}
    )
    return {"type": "IntentRequest", "dialogState": "STARTED",
            "intent": {"name": name, "confirmationStatus": "NONE", "slots": slots}}  # fmt: skip


def ask(live: LiveServer, body: dict[str, Any]) -> dict[str, Any]:
    reply = requests.post(live.url + "/alexa/custom", json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    return reply.json()["response"]  # type: ignore[no-any-return]


def speech(response: dict[str, Any]) -> str:
    text = response["outputSpeech"]["ssml"]
    assert "http" not in text  # a stream URL is never spoken
    return text


def video_url(response: dict[str, Any]) -> str | None:
    for directive in response.get("directives", []):
        if directive["type"] == "VideoApp.Launch":
            return str(directive["videoItem"]["source"])
    return None


def ticket_body(url: str) -> dict[str, Any]:
    token = url.split("/")[-2].split(".")[0]
    return json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))


def test_launch_linked_and_unlinked(server: LiveServer, token: str) -> None:
    assert "Welcome to Camera Voice" in speech(
        ask(server, envelope({"type": "LaunchRequest"}, token))
    )
    unlinked = ask(server, envelope({"type": "LaunchRequest"}, None))
    assert unlinked["card"]["type"] == "LinkAccount"
    assert "link your camera account" in speech(unlinked)
    bad = ask(server, envelope(intent("ShowCameraIntent", "front door"), "revoked-or-garbage"))
    assert bad["card"]["type"] == "LinkAccount"


def test_show_front_door_plays_on_a_screen(server: LiveServer, db: Database, token: str) -> None:
    response = ask(server, envelope(intent("ShowCameraIntent", "the front door camera"), token))
    url = video_url(response)
    assert url is not None
    assert streams_requested(db) == [("alexa", "hls")]
    directive = response["directives"][0]
    assert directive["videoItem"]["metadata"]["title"] == "Front Door"
    assert ticket_body(url)["a"] == "alexa" and ticket_body(url)["p"] == "hls"
    assert "Here is the Front Door" in speech(response)
    assert probe_video(url.replace("http://127.0.0.1:8080", server.url)) == "h264"


def test_no_screen_offers_status_instead(server: LiveServer, token: str) -> None:
    response = ask(server, envelope(intent("ShowCameraIntent", "front door"), token, screen=False))
    assert video_url(response) is None
    assert "no screen" in speech(response) and "ready" in speech(response)


@pytest.mark.parametrize(
    ("spoken", "words"),
    [("garage", "Image Encryption is on"), ("backyard", "offline"), ("living room", "sleep")],
)
def test_blocked_cameras_never_get_a_video(
    server: LiveServer, token: str, spoken: str, words: str
) -> None:
    response = ask(server, envelope(intent("ShowCameraIntent", spoken), token))
    assert video_url(response) is None
    assert words in speech(response)


def test_nursery_shows_on_alexa_despite_audio_off(server: LiveServer, token: str) -> None:
    assert (
        video_url(ask(server, envelope(intent("ShowCameraIntent", "nursery"), token))) is not None
    )


def test_spanish(server: LiveServer, token: str) -> None:
    shown = ask(
        server,
        envelope(intent("ShowCameraIntent", "la cámara de la puerta principal"), token, "es-ES"),
    )
    assert video_url(shown) is not None
    assert "Aquí tienes la cámara Front Door" in speech(shown)
    garage = ask(server, envelope(intent("ShowCameraIntent", "garaje"), token, "es-ES"))
    assert video_url(garage) is None
    assert "cifrado de imagen" in speech(garage)
    listed = ask(server, envelope(intent("ListCamerasIntent"), token, "es-ES"))
    assert "Tienes 5 cámaras" in speech(listed)


def test_list_and_status(server: LiveServer, token: str) -> None:
    listed = speech(ask(server, envelope(intent("ListCamerasIntent"), token)))
    assert "You have 5 cameras" in listed and "Ready to show now: Front Door and Nursery" in listed
    status = speech(ask(server, envelope(intent("CameraStatusIntent", "nursery"), token)))
    assert "Alexa can show it" in status and "For Google: Audio is off" in status
    front = speech(ask(server, envelope(intent("CameraStatusIntent", "front door"), token)))
    assert "online and ready for Alexa and Google" in front


def test_ambiguous_and_unknown_names(server: LiveServer, db: Database) -> None:
    make_owner(db, "two@example.com", {"Garage Left": {}, "Garage Right": {}})
    client = register(db, "Amazon Alexa", ALEXA_URIS, "alexa")
    _, issued = link(server, client, "two@example.com")
    token = issued["access_token"]
    which = ask(server, envelope(intent("ShowCameraIntent", "garage"), token))
    assert "Did you mean Garage Left or Garage Right?" in speech(which)
    assert which["directives"][0] == {"type": "Dialog.ElicitSlot", "slotToElicit": "camera"}
    assert video_url(which) is None
    unknown = speech(ask(server, envelope(intent("ShowCameraIntent", "attic"), token)))
    assert (
        "couldn't find a camera called attic" in unknown
        and "Garage Left and Garage Right" in unknown
    )


def test_help_stop_fallback_session_end(server: LiveServer, token: str) -> None:
    assert "show the front door" in speech(
        ask(server, envelope(intent("AMAZON.HelpIntent"), token))
    )
    stop = ask(server, envelope(intent("AMAZON.StopIntent"), token))
    assert speech(stop) == "<speak>Goodbye.</speak>" and stop["shouldEndSession"] is True
    assert "didn't get that" in speech(
        ask(server, envelope(intent("AMAZON.FallbackIntent"), token))
    )
    ended = requests.post(server.url + "/alexa/custom", timeout=10, json=envelope(
        {"type": "SessionEndedRequest", "reason": "USER_INITIATED"}, token))  # fmt: skip
    assert ended.status_code == 200


def test_foreign_and_malformed_requests_are_refused(server: LiveServer, token: str) -> None:
    foreign = requests.post(server.url + "/alexa/custom", timeout=10,
                            json=envelope({"type": "LaunchRequest"}, token, app_id="amzn1.ask.skill.other"))  # fmt: skip
    assert foreign.status_code == 400
    garbage = requests.post(server.url + "/alexa/custom", data=b"\xffnot json", timeout=10)
    assert garbage.status_code == 400


def test_unsigned_request_refused_when_verification_is_on(
    settings: Settings, db: Database, token: str, tmp_path: Path
) -> None:
    strict = settings.model_copy(update={"alexa_skill_id": SKILL_ID, "media_dir": tmp_path / "s"})
    with LiveServer(create_app(strict, db)) as live:
        reply = requests.post(
            live.url + "/alexa/custom", json=envelope({"type": "LaunchRequest"}, token), timeout=10
        )
    assert reply.status_code == 400
    assert "verification" in reply.json()["message"]


def test_name_resolution_forgives() -> None:
    class Cam:
        def __init__(self, name: str, nicknames: list[str]) -> None:
            self.name, self.nicknames = name, nicknames

    cams = [
        Cam("Front Door", ["puerta principal"]),
        Cam("Garage", ["garaje"]),
        Cam("Living Room", []),
    ]
    assert normalize("The Front Door cameras") == "front door"
    for spoken, expected in [("front door", "Front Door"), ("the front door camera", "Front Door"),
                             ("front doors", "Front Door"), ("frnt door", "Front Door"),
                             ("la cámara de la puerta principal", "Front Door"), ("garaje", "Garage"),
                             ("living room", "Living Room")]:  # fmt: skip
        assert [c.name for c in resolve(spoken, cams)] == [expected], spoken  # type: ignore[arg-type]
    assert resolve("attic", cams) == []  # type: ignore[arg-type]


def test_interaction_models_are_well_formed() -> None:
    """The structure the ASK CLI's interaction-model schema requires, checked field by field."""
    root = Path(__file__).resolve().parents[1] / "skills/models"
    for locale in ("en-US", "es-ES", "de-DE", "fr-FR", "it-IT", "pt-BR", "ja-JP"):
        model = json.loads((root / f"{locale}.json").read_text())["interactionModel"][
            "languageModel"
        ]
        name = model["invocationName"]
        assert name == name.lower() and not any(c.isdigit() for c in name)
        # Two words at least; Japanese writes none apart: two characters at least, no spaces.
        assert len(name) >= 2 and " " not in name if locale == "ja-JP" else len(name.split()) >= 2
        types = {t["name"] for t in model["types"]}
        intents = {i["name"]: i for i in model["intents"]}
        assert {"ShowCameraIntent", "ListCamerasIntent", "CameraStatusIntent", "AMAZON.HelpIntent",
                "AMAZON.StopIntent", "AMAZON.CancelIntent", "AMAZON.FallbackIntent"} <= set(intents)  # fmt: skip
        for item in intents.values():
            slots = {s["name"]: s["type"] for s in item.get("slots", [])}
            assert all(t in types or t.startswith("AMAZON.") for t in slots.values())
            samples = item["samples"]
            assert len(samples) == len(set(samples))
            for sample in samples:
                assert set(__import__("re").findall(r"{(\w+)}", sample)) <= set(slots), sample
        values = model["types"][0]["values"]
        assert all(v["name"]["value"] for v in values)


HOSTILE = 'Gate <audio src="https://evil.example/a.mp3"/> & "Co"'


def spoken_text(ssml: str) -> str:
    """The words of an SSML answer, which must be one <speak> element with nothing inside."""
    from xml.etree import ElementTree

    root = ElementTree.fromstring(ssml)  # noqa: S314 - our own server's answer
    assert root.tag == "speak" and len(root) == 0, ssml
    return "".join(root.itertext())


@pytest.mark.parametrize("locale", ["en-US", "es-ES", "de-DE", "ja-JP"])
def test_speech_is_valid_ssml_whatever_the_names(
    server: LiveServer, db: Database, token: str, locale: str
) -> None:
    """A camera name (the owner's words) and a spoken name (the caller's) are text in SSML: an
    `<audio>` in a name is read out, never played, and `&` does not break the document."""
    from camvoice.accounts import find_account

    with db.session() as session:
        owner = find_account(session, DEMO_EMAIL)
        Registry(Outbox()).add(session, owner, HOSTILE, actor="t", audio=False)  # type: ignore[arg-type]
    said = []
    for request in (
        intent("ListCamerasIntent"),
        intent("CameraStatusIntent", "gate audio"),
        intent("ShowCameraIntent", "gate audio"),
        intent("ShowCameraIntent", "<break time='3s'/> & nothing"),
    ):
        response = ask(server, envelope(request, token, locale=locale))
        said.append(spoken_text(response["outputSpeech"]["ssml"]))
        if "reprompt" in response:
            spoken_text(response["reprompt"]["outputSpeech"]["ssml"])
    assert HOSTILE in said[0] and "<break time='3s'/> & nothing" in said[3]
