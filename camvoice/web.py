"""Request-side helpers every blueprint shares: settings, database, CSRF, security headers."""

from __future__ import annotations

import hmac
import secrets

from flask import abort, current_app, request, session

from camvoice.db import Database
from camvoice.settings import Settings

CSRF_FIELD = "csrf_token"


def database() -> Database:
    """The current app's database (inside a request or app context)."""
    return current_app.extensions["camvoice.db"]  # type: ignore[no-any-return]


def settings() -> Settings:
    return current_app.extensions["camvoice.settings"]  # type: ignore[no-any-return]


def csrf_token() -> str:
    """The session's CSRF token, made on first use; templates put it in every form."""
    token = session.get(CSRF_FIELD)
    if not token:
        token = secrets.token_urlsafe(32)
        session[CSRF_FIELD] = token
    return str(token)


def check_csrf() -> None:
    """Refuse a form post whose token is missing or not this session's (400)."""
    sent = request.form.get(CSRF_FIELD, "")
    expected = session.get(CSRF_FIELD, "")
    if (
        not sent
        or not expected
        or not hmac.compare_digest(str(sent).encode(), str(expected).encode())
    ):
        abort(400, description="The form expired or was not sent from this site. Reload and retry.")


def client_ip() -> str:
    """The caller's address; ProxyFix (CAMVOICE_PROXY_HOPS) makes it the real client's."""
    return request.remote_addr or "unknown"


def language() -> str:
    """'es' or 'en' from Accept-Language."""
    best = request.accept_languages.best_match(["en", "es"], default="en")
    return best or "en"
