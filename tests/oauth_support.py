"""Helpers for driving the OAuth server as a browser and as Alexa or Google would."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import requests
from authlib.integrations.requests_client import OAuth2Session

from camvoice.accounts import create_account
from camvoice.cameras import Registry
from camvoice.db import Database
from camvoice.outbox import Outbox
from oauth.models import OAuthClient, digest
from tests.conftest import LiveServer

ALEXA_URIS = [
    "https://layla.amazon.com/api/skill/link/M2AAAAAAAAAAAA",
    "https://pitangui.amazon.com/api/skill/link/M2AAAAAAAAAAAA",
    "https://alexa.amazon.co.jp/api/skill/link/M2AAAAAAAAAAAA",
]
GOOGLE_URIS = [
    "https://oauth-redirect.googleusercontent.com/r/camvoice-test",
    "https://oauth-redirect-sandbox.googleusercontent.com/r/camvoice-test",
]
PASSWORD = "owner password 1"


@dataclass
class Client:
    client_id: str
    secret: str | None
    redirect_uri: str


def register(
    db: Database, name: str, uris: list[str], assistant: str, public: bool = False
) -> Client:
    secret = None if public else secrets.token_urlsafe(32)
    client_id = secrets.token_urlsafe(18)
    with db.session() as session:
        session.add(
            OAuthClient(
                client_id=client_id,
                name=name,
                assistant=assistant,
                secret_hash=digest(secret) if secret else None,
                redirect_uris=uris,
                public=public,
            )
        )
    return Client(client_id, secret, uris[0])


def make_owner(
    db: Database,
    email: str,
    cameras: dict[str, dict] | None = None,
    registry: Registry | None = None,
) -> str:
    """An owner with cameras; without a registry, no outbox event is written for them."""
    registry = registry or Registry(Outbox())
    with db.session() as session:
        account = create_account(session, email, PASSWORD)
        for name, fields in (cameras or {}).items():
            registry.add(session, account, name, actor="test", **fields)
        return account.id


CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    match = CSRF.search(html)
    assert match, "no CSRF token in page"
    return match.group(1)


class Browser:
    """A person's browser: keeps cookies, submits forms, never follows the final redirect."""

    def __init__(self, live: LiveServer, language: str = "en") -> None:
        self.live = live
        self.http = requests.Session()
        self.http.headers["Accept-Language"] = language

    def open(self, url: str) -> requests.Response:
        return self.http.get(url, timeout=10, allow_redirects=False)

    def sign_in(
        self, page: requests.Response, email: str, password: str = PASSWORD
    ) -> requests.Response:
        nxt = re.search(r'name="next" value="([^"]*)"', page.text)
        return self.http.post(
            self.live.url + "/oauth/login",
            data={
                "csrf_token": csrf_of(page.text),
                "email": email,
                "password": password,
                "next": nxt.group(1).replace("&amp;", "&") if nxt else "",
            },
            timeout=10,
            allow_redirects=True,
        )

    def decide(self, consent: requests.Response, decision: str) -> requests.Response:
        action = re.search(r'<form method="post" action="([^"]+)"', consent.text)
        assert action, "no consent form"
        return self.http.post(
            self.live.url + action.group(1).replace("&amp;", "&"),
            data={"csrf_token": csrf_of(consent.text), "decision": decision},
            timeout=10,
            allow_redirects=False,
        )


def oauth_session(client: Client, method: str, **kw: object) -> OAuth2Session:
    return OAuth2Session(
        client.client_id,
        client.secret,
        token_endpoint_auth_method=method,
        redirect_uri=client.redirect_uri,
        scope="cameras",
        **kw,
    )


def link(
    live: LiveServer,
    client: Client,
    email: str,
    method: str = "client_secret_basic",
    password: str = PASSWORD,
) -> tuple[OAuth2Session, dict]:
    """The whole linking flow: authorize, sign in, approve, exchange the code."""
    session = oauth_session(client, method)
    url, _state = session.create_authorization_url(live.url + "/oauth/authorize")
    browser = Browser(live)
    consent = browser.sign_in(browser.open(url), email, password)
    location = browser.decide(consent, "approve").headers["Location"]
    token = session.fetch_token(live.url + "/oauth/token", authorization_response=location)
    return session, token


def get_code(live: LiveServer, client: Client, email: str, **params: str) -> str:
    """Authorize and approve; return just the code from the redirect."""
    session = oauth_session(client, "client_secret_basic")
    url, _ = session.create_authorization_url(live.url + "/oauth/authorize", **params)
    browser = Browser(live)
    consent = browser.sign_in(browser.open(url), email)
    location = browser.decide(consent, "approve").headers["Location"]
    return parse_qs(urlsplit(location).query)["code"][0]


def token_request(live: LiveServer, client: Client, **data: str) -> requests.Response:
    """A raw token-endpoint call with client_secret_post."""
    body = {"client_id": client.client_id, **data}
    if client.secret:
        body["client_secret"] = client.secret
    return requests.post(live.url + "/oauth/token", data=body, timeout=10)


def streams_requested(db: Database) -> list[tuple[str | None, str | None]]:
    """(assistant, protocol) of every stream handed out, oldest first: `Streams.open`, the one
    way any adapter gets a stream URL, audits each one."""
    from sqlalchemy import select

    from camvoice.models import AuditEvent

    with db.session() as session:
        rows = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.action == "stream.requested")
            .order_by(AuditEvent.id)
        ).all()
        return [(row.assistant, row.detail.get("protocol")) for row in rows]


def unused_refresh_tokens(db: Database, account_id: str, client_id: str, count: int) -> list[str]:
    """`count` refresh tokens as a refresh left them, each ready for its first use: each of its
    own grant (one link per token, as many owners' assistants would refresh), the child of a
    used parent (so its use supersedes that parent, as every refresh but a link's first does).

    Written straight into the tables (three bulk INSERTs), not through `count` real refreshes:
    the benches need thousands (one per request under load)."""
    from sqlalchemy import insert

    from camvoice.models import new_id, utcnow
    from oauth.models import Grant, Token

    now = utcnow()
    grants = [new_id("grt") for _ in range(count)]
    tokens = [secrets.token_urlsafe(32) for _ in range(count)]
    common = {"client_id": client_id, "account_id": account_id, "scope": "cameras",
              "kind": "refresh", "issued_at": now, "expires_at": None, "superseded_at": None,
              "revoked_at": None}  # fmt: skip
    with db.session() as session:
        session.execute(insert(Grant), [
            {"id": grant, "account_id": account_id, "client_id": client_id, "scope": "cameras",
             "created_at": now, "last_used_at": None, "revoked_at": None, "revoked_reason": None}
            for grant in grants
        ])  # fmt: skip
        parents = session.scalars(
            insert(Token).returning(Token.id, sort_by_parameter_order=True),
            [{**common, "grant_id": grant, "token_hash": digest(secrets.token_urlsafe(32)),
              "parent_id": None, "used_at": now} for grant in grants],
        ).all()  # fmt: skip
        session.execute(insert(Token), [
            {**common, "grant_id": grant, "token_hash": digest(token), "parent_id": parent,
             "used_at": None}
            for grant, token, parent in zip(grants, tokens, parents, strict=True)
        ])  # fmt: skip
    return tokens
