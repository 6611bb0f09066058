"""camvoice's languages: gettext catalogs that are complete, current with the sources and
consistent in their placeholders and the camera maker's terms; pages, readiness reasons, the
custom skill and the simulator in each language (README, "Languages")."""

from __future__ import annotations

import json
import re
import subprocess
from html import unescape
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.pofile import read_po
from babel.support import Translations

from camvoice.cameras import Registry
from camvoice.db import Database
from camvoice.languages import LOCALES, TRANSLATIONS, catalog, html_lang, negotiate, translate
from camvoice.names import resolve
from camvoice.outbox import Outbox
from camvoice.readiness import Blocker, explain
from console.simulator import language_of, on_tv, spoken_camera
from service.demo import DEMO_CAMERAS, DEMO_EMAIL, DEMO_PASSWORD, seed
from tests.conftest import LiveServer
from tests.oauth_support import Browser, make_owner, register
from tests.test_custom_skill import ask, envelope, intent, server, token, video_url
from tests.test_custom_skill import speech as ssml_of

__all__ = ["server", "token"]  # the custom skill's fixtures, used here too

ROOT = Path(__file__).resolve().parents[1]
TRANSLATED = [locale for locale in LOCALES if locale != "en"]
PLACEHOLDER = re.compile(r"%\((\w+)\)[sd]|\{(\w+)\}")

# How the camera maker's app (EZVIZ) names the settings in each language: every page, reason
# and sentence that names one uses the same word (compared without case).
TERMS: dict[str, dict[str, str]] = {
    "es": {"encryption": "cifrado de imagen", "audio": "audio", "sleep": "reposo"},
    "de": {"encryption": "Bildverschlüsselung", "audio": "Audio", "sleep": "Schlafmodus"},
    "fr": {"encryption": "chiffrement de l'image", "audio": "audio", "sleep": "mode veille"},
    "it": {"encryption": "crittografia immagine", "audio": "audio", "sleep": "sospensione"},
    "pt_BR": {"encryption": "criptografia de imagem", "audio": "áudio", "sleep": "suspensão"},
    "ja": {"encryption": "画像暗号化", "audio": "オーディオ", "sleep": "スリープ"},
}
# Which sentences name which setting (English msgids).
NAMING: dict[str, list[str]] = {
    "encryption": [
        "Turn off Image Encryption",
        "Image Encryption keeps your video unreadable to anyone without the camera's password, "
        "camvoice included. Turning it off lets Alexa and Google show the video; it stays "
        "protected in transit by TLS and by signed, expiring links.",
        "Image Encryption is on. Turn it off in the camera app (Settings, Image Encryption) so "
        "the assistant can show the video.",
    ],
    "audio": [
        "Turn on Audio",
        "Audio is off. Google Assistant needs it on: turn on Audio in the camera app.",
    ],
    "sleep": ["The camera is in sleep (privacy) mode. Wake it in the camera app to watch it."],
}


def po_files() -> dict[str, Catalog]:
    """Every language's catalog, as translators edit it."""
    found = {}
    for path in sorted(TRANSLATIONS.glob("*/LC_MESSAGES/messages.po")):
        with path.open("rb") as source:
            found[path.parent.parent.name] = read_po(source, locale=path.parent.parent.name)
    return found


def messages(cat: Catalog) -> dict[object, object]:
    """msgid (a tuple for plurals) -> msgstr, header left out."""
    return {m.id: m.string for m in cat if m.id}


def speech(response: dict[str, object]) -> str:
    """The words the skill speaks, without the <speak> element around them."""
    return unescape(re.sub(r"</?speak>", "", ssml_of(response)))  # type: ignore[arg-type]


def placeholders(text: str) -> set[str]:
    return {a or b for a, b in PLACEHOLDER.findall(text)}


# --- the catalogs -----------------------------------------------------------------------------


def test_one_catalog_per_language_we_speak() -> None:
    assert set(po_files()) == set(TRANSLATED)


@pytest.mark.parametrize("locale", TRANSLATED)
def test_every_message_is_translated(locale: str) -> None:
    """No empty msgstr (in any plural form), nothing fuzzy: a fuzzy entry is left out of the
    compiled catalog, so the page would silently fall back to English."""
    cat = po_files()[locale]
    assert not cat.fuzzy, "the catalog's header is marked fuzzy"
    for message in cat:
        if not message.id:
            continue
        assert not message.fuzzy, (locale, message.id)
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        assert len(strings) == (cat.num_plurals if message.pluralizable else 1), message.id
        assert all(s.strip() for s in strings), (locale, message.id)


def test_template_matches_the_sources(tmp_path: Path) -> None:
    """The .pot is what `make messages` extracts from the code and templates today, and every
    catalog holds exactly its messages: a new or changed sentence cannot ship untranslated."""
    fresh = tmp_path / "messages.pot"
    subprocess.run(["make", "--no-print-directory", "-s", "pot", f"POT={fresh}"], cwd=ROOT,
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    with fresh.open("rb") as source:
        extracted = read_po(source)
    with (TRANSLATIONS / "messages.pot").open("rb") as source:
        committed = read_po(source)
    assert set(messages(committed)) == set(messages(extracted)), "run `make messages`"
    for locale, cat in po_files().items():
        assert set(messages(cat)) == set(messages(extracted)), f"{locale}: run `make messages`"


@pytest.mark.parametrize("locale", TRANSLATED)
def test_placeholders_match_the_msgid(locale: str) -> None:
    """A translation names exactly the msgid's placeholders (a missing or misspelt one is a
    KeyError when the sentence is filled in, or a value never shown)."""
    for msgid, string in messages(po_files()[locale]).items():
        ids = msgid if isinstance(msgid, tuple) else (msgid,)
        wanted = set().union(*map(placeholders, ids))
        for text in string if isinstance(string, tuple) else (string,):
            assert placeholders(text) == wanted, (locale, msgid, text)  # type: ignore[arg-type]


@pytest.mark.parametrize("locale", TRANSLATED)
def test_compiled_catalogs_load_and_name_settings_as_the_camera_app_does(locale: str) -> None:
    """The build compiled each catalog (a missing .mo would be English in disguise), and the
    settings carry the maker's own names everywhere they are named."""
    assert isinstance(catalog(locale), Translations), f"{locale}: run `make install`"
    for setting, msgids in NAMING.items():
        term = TERMS[locale][setting].lower()
        for msgid in msgids:
            assert term in translate(locale, msgid).lower(), (locale, setting, msgid)


def test_readiness_reasons_in_each_language() -> None:
    """The core's sentences through the same catalogs; region and case do not matter; a
    language camvoice does not speak gets English."""
    for locale, terms in TERMS.items():
        tag = LOCALES[locale]
        assert terms["encryption"].lower() in explain(Blocker.ENCRYPTION_ON, tag).lower(), tag
        assert terms["sleep"].lower() in explain(Blocker.SLEEPING, tag.upper()).lower(), tag
    assert explain(Blocker.OFFLINE, "pt-PT") == explain(Blocker.OFFLINE, "pt-BR")
    assert explain(Blocker.OFFLINE, "sv-SE") == explain(Blocker.OFFLINE, "en")
    assert "offline" in explain(Blocker.OFFLINE, "sv-SE")


def test_negotiation() -> None:
    assert negotiate(["de-AT", "en"]) == "de"
    assert negotiate(["nl-NL", "pt-PT"]) == "pt_BR"  # our one Portuguese over English
    assert negotiate(["sv", "nl"]) == "en"
    assert negotiate([]) == "en"
    assert html_lang("pt_BR") == "pt-BR" and html_lang("ja") == "ja"


# --- pages ------------------------------------------------------------------------------------

HTML_LANG = re.compile(r'<html lang="([^"]+)">')


@pytest.mark.parametrize(
    ("accept", "lang", "locale"),
    [
        ("de-DE,de;q=0.9,en;q=0.5", "de", "de"),
        ("fr-CA", "fr", "fr"),
        ("it", "it", "it"),
        ("pt-BR", "pt-BR", "pt_BR"),
        ("pt-PT,pt;q=0.8", "pt-BR", "pt_BR"),
        ("ja-JP", "ja", "ja"),
        ("es-MX", "es", "es"),
        ("nl-NL,sv;q=0.5", "en", "en"),
        ("sv;q=0.9,ja;q=0.8", "ja", "ja"),
    ],
)
def test_pages_render_in_the_readers_language(
    live: LiveServer, db: Database, accept: str, lang: str, locale: str
) -> None:
    """Sign-in, consent, the console's pages and the simulator: <html lang> and the words
    come from Accept-Language, negotiated against the languages camvoice speaks."""
    with db.session() as session:
        seed(session, Registry(Outbox()))
    browser = Browser(live, language=accept)
    login = browser.open(live.url + "/oauth/login")
    assert HTML_LANG.search(login.text).group(1) == lang  # type: ignore[union-attr]
    assert f">{translate(locale, 'Sign in')}</button>" in login.text
    browser.sign_in(login, DEMO_EMAIL, DEMO_PASSWORD)
    cameras = browser.open(live.url + "/console")
    assert cameras.status_code == 200
    assert HTML_LANG.search(cameras.text).group(1) == lang  # type: ignore[union-attr]
    text = unescape(cameras.text)
    for sentence in (explain(Blocker.ENCRYPTION_ON, locale), translate(locale, "Turn on Audio"),
                     translate(locale, "Voice simulator"), translate(locale, "Wake the camera")):  # fmt: skip
        assert sentence in text, sentence
    for path, words in (("/console/links", "No assistant is linked yet."),
                        ("/console/activity", "Views per day"), ("/simulator", "Send"),
                        ("/console/account", "Delete my account for good")):  # fmt: skip
        page = browser.open(live.url + path)
        assert page.status_code == 200, path
        assert HTML_LANG.search(page.text).group(1) == lang  # type: ignore[union-attr]
        assert translate(locale, words) in unescape(page.text), (path, words)


@pytest.mark.parametrize("locale", ["de", "ja", "pt_BR"])
def test_consent_page_in_the_readers_language(live: LiveServer, db: Database, locale: str) -> None:
    """The consent page an owner sees while linking Alexa: the question, the scope and each
    camera's reason in the owner's language."""
    make_owner(db, "owner@example.com", {"Porch": {"image_encryption": True}})
    client = register(db, "Amazon Alexa", ["https://pitangui.amazon.com/api/skill/link/X"], "alexa")
    browser = Browser(live, language=LOCALES[locale])
    authorize = browser.open(
        live.url
        + "/oauth/authorize?response_type=code&client_id="
        + client.client_id
        + "&redirect_uri=https://pitangui.amazon.com/api/skill/link/X&scope=cameras&state=s"
    )
    consent = browser.sign_in(authorize, "owner@example.com")
    html = unescape(consent.text)
    assert HTML_LANG.search(html).group(1) == html_lang(locale)  # type: ignore[union-attr]
    assert translate(locale, "Link %(client)s?", client="Amazon Alexa") in html
    scope = "See your cameras and their settings, and play their live video."
    assert translate(locale, scope) in html
    assert explain(Blocker.ENCRYPTION_ON, locale) in html
    assert translate(locale, "Allow") in html


# --- the custom skill -------------------------------------------------------------------------

MODELS = ROOT / "skills" / "models"
SKILL_LOCALES = ["de-DE", "fr-FR", "it-IT", "pt-BR", "ja-JP"]


def model_values(tag: str) -> list[list[str]]:
    """Each CAMERA_NAME value of a model with its synonyms, in the model's order."""
    model = json.loads((MODELS / f"{tag}.json").read_text())["interactionModel"]
    values = model["languageModel"]["types"][0]["values"]
    return [[v["name"]["value"], *v["name"]["synonyms"]] for v in values]


@pytest.mark.parametrize("tag", ["en-US", "es-ES", *SKILL_LOCALES])
def test_models_sample_names_find_the_demo_cameras(tag: str) -> None:
    """Every model lists the demo cameras in the same order; what Alexa puts in the slot for
    each (value, not synonym: Alexa resolves synonyms to it) finds that camera."""

    class Cam:
        def __init__(self, spec: dict[str, object]) -> None:
            self.name, self.nicknames = spec["name"], spec.get("nicknames", [])

    cams = [Cam(spec) for spec in DEMO_CAMERAS]
    for (value, *_), cam in zip(model_values(tag), cams, strict=True):
        assert resolve(value, cams) == [cam], (tag, value)  # type: ignore[arg-type]


@pytest.mark.parametrize("tag", SKILL_LOCALES)
def test_custom_skill_answers_in_the_requests_locale(
    server: LiveServer, token: str, tag: str
) -> None:
    """The model's own names find the cameras; the skill shows, refuses (with the maker's
    term for the setting) and lists in the language of the request."""
    locale = tag.replace("-", "_") if tag == "pt-BR" else tag.split("-")[0]
    front, garage = model_values(tag)[0][0], model_values(tag)[1][0]
    shown = ask(server, envelope(intent("ShowCameraIntent", front), token, tag))
    assert video_url(shown) is not None
    assert speech(shown) == translate(locale, "Here is the %(name)s.", name="Front Door")
    refused = ask(server, envelope(intent("ShowCameraIntent", garage), token, tag))
    assert video_url(refused) is None
    assert TERMS[locale]["encryption"].lower() in speech(refused).lower()
    listed = speech(ask(server, envelope(intent("ListCamerasIntent"), token, tag)))
    counted = catalog(locale).ngettext(
        "You have %(count)d camera: %(names)s. Ready to show now: %(ready)s.",
        "You have %(count)d cameras: %(names)s. Ready to show now: %(ready)s.",
        5,
    )
    assert listed.startswith(counted.split("%(names)s")[0] % {"count": 5}), listed
    help_said = speech(ask(server, envelope(intent("AMAZON.HelpIntent"), token, tag)))
    assert help_said == translate(locale, NAMING_HELP)


NAMING_HELP = (
    "Ask me to show a camera, for example: show the front door. Or ask: what's wrong with the "
    "garage camera, or list my cameras."
)


def test_custom_skill_falls_back_to_english(server: LiveServer, token: str) -> None:
    """A locale camvoice does not speak (Dutch) is answered in English, not refused."""
    shown = ask(server, envelope(intent("ShowCameraIntent", "front door"), token, "nl-NL"))
    assert speech(shown) == "Here is the Front Door."


def test_japanese_lists_read_as_japanese(server: LiveServer, token: str) -> None:
    """Items joined with 、 and と, no English 'and' or comma."""
    listed = speech(ask(server, envelope(intent("ListCamerasIntent"), token, "ja-JP")))
    assert "カメラは5台あります" in listed and "Front Door、Garage" in listed
    assert " and " not in listed and ", " not in listed


# --- the simulator ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("utterance", "locale", "spoken", "tv"),
    [
        ("Alexa, zeige die Kamera Haustür", "de", "die Kamera Haustür", False),
        ("zeige das Kinderzimmer auf dem Fernseher", "de", "das Kinderzimmer", True),
        ("montre la caméra du garage", "fr", "la caméra du garage", False),
        ("mostra la cameretta sulla TV", "it", "la cameretta", True),
        ("mostre a câmera da garagem", "pt_BR", "a câmera da garagem", False),
        ("リビングのテレビで玄関を見せて", "ja", "玄関", True),
        ("muestra la cámara del garaje", "es", "la cámara del garaje", False),
        ("show the nursery on the living room TV", "en", "the nursery", True),
    ],
)
def test_simulator_hears_each_language(utterance: str, locale: str, spoken: str, tv: bool) -> None:
    assert spoken_camera(utterance) == spoken
    assert language_of(utterance, "en") == locale
    assert on_tv(utterance) is tv


def test_simulator_speaks_the_utterances_language(live: LiveServer, db: Database) -> None:
    """A German utterance on an English page: the custom skill is asked in de-DE and answers in
    German, and a blocked camera's reason is German too."""
    from tests.test_simulator import say

    with db.session() as session:
        seed(session, Registry(Outbox()))
    browser = Browser(live, language="de-DE")
    browser.sign_in(browser.open(live.url + "/oauth/login"), DEMO_EMAIL, DEMO_PASSWORD)
    page = unescape(say(browser, "alexa_custom", "zeige die Kamera Haustür"))
    assert '"locale": "de-DE"' in page
    assert "Hier ist die Kamera Front Door." in page
    blocked = unescape(say(browser, "google", "zeige die Kamera Garage"))
    assert explain(Blocker.ENCRYPTION_ON, "de") in blocked
