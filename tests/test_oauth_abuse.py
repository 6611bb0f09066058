"""Every abuse case refused with the RFC error: redirect URIs, codes, PKCE, refresh reuse,
revoked and expired tokens, CSRF, brute force, cross-owner access, malformed input."""

from __future__ import annotations

import base64
import hashlib
import threading
from datetime import timedelta
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from sqlalchemy import update

from camvoice.cameras import Registry
from camvoice.db import Database
from camvoice.models import Camera, utcnow
from camvoice.outbox import Outbox
from oauth.models import AuthorizationCode, Token
from oauth.tokens import Failure, Principal, authenticate_bearer
from tests.conftest import LiveServer
from tests.oauth_support import (
    ALEXA_URIS,
    CSRF,
    GOOGLE_URIS,
    PASSWORD,
    Browser,
    Client,
    csrf_of,
    get_code,
    link,
    make_owner,
    register,
    token_request,
)

OWNER = "owner@example.com"


@pytest.fixture
def alexa(db: Database) -> Client:
    make_owner(db, OWNER, {"Front Door": {}})
    return register(db, "Amazon Alexa", ALEXA_URIS, "alexa")


def bearer(db: Database, token: str) -> Principal | Failure:
    with db.session() as session:
        return authenticate_bearer(session, token)


def authorize_url(live: LiveServer, client_id: str, redirect_uri: str, **extra: str) -> str:
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "state": "st4te",
        **extra,
    }
    return live.url + "/oauth/authorize?" + urlencode(query)


def redeem(live: LiveServer, client: Client, code: str, **extra: str) -> requests.Response:
    return token_request(
        live,
        client,
        grant_type="authorization_code",
        code=code,
        redirect_uri=client.redirect_uri,
        **extra,
    )


# --- redirect URIs and clients ---------------------------------------------------------------


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "https://evil.example/api/skill/link/M2AAAAAAAAAAAA",
        ALEXA_URIS[0] + "/extra",
        ALEXA_URIS[0] + "?x=1",
        ALEXA_URIS[0].upper(),
        ALEXA_URIS[0] + "/",
    ],
)
def test_unregistered_redirect_uri_gets_error_page_never_redirect(
    live: LiveServer, alexa: Client, redirect_uri: str
) -> None:
    page = requests.get(
        authorize_url(live, alexa.client_id, redirect_uri), timeout=10, allow_redirects=False
    )
    assert page.status_code == 400
    assert "Location" not in page.headers
    assert "invalid_request" in page.text


def test_unknown_client_gets_error_page(live: LiveServer, alexa: Client) -> None:
    page = requests.get(
        authorize_url(live, "nope", ALEXA_URIS[0]), timeout=10, allow_redirects=False
    )
    assert page.status_code == 400
    assert "Location" not in page.headers
    assert "invalid_client" in page.text


def test_unknown_scope_redirects_with_invalid_scope(live: LiveServer, alexa: Client) -> None:
    page = requests.get(
        authorize_url(live, alexa.client_id, ALEXA_URIS[0], scope="admin"),
        timeout=10,
        allow_redirects=False,
    )
    assert page.status_code == 302
    query = parse_qs(urlsplit(page.headers["Location"]).query)
    assert query["error"] == ["invalid_scope"] and query["state"] == ["st4te"]


def test_token_redirect_uri_must_match_the_code(live: LiveServer, alexa: Client) -> None:
    code = get_code(live, alexa, OWNER)
    response = token_request(
        live, alexa, grant_type="authorization_code", code=code, redirect_uri=ALEXA_URIS[1]
    )
    assert (response.status_code, response.json()["error"]) == (400, "invalid_grant")


# --- codes ---------------------------------------------------------------------------------


def test_code_replay_fails_and_revokes_what_it_issued(
    live: LiveServer, db: Database, alexa: Client
) -> None:
    code = get_code(live, alexa, OWNER)
    first = redeem(live, alexa, code)
    assert first.status_code == 200
    replay = redeem(live, alexa, code)
    assert (replay.status_code, replay.json()["error"]) == (400, "invalid_grant")
    assert bearer(db, first.json()["access_token"]) is Failure.REVOKED
    refresh = token_request(
        live, alexa, grant_type="refresh_token", refresh_token=first.json()["refresh_token"]
    )
    assert refresh.json()["error"] == "invalid_grant"


def test_code_of_another_client_is_refused(live: LiveServer, db: Database, alexa: Client) -> None:
    other = register(db, "Google Home", GOOGLE_URIS, "google")
    code = get_code(live, alexa, OWNER)
    stolen = token_request(
        live, other, grant_type="authorization_code", code=code, redirect_uri=alexa.redirect_uri
    )
    assert (stolen.status_code, stolen.json()["error"]) == (400, "invalid_grant")
    assert redeem(live, alexa, code).status_code == 200  # the rightful client still can


def test_expired_code_is_refused(live: LiveServer, db: Database, alexa: Client) -> None:
    code = get_code(live, alexa, OWNER)
    with db.session() as s:
        s.execute(update(AuthorizationCode).values(expires_at=utcnow() - timedelta(seconds=1)))
    response = redeem(live, alexa, code)
    assert (response.status_code, response.json()["error"]) == (400, "invalid_grant")


def test_concurrent_redemptions_cannot_both_succeed(live: LiveServer, alexa: Client) -> None:
    for _ in range(3):
        code = get_code(live, alexa, OWNER)
        barrier = threading.Barrier(4)
        results: list[int] = []

        def go(
            code: str = code, barrier: threading.Barrier = barrier, results: list[int] = results
        ) -> None:
            barrier.wait()
            results.append(redeem(live, alexa, code).status_code)

        threads = [threading.Thread(target=go) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(results) == [200, 400, 400, 400]


# --- PKCE ----------------------------------------------------------------------------------


def s256(verifier: str) -> str:
    return (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )


VERIFIER = "v" * 20 + "-verifier-" + "x" * 30


def test_pkce_verifier_mismatch_is_invalid_grant(
    live: LiveServer, db: Database, alexa: Client
) -> None:
    code = get_code(live, alexa, OWNER, code_challenge=s256(VERIFIER), code_challenge_method="S256")
    wrong = redeem(live, alexa, code, code_verifier="w" * 50)
    assert (wrong.status_code, wrong.json()["error"]) == (400, "invalid_grant")
    # The thief's failed try neither spent the code nor unlinked: the real client still can.
    first = redeem(live, alexa, code, code_verifier=VERIFIER)
    assert first.status_code == 200
    # A replay with a made-up verifier is refused without revoking the real client's link...
    assert redeem(live, alexa, code, code_verifier="w" * 50).json()["error"] == "invalid_grant"
    assert isinstance(bearer(db, first.json()["access_token"]), Principal)
    # ...while a replay that proves possession of the verifier does revoke it (RFC 6749 4.1.2).
    assert redeem(live, alexa, code, code_verifier=VERIFIER).json()["error"] == "invalid_grant"
    assert bearer(db, first.json()["access_token"]) is Failure.REVOKED


def test_pkce_right_verifier_works(live: LiveServer, alexa: Client) -> None:
    code = get_code(live, alexa, OWNER, code_challenge=s256(VERIFIER), code_challenge_method="S256")
    assert redeem(live, alexa, code, code_verifier=VERIFIER).status_code == 200


def test_verifier_without_challenge_is_rejected(live: LiveServer, alexa: Client) -> None:
    code = get_code(live, alexa, OWNER)
    response = redeem(live, alexa, code, code_verifier=VERIFIER)
    assert (response.status_code, response.json()["error"]) == (400, "invalid_request")


def test_plain_challenge_method_is_refused(live: LiveServer, alexa: Client) -> None:
    page = requests.get(
        authorize_url(
            live,
            alexa.client_id,
            ALEXA_URIS[0],
            code_challenge=VERIFIER,
            code_challenge_method="plain",
        ),
        timeout=10,
        allow_redirects=False,
    )
    assert parse_qs(urlsplit(page.headers["Location"]).query)["error"] == ["invalid_request"]


def test_public_client_must_use_pkce(live: LiveServer, db: Database, alexa: Client) -> None:
    public = register(db, "Test app", ["http://127.0.0.1:9/cb"], "other", public=True)
    page = requests.get(
        authorize_url(live, public.client_id, public.redirect_uri),
        timeout=10,
        allow_redirects=False,
    )
    assert parse_qs(urlsplit(page.headers["Location"]).query)["error"] == ["invalid_request"]
    code = get_code(
        live, public, OWNER, code_challenge=s256(VERIFIER), code_challenge_method="S256"
    )
    ok = redeem(live, public, code, code_verifier=VERIFIER)
    assert ok.status_code == 200


# --- refresh tokens ------------------------------------------------------------------------


def refresh(live: LiveServer, client: Client, token: str) -> requests.Response:
    return token_request(live, client, grant_type="refresh_token", refresh_token=token)


def test_refresh_rotation_grace_and_reuse_detection(
    live: LiveServer, db: Database, alexa: Client
) -> None:
    _, first = link(live, alexa, OWNER)
    r1 = first["refresh_token"]
    second = refresh(live, alexa, r1)
    assert second.status_code == 200
    r2 = second.json()["refresh_token"]
    # Our answer got lost: the client retries with r1, which still works until r2 is used.
    retry = refresh(live, alexa, r1)
    assert retry.status_code == 200
    third = refresh(live, alexa, r2)
    assert third.status_code == 200
    fresh_access = third.json()["access_token"]
    assert isinstance(bearer(db, fresh_access), Principal)
    # r1 is now superseded: presenting it means it leaked, so the whole link dies.
    reused = refresh(live, alexa, r1)
    assert (reused.status_code, reused.json()["error"]) == (400, "invalid_grant")
    assert bearer(db, fresh_access) is Failure.REVOKED
    assert refresh(live, alexa, third.json()["refresh_token"]).json()["error"] == "invalid_grant"


def test_a_used_refresh_token_is_retried_only_briefly(
    live: LiveServer, db: Database, alexa: Client
) -> None:
    from oauth.models import Token
    from oauth.tokens import REFRESH_RETRY_GRACE

    _, first = link(live, alexa, OWNER)
    second = refresh(live, alexa, first["refresh_token"])
    assert second.status_code == 200
    with db.session() as s:  # the retry comes long after the answer was lost
        s.execute(
            update(Token)
            .where(Token.used_at.is_not(None))
            .values(used_at=utcnow() - REFRESH_RETRY_GRACE - timedelta(seconds=1))
        )
    late = refresh(live, alexa, first["refresh_token"])
    assert (late.status_code, late.json()["error"]) == (400, "invalid_grant")
    assert bearer(db, second.json()["access_token"]) is Failure.REVOKED


def test_refresh_token_of_another_client_is_refused(
    live: LiveServer, db: Database, alexa: Client
) -> None:
    google = register(db, "Google Home", GOOGLE_URIS, "google")
    _, token = link(live, alexa, OWNER)
    response = refresh(live, google, token["refresh_token"])
    assert (response.status_code, response.json()["error"]) == (400, "invalid_grant")


def test_refresh_cannot_widen_scope(live: LiveServer, alexa: Client) -> None:
    _, token = link(live, alexa, OWNER)
    response = token_request(
        live,
        alexa,
        grant_type="refresh_token",
        refresh_token=token["refresh_token"],
        scope="cameras admin",
    )
    assert (response.status_code, response.json()["error"]) == (400, "invalid_scope")


def test_unknown_refresh_token_is_invalid_grant(live: LiveServer, alexa: Client) -> None:
    response = refresh(live, alexa, "not-a-token")
    assert (response.status_code, response.json()["error"]) == (400, "invalid_grant")


# --- access tokens -------------------------------------------------------------------------


def test_revoked_and_expired_access_tokens(live: LiveServer, db: Database, alexa: Client) -> None:
    session, token = link(live, alexa, OWNER)
    assert bearer(db, "") is Failure.MISSING
    assert bearer(db, "garbage") is Failure.INVALID
    with db.session() as s:
        s.execute(
            update(Token)
            .where(Token.kind == "access")
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    assert bearer(db, token["access_token"]) is Failure.EXPIRED
    _, other = link(live, alexa, OWNER)
    session.revoke_token(
        live.url + "/oauth/revoke", token=other["access_token"], token_type_hint="access_token"
    )
    assert bearer(db, other["access_token"]) is Failure.REVOKED
    # revoking an access token leaves its refresh token (and the link) alive
    assert refresh(live, alexa, other["refresh_token"]).status_code == 200


def test_one_owners_token_never_reaches_another_owners_camera(
    live: LiveServer, db: Database, alexa: Client
) -> None:
    make_owner(db, "intruder@example.com")
    _, token = link(live, alexa, "intruder@example.com")
    principal = bearer(db, token["access_token"])
    assert isinstance(principal, Principal)
    with db.session() as s:
        victim_camera = s.query(Camera).one()
        registry = Registry(Outbox())
        assert registry.owned_camera(s, principal.account_id, victim_camera.id) is None
        assert registry.owned_cameras(s, principal.account_id) == []


def test_one_owners_console_never_reaches_another_owners_camera(
    live: LiveServer, db: Database, alexa: Client
) -> None:
    """Another owner's camera looks like none at all: 404 to view or fix it, nothing changed."""
    make_owner(db, "intruder@example.com")
    with db.session() as s:
        victim = s.query(Camera).one()
        victim_id, audio = victim.id, victim.audio
    browser = Browser(live)
    login = browser.open(live.url + "/oauth/login?next=/console")
    console = browser.sign_in(login, "intruder@example.com")
    assert console.status_code == 200 and "Front Door" not in console.text
    assert browser.open(f"{live.url}/console/cameras/{victim_id}/live").status_code == 404
    fixed = browser.http.post(
        f"{live.url}/console/cameras/{victim_id}/fix",
        data={"csrf_token": csrf_of(console.text), "fix": "audio"},
        timeout=10,
        allow_redirects=False,
    )
    assert fixed.status_code == 404
    with db.session() as s:
        assert s.get(Camera, victim_id).audio == audio  # type: ignore[union-attr]


def test_introspection_hides_other_clients_tokens(
    live: LiveServer, db: Database, alexa: Client
) -> None:
    google = register(db, "Google Home", GOOGLE_URIS, "google")
    _, token = link(live, alexa, OWNER)
    seen = requests.post(
        live.url + "/oauth/introspect",
        data={"token": token["access_token"]},
        auth=(google.client_id, google.secret),
        timeout=10,
    )
    assert seen.json() == {"active": False}
    unauth = requests.post(
        live.url + "/oauth/introspect", data={"token": token["access_token"]}, timeout=10
    )
    assert unauth.status_code == 401


# --- client authentication and malformed input ----------------------------------------------


def test_wrong_secret_basic_is_401_with_www_authenticate(live: LiveServer, alexa: Client) -> None:
    response = requests.post(
        live.url + "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": "x"},
        auth=(alexa.client_id, "wrong"),
        timeout=10,
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert response.headers["WWW-Authenticate"].startswith("Basic ")


def test_wrong_secret_post_is_invalid_client(live: LiveServer, alexa: Client) -> None:
    response = requests.post(
        live.url + "/oauth/token",
        timeout=10,
        data={
            "grant_type": "refresh_token",
            "refresh_token": "x",
            "client_id": alexa.client_id,
            "client_secret": "wrong",
        },
    )
    assert response.status_code in (400, 401)
    assert response.json()["error"] == "invalid_client"


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"grant_type": "password", "username": "a", "password": "b"}, "unsupported_grant_type"),
        ({"grant_type": "client_credentials"}, "unsupported_grant_type"),
        ({}, "unsupported_grant_type"),
        ({"grant_type": "authorization_code"}, "invalid_request"),
        ({"grant_type": "refresh_token"}, "invalid_request"),
    ],
)
def test_token_endpoint_errors_follow_rfc6749(
    live: LiveServer, alexa: Client, data: dict, error: str
) -> None:
    response = token_request(live, alexa, **data)
    assert response.status_code == 400
    assert response.json()["error"] == error


@pytest.mark.parametrize(
    ("path", "kwargs"),
    [
        (
            "/oauth/token",
            {"data": b"\xff\xfe{not json", "headers": {"Content-Type": "application/json"}},
        ),
        (
            "/oauth/token",
            {
                "data": "grant_type=authorization_code&code=%%%",
                "headers": {"Content-Type": "application/x-www-form-urlencoded"},
            },
        ),
        (
            "/oauth/token",
            {
                "headers": {"Authorization": "Basic !!!notbase64"},
                "data": {"grant_type": "refresh_token"},
            },
        ),
        ("/oauth/revoke", {"data": {"token": "x"}}),
        ("/oauth/revoke", {"data": b"\x00\x01", "headers": {"Content-Type": "text/plain"}}),
        ("/oauth/introspect", {"json": {"token": 1}}),
        ("/oauth/login", {"data": {"email": "x"}}),
    ],
)
def test_malformed_input_never_500(
    live: LiveServer, alexa: Client, path: str, kwargs: dict
) -> None:
    response = requests.post(live.url + path, timeout=10, **kwargs)
    assert 400 <= response.status_code < 500, response.text
    assert "Traceback" not in response.text


def test_revoke_needs_client_auth(live: LiveServer, db: Database, alexa: Client) -> None:
    _, token = link(live, alexa, OWNER)
    response = requests.post(
        live.url + "/oauth/revoke", data={"token": token["refresh_token"]}, timeout=10
    )
    assert response.status_code == 401
    assert isinstance(bearer(db, token["access_token"]), Principal)


# --- sign-in and consent forms --------------------------------------------------------------


def test_missing_csrf_token_is_refused(live: LiveServer, db: Database, alexa: Client) -> None:
    browser = Browser(live)
    page = browser.open(authorize_url(live, alexa.client_id, ALEXA_URIS[0]))
    no_token = browser.http.post(
        live.url + "/oauth/login", data={"email": OWNER, "password": PASSWORD}, timeout=10
    )
    assert no_token.status_code == 400
    consent = browser.sign_in(page, OWNER)
    forged = browser.http.post(
        authorize_url(live, alexa.client_id, ALEXA_URIS[0]),
        data={"decision": "approve", "csrf_token": "forged"},
        timeout=10,
        allow_redirects=False,
    )
    assert forged.status_code == 400
    assert "Location" not in forged.headers
    # The console's forms are held the same way, by the same app-wide check.
    for path in ("/console/ezviz", "/oauth/logout", "/simulator"):
        refused = browser.http.post(live.url + path, data={"csrf_token": "forged"}, timeout=10)
        assert refused.status_code == 400, path
        assert "form expired" in refused.text
    assert browser.decide(consent, "approve").status_code == 302


def test_sign_in_failures_hit_the_account_limit(
    live: LiveServer, db: Database, alexa: Client
) -> None:
    browser = Browser(live)
    page = browser.open(authorize_url(live, alexa.client_id, ALEXA_URIS[0]))
    statuses = [browser.sign_in(page, OWNER, "wrong password").status_code for _ in range(5)]
    assert statuses == [401] * 5
    blocked = browser.sign_in(page, OWNER)  # even the right password, now
    assert blocked.status_code == 429
    assert 0 < int(blocked.headers["Retry-After"]) <= 900
    unknown = browser.sign_in(page, "nobody@example.com", "whatever")
    assert unknown.status_code == 401
    assert "do not match an account" in unknown.text


def test_parallel_guesses_cannot_slip_under_the_limit(
    live: LiveServer, db: Database, alexa: Client
) -> None:
    browsers = [Browser(live) for _ in range(12)]
    pages = [b.open(authorize_url(live, alexa.client_id, ALEXA_URIS[0])) for b in browsers]
    barrier = threading.Barrier(len(browsers))
    statuses: list[int] = []

    def guess(browser: Browser, page: requests.Response) -> None:
        barrier.wait()
        statuses.append(browser.sign_in(page, OWNER, "wrong password").status_code)

    threads = [
        threading.Thread(target=guess, args=pair) for pair in zip(browsers, pages, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(statuses) == 12 and set(statuses) <= {401, 429}
    assert statuses.count(401) <= 5  # the account limit, however the requests interleave


def test_a_successful_sign_in_costs_no_attempt(live: LiveServer, alexa: Client) -> None:
    browser = Browser(live)
    page = browser.open(authorize_url(live, alexa.client_id, ALEXA_URIS[0]))
    for _ in range(4):
        assert browser.sign_in(page, OWNER, "wrong password").status_code == 401
    assert browser.sign_in(page, OWNER).status_code == 200  # signed in: the consent page
    other = Browser(live)
    page = other.open(authorize_url(live, alexa.client_id, ALEXA_URIS[0]))
    assert other.sign_in(page, OWNER, "wrong password").status_code == 401  # the 5th failure
    assert other.sign_in(page, OWNER, "wrong password").status_code == 429


def test_same_message_for_unknown_email_and_wrong_password(live: LiveServer, alexa: Client) -> None:
    browser = Browser(live)
    page = browser.open(authorize_url(live, alexa.client_id, ALEXA_URIS[0]))
    wrong = browser.sign_in(page, OWNER, "wrong password")
    unknown = browser.sign_in(page, "nobody@example.com", "wrong password")
    assert wrong.status_code == unknown.status_code == 401

    def page_of(response: requests.Response, email: str) -> str:
        """The page without what may differ: the email typed, the form's time-signed token."""
        return CSRF.sub("", response.text.replace(email, ""))

    assert page_of(wrong, OWNER) == page_of(unknown, "nobody@example.com")


def test_sign_in_failures_hit_the_address_limit(settings, db: Database, alexa: Client) -> None:  # type: ignore[no-untyped-def]
    from service.app import create_app

    strict = settings.model_copy(update={"login_max_failures_ip": 3})
    with LiveServer(create_app(strict, db)) as live:
        browser = Browser(live)
        page = browser.open(authorize_url(live, alexa.client_id, ALEXA_URIS[0]))
        for n in range(3):
            assert browser.sign_in(page, f"guess{n}@example.com", "x" * 10).status_code == 401
        assert browser.sign_in(page, OWNER).status_code == 429


def test_next_parameter_cannot_redirect_off_site(live: LiveServer, alexa: Client) -> None:
    browser = Browser(live)
    form = browser.http.get(live.url + "/oauth/login", timeout=10)
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
        response = browser.http.post(
            live.url + "/oauth/login",
            allow_redirects=False,
            timeout=10,
            data={
                "csrf_token": csrf_of(form.text),
                "email": OWNER,
                "password": PASSWORD,
                "next": target,
            },
        )
        assert response.status_code == 303
        assert response.headers["Location"] == "/oauth/authorize"
        form = browser.http.get(live.url + "/oauth/login", timeout=10)
