"""Account linking end to end over real HTTP, as Alexa and as Google do it, with a real OAuth
client library (Authlib's requests client): sign in, consent, code, tokens, refresh, revoke."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import requests
from sqlalchemy import select

from camvoice.db import Database
from camvoice.models import AuditEvent
from oauth.models import Grant, OAuthClient, Token
from oauth.tokens import Failure, Principal, authenticate_bearer
from tests.conftest import LiveServer
from tests.oauth_support import (
    ALEXA_URIS,
    GOOGLE_URIS,
    Browser,
    make_owner,
    oauth_session,
    register,
)

OWNER = "owner@example.com"


def bearer(db: Database, token: str) -> Principal | Failure:
    with db.session() as session:
        return authenticate_bearer(session, token)


def introspect(live: LiveServer, client, token: str) -> dict:  # type: ignore[no-untyped-def]
    response = requests.post(
        live.url + "/oauth/introspect",
        data={"token": token},
        auth=(client.client_id, client.secret),
        timeout=10,
    )
    assert response.status_code == 200
    return response.json()


def run_flow(live: LiveServer, db: Database, client, method: str) -> None:  # type: ignore[no-untyped-def]
    account_id = make_owner(db, OWNER, {"Front Door": {}, "Garage": {"image_encryption": True}})
    session = oauth_session(client, method)
    url, state = session.create_authorization_url(live.url + "/oauth/authorize")

    browser = Browser(live)
    login_page = browser.open(url)
    assert login_page.status_code == 200
    assert 'name="password"' in login_page.text
    consent = browser.sign_in(login_page, OWNER)
    assert consent.status_code == 200
    assert "Front Door" in consent.text and "Image Encryption is on" in consent.text

    approved = browser.decide(consent, "approve")
    assert approved.status_code == 302
    location = approved.headers["Location"]
    assert location.startswith(client.redirect_uri + "?")
    assert parse_qs(urlsplit(location).query)["state"] == [state]

    token = session.fetch_token(live.url + "/oauth/token", authorization_response=location)
    assert token["token_type"] == "Bearer"
    assert token["expires_in"] == 3600
    assert token["scope"] == "cameras"
    assert token["refresh_token"] and token["access_token"] != token["refresh_token"]

    principal = bearer(db, token["access_token"])
    assert isinstance(principal, Principal)
    assert principal.account_id == account_id
    assert principal.scopes == {"cameras"}
    assert introspect(live, client, token["access_token"])["active"] is True

    refreshed = session.refresh_token(
        live.url + "/oauth/token", refresh_token=token["refresh_token"]
    )
    assert refreshed["access_token"] != token["access_token"]
    assert refreshed["refresh_token"] != token["refresh_token"]
    assert isinstance(bearer(db, refreshed["access_token"]), Principal)

    revoked = session.revoke_token(
        live.url + "/oauth/revoke",
        token=refreshed["refresh_token"],
        token_type_hint="refresh_token",
    )
    assert revoked.status_code == 200
    assert bearer(db, refreshed["access_token"]) is Failure.REVOKED
    assert introspect(live, client, refreshed["access_token"]) == {"active": False}

    with db.session() as s:
        actions = s.scalars(
            select(AuditEvent.action).where(AuditEvent.account_id == account_id)
        ).all()
    assert "account.linked" in actions and "account.unlinked" in actions


def test_alexa_links_with_basic_auth(live: LiveServer, db: Database) -> None:
    client = register(db, "Amazon Alexa", ALEXA_URIS, "alexa")
    run_flow(live, db, client, "client_secret_basic")


def test_google_links_with_credentials_in_body(live: LiveServer, db: Database) -> None:
    client = register(db, "Google Home", GOOGLE_URIS, "google")
    run_flow(live, db, client, "client_secret_post")


def test_token_response_is_not_cacheable(live: LiveServer, db: Database) -> None:
    from tests.oauth_support import get_code, token_request

    client = register(db, "Google Home", GOOGLE_URIS, "google")
    make_owner(db, OWNER)
    code = get_code(live, client, OWNER)
    response = token_request(
        live, client, grant_type="authorization_code", code=code, redirect_uri=client.redirect_uri
    )
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert set(response.json()) == {
        "access_token",
        "token_type",
        "expires_in",
        "refresh_token",
        "scope",
    }


def test_deny_redirects_with_access_denied_and_state(live: LiveServer, db: Database) -> None:
    client = register(db, "Amazon Alexa", ALEXA_URIS, "alexa")
    make_owner(db, OWNER)
    url, state = oauth_session(client, "client_secret_basic").create_authorization_url(
        live.url + "/oauth/authorize"
    )
    browser = Browser(live)
    denied = browser.decide(browser.sign_in(browser.open(url), OWNER), "deny")
    query = parse_qs(urlsplit(denied.headers["Location"]).query)
    assert query["error"] == ["access_denied"]
    assert query["state"] == [state]
    assert "code" not in query


def test_consent_in_spanish_lists_google_blockers(live: LiveServer, db: Database) -> None:
    client = register(db, "Google Home", GOOGLE_URIS, "google")
    make_owner(db, OWNER, {"Nursery": {"audio": False}})
    url, _ = oauth_session(client, "client_secret_post").create_authorization_url(
        live.url + "/oauth/authorize"
    )
    browser = Browser(live, language="es-ES,es;q=0.9")
    consent = browser.sign_in(browser.open(url), OWNER)
    assert "¿Vincular Google Home?" in consent.text
    assert "El audio está desactivado" in consent.text


def test_pages_forbid_framing_and_cookie_is_httponly_lax(live: LiveServer, db: Database) -> None:
    client = register(db, "Amazon Alexa", ALEXA_URIS, "alexa")
    url, _ = oauth_session(client, "client_secret_basic").create_authorization_url(
        live.url + "/oauth/authorize"
    )
    page = requests.get(url, timeout=10)
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    cookie = page.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # public URL is http in this test


def test_secure_cookie_when_public_url_is_https(settings, db: Database) -> None:  # type: ignore[no-untyped-def]
    from service.app import create_app

    https = settings.model_copy(update={"public_url": "https://cams.example.com"})
    client = register(db, "Amazon Alexa", ALEXA_URIS, "alexa")
    with LiveServer(create_app(https, db)) as live:
        url, _ = oauth_session(client, "client_secret_basic").create_authorization_url(
            live.url + "/oauth/authorize"
        )
        assert "Secure" in requests.get(url, timeout=10).headers["Set-Cookie"]


def test_metadata_uses_configured_url_not_forged_headers(live: LiveServer) -> None:
    response = live.get(
        "/.well-known/oauth-authorization-server",
        headers={
            "Host": "evil.example",
            "X-Forwarded-Host": "evil.example",
            "X-Forwarded-Proto": "https",
        },
    )
    meta = response.json()
    assert meta["issuer"] == "http://127.0.0.1:8080"
    assert meta["token_endpoint"] == "http://127.0.0.1:8080/oauth/token"
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert "client_secret_post" in meta["revocation_endpoint_auth_methods_supported"]
    assert "evil" not in response.text


def test_second_link_keeps_the_first(live: LiveServer, db: Database) -> None:
    from tests.oauth_support import link

    client = register(db, "Amazon Alexa", ALEXA_URIS, "alexa")
    make_owner(db, OWNER)
    _, first = link(live, client, OWNER)
    _, second = link(live, client, OWNER)
    assert isinstance(bearer(db, first["access_token"]), Principal)
    assert isinstance(bearer(db, second["access_token"]), Principal)


def test_secrets_are_stored_only_as_hashes(live: LiveServer, db: Database) -> None:
    from tests.oauth_support import link

    client = register(db, "Amazon Alexa", ALEXA_URIS, "alexa")
    make_owner(db, OWNER)
    _, token = link(live, client, OWNER)
    with db.session() as s:
        stored = [t.token_hash for t in s.scalars(select(Token))]
        stored += [c.secret_hash or "" for c in s.scalars(select(OAuthClient))]
        assert s.scalars(select(Grant)).one()
    blob = " ".join(stored)
    for secret in (token["access_token"], token["refresh_token"], client.secret):
        assert secret not in blob
    assert all(len(h) == 64 for h in stored)


def test_debug_logging_never_shows_tokens(
    settings,
    db: Database,
    caplog,  # type: ignore[no-untyped-def]
) -> None:
    import logging

    from service.app import create_app
    from tests.oauth_support import link

    debug = settings.model_copy(update={"log_level": "DEBUG"})
    client = register(db, "Amazon Alexa", ALEXA_URIS, "alexa")
    make_owner(db, OWNER)
    with caplog.at_level(logging.DEBUG), LiveServer(create_app(debug, db)) as live:
        _, token = link(live, client, OWNER)
    text = caplog.text
    assert token["access_token"] not in text and token["refresh_token"] not in text
    assert client.secret not in text
