"""Flask-Babel for the pages: the locale each request's Accept-Language asks for, among the
languages camvoice speaks, and the shared catalogs (camvoice/languages.py) behind `_()`."""

from __future__ import annotations

from flask import Flask, request
from flask_babel import Babel

from camvoice.languages import TRANSLATIONS, negotiate


def page_locale() -> str:
    """The reader's most preferred language we speak ('pt-PT' reads our pt_BR), else English."""
    return negotiate(request.accept_languages.values())


def install(app: Flask) -> None:
    """Translations for every template (`_`, `gettext`, `ngettext`) and view of `app`."""
    Babel(app, locale_selector=page_locale, default_translation_directories=str(TRANSLATIONS))
