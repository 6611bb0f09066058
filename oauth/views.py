"""HTTP endpoints of the authorization server: sign-in, consent, token, revoke, introspect,
metadata. Protocol work is Authlib's; these views add the pages, CSRF, rate limits and headers."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from authlib.oauth2 import OAuth2Error
from flask import (
    Blueprint,
    Response,
    current_app,
    redirect,
    render_template,
    request,
    session,
)
from flask_babel import get_locale, gettext, ngettext

from camvoice.accounts import authenticate, normalize_email
from camvoice.languages import html_lang
from camvoice.models import Account
from camvoice.ratelimit import attempt, sign_in_limits
from camvoice.readiness import Assistant, explain, readiness
from camvoice.services import Services
from camvoice.sessions import COOKIE
from oauth.models import SCOPES, OAuthClient

bp = Blueprint(
    "oauth",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/oauth/static",
)

PAGE_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; frame-ancestors 'none'"
)


def server() -> Any:
    return current_app.extensions["camvoice.oauth_server"]


def services() -> Services:
    return Services.of(current_app)


def language() -> str:
    """The locale Flask-Babel negotiated from Accept-Language ('es', 'pt_BR')."""
    return str(get_locale())


ASSISTANT_NAMES = {"alexa": "Alexa", "google": "Google Assistant"}


def scope_text(scope: str) -> str:
    """What a scope lets the assistant do, in the owner's words."""
    texts = {"cameras": gettext("See your cameras and their settings, and play their live video.")}
    return texts.get(scope, scope)


@bp.after_request
def security_headers(response: Response) -> Response:
    if response.mimetype == "text/html":
        response.headers["Content-Security-Policy"] = PAGE_CSP
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
    return response


def page(template: str, status: int = 200, **context: Any) -> tuple[str, int]:
    return render_template(template, lang=html_lang(language()), **context), status


def signed_in_account() -> Account | None:
    """The owner whose live server-side session the request's cookie names."""
    signed_in = services().sessions.signed_in(services().db, request.cookies.get(COOKIE))
    if signed_in is None:
        return None
    with services().db.reading() as db_session:
        return db_session.get(Account, signed_in.account_id)


# --- authorization endpoint -------------------------------------------------------------------


# What RFC 6749 allows in an error_description (%x20-21 / %x23-5B / %x5D-7E).
ERROR_TEXT = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")


@bp.route("/oauth/authorize", methods=["GET", "POST"])
def authorize() -> Any:
    """Sign-in, then consent, then a redirect with the code (or access_denied)."""
    for name in ("response_type", "redirect_uri"):
        # Authlib quotes these in its error descriptions and raises ValueError when one holds
        # a character RFC 6749 forbids there: refuse them first, as an invalid request.
        if not ERROR_TEXT.fullmatch(request.values.get(name, "")):
            return page("error.html", 400, error="invalid_request",
                        description=f"Unexpected characters in {name}.")  # fmt: skip
    account = signed_in_account()
    try:
        grant = server().get_consent_grant(end_user=account)
    except OAuth2Error as error:
        if error.redirect_uri:  # client and redirect URI are valid: tell the client
            return server().handle_error_response(None, error)
        return page("error.html", 400, error=error.error, description=error.description)

    client: OAuthClient = grant.client
    if account is None:
        return page(
            "login.html", next=request.full_path, email="", error=None, client_name=client.name
        )
    if request.method == "GET":
        return consent_page(client, account, grant.request.scope)
    approved = request.form.get("decision") == "approve"
    return server().create_authorization_response(
        grant=grant, grant_user=account if approved else None
    )


def consent_page(client: OAuthClient, account: Account, scope: str) -> tuple[str, int]:
    lang = language()
    assistant = Assistant(client.assistant) if client.assistant in ("alexa", "google") else None
    with services().db.reading() as db_session:
        owned = services().registry.owned_cameras(db_session, account.id)
        cameras = [
            {
                "name": cam.name,
                "reasons": [explain(b, lang) for b in readiness(cam, assistant)]
                if assistant
                else [],
            }
            for cam in owned
        ]
    return page(
        "consent.html",
        client=client,
        account=account,
        scopes=[scope_text(s) for s in scope.split()],
        assistant_name=ASSISTANT_NAMES.get(client.assistant or "") or gettext("this assistant"),
        cameras=cameras,
        any_blocked=any(c["reasons"] for c in cameras),
        action=request.full_path,
    )


# --- sign-in ----------------------------------------------------------------------------------


def safe_next(target: str | None) -> str:
    """Only ever continue to a local path: never an open redirect."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/oauth/authorize"
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else "/oauth/authorize"


@bp.get("/oauth/login")
def login_form() -> tuple[str, int]:
    return page(
        "login.html",
        next=safe_next(request.args.get("next")),
        email="",
        error=None,
        client_name=None,
    )


@bp.post("/oauth/login")
def login() -> Any:
    """Check the password, under failure limits per account and address, per address, and per
    account (README, "Sign-in"), then start a server-side session."""
    cfg = services().settings
    email = normalize_email(request.form.get("email", ""))[:254]
    password = request.form.get("password", "")
    target = safe_next(request.form.get("next"))
    window = timedelta(seconds=cfg.login_window)
    address = request.remote_addr or "unknown"
    keys = sign_in_limits(cfg, email, address)
    limiter = services().limiter
    # Counted before the password is checked, forgiven on success; not counted when throttled.
    wait = attempt(limiter, keys, window)
    if wait:
        services().metrics.signin_throttled.inc()
        body, _ = page(
            "login.html",
            next=target,
            email=email,
            client_name=None,
            error=ngettext(
                "Too many failed attempts. Try again in %(num)d minute.",
                "Too many failed attempts. Try again in %(num)d minutes.",
                max(1, round(wait / 60)),
            ),
        )
        return Response(body, 429, headers={"Retry-After": str(wait)}, mimetype="text/html")
    account_id = authenticate(services().db, email, password)
    if account_id is not None:
        with services().db.session() as db_session:
            # A fresh session on sign-in (no fixation): the one this browser had ends.
            services().sessions.end(db_session, request.cookies.get(COOKIE), everywhere=False)
            token = services().sessions.start(db_session, account_id)
    if account_id is None:
        return page(
            "login.html",
            401,
            next=target,
            email=email,
            client_name=None,
            error=gettext("That email and password do not match an account."),
        )
    for key, _ in keys:
        limiter.forgive(key)
    session.clear()  # a new CSRF token too
    response = redirect(target, code=303)
    response.set_cookie(COOKIE, token, httponly=True, samesite="Lax",
                        secure=current_app.config["SESSION_COOKIE_SECURE"])  # fmt: skip
    return response


@bp.post("/oauth/logout")
def logout() -> Any:
    """Sign out: every session of the account ends, on every instance, and with it the
    console's streams; a copy of the cookie opens nothing any more."""
    target = safe_next(request.form.get("next"))
    with services().db.session() as db_session:
        services().sessions.end(db_session, request.cookies.get(COOKIE), everywhere=True)
    session.clear()
    response = redirect(target, code=303)
    response.delete_cookie(COOKIE, httponly=True, samesite="Lax",
                           secure=current_app.config["SESSION_COOKIE_SECURE"])  # fmt: skip
    return response


# --- token, revocation, introspection, metadata ----------------------------------------------


@bp.post("/oauth/token")
def token() -> Response:
    response: Response = server().create_token_response()
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


@bp.post("/oauth/revoke")
def revoke() -> Response:
    return server().create_endpoint_response("revocation")  # type: ignore[no-any-return]


@bp.post("/oauth/introspect")
def introspect() -> Response:
    response: Response = server().create_endpoint_response("introspection")
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/.well-known/oauth-authorization-server")
def metadata() -> dict[str, Any]:
    """RFC 8414, built from the configured public URL, never from request headers."""
    base = services().settings.public_url
    auth_methods = ["client_secret_basic", "client_secret_post", "none"]
    return {
        "issuer": base,
        "authorization_endpoint": f"{base}/oauth/authorize",
        "token_endpoint": f"{base}/oauth/token",
        "revocation_endpoint": f"{base}/oauth/revoke",
        "introspection_endpoint": f"{base}/oauth/introspect",
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "introspection_endpoint_auth_methods_supported": auth_methods[:2],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": list(SCOPES),
    }
