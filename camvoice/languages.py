"""The languages camvoice speaks, and their gettext catalogs.

One catalog per language holds every sentence of the service (pages, readiness reasons, the
custom skill's speech): camvoice/translations/<locale>/LC_MESSAGES/messages.po, compiled to .mo
by the build (Makefile, and the wheel's build hook). The core reads it through plain Babel;
the web pages through Flask-Babel, pointed at the same folder.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from pathlib import Path

from babel.support import NullTranslations, Translations

TRANSLATIONS = Path(__file__).parent / "translations"
DOMAIN = "messages"
DEFAULT = "en"
# gettext locale -> the BCP 47 tag pages put in <html lang> and Alexa puts in its requests.
LOCALES: dict[str, str] = {
    "en": "en-US",
    "es": "es-ES",
    "de": "de-DE",
    "fr": "fr-FR",
    "it": "it-IT",
    "pt_BR": "pt-BR",
    "ja": "ja-JP",
}


def N_(message: str) -> str:
    """Marks a sentence for extraction where it is defined; it is translated where it is used
    (gettext's conventional name, which `make messages` extracts)."""
    return message


def NP_(singular: str, plural: str) -> tuple[str, str]:
    """Marks a singular/plural pair for extraction; ngettext picks one where it is used."""
    return singular, plural


def locale_of(tag: str | None) -> str | None:
    """The supported locale for a language tag, or None: 'es-MX' -> 'es', 'pt-PT' -> 'pt_BR'
    (our one Portuguese), 'fr_CA' -> 'fr', 'de' -> 'de', 'nl-NL' -> None."""
    parts = (tag or "").replace("_", "-").split("-")
    language = parts[0].lower()
    if not language:
        return None
    return next((loc for loc in LOCALES if loc.split("_")[0] == language), None)


def negotiate(tags: Iterable[str]) -> str:
    """The first supported locale among tags ranked by preference (Accept-Language order)."""
    return next((loc for loc in map(locale_of, tags) if loc is not None), DEFAULT)


def html_lang(locale: str) -> str:
    """The tag for <html lang>: the language alone, with the region where we have one language
    per region ('pt-BR'), so a reader's browser picks the right spelling and voice."""
    return locale.replace("_", "-")


@cache
def catalog(locale: str) -> NullTranslations:
    """The compiled catalog of a supported locale (English is the msgids themselves)."""
    if locale not in LOCALES or locale == DEFAULT:
        return NullTranslations()
    return Translations.load(str(TRANSLATIONS), [locale], DOMAIN)


def translate(language: str | None, message: str, **values: object) -> str:
    """`message` in the language a tag or locale names (English when unsupported), with
    %(name)s placeholders filled in."""
    text = catalog(locale_of(language) or DEFAULT).gettext(message)
    return text % values if values else text
