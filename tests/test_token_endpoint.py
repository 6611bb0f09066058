"""The token endpoint's refresh grant, made cheaper (issue 17) without changing what it says:
answers byte for byte as before, one read and one write per refresh, and a refresh that races an
unlink or the use of its child issues nothing."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests
from sqlalchemy import func, select, update

from camvoice.db import Database
from camvoice.models import AuditEvent, utcnow
from oauth import server as oauth_server
from oauth.models import Grant, Token, digest
from oauth.tokens import Failure, Principal, RefreshCredential, authenticate_bearer, revoke_grant
from service.app import create_app
from tests.conftest import LiveServer, statements
from tests.oauth_support import ALEXA_URIS, Client, link, make_owner, register, token_request

OWNER = "owner@example.com"
TOKEN_VALUE = re.compile(r'"(access_token|refresh_token)": "[A-Za-z0-9_-]{43}"')
NO_STORE = {"Content-Type": "application/json", "Cache-Control": "no-store", "Pragma": "no-cache"}
METHODS = "['client_secret_basic', 'client_secret_post', 'none']"
UNAUTHENTICATED = f'"The client cannot authenticate with methods: {METHODS}"'

# What the endpoint answered before issue 17 (commit 268dd16), token values masked.
ISSUED = (
    '{"access_token": "X", "expires_in": 3600, "refresh_token": "X", "scope": "cameras", '
    '"token_type": "Bearer"}'
)
INVALID_GRANT = '{"error": "invalid_grant"}'
MISSING = (
    '{"error": "invalid_request", "error_description": "Missing \'refresh_token\' in request."}'
)
WIDER_SCOPE = (
    '{"error": "invalid_scope", "error_description": '
    '"The requested scope is invalid, unknown, or malformed."}'
)
BAD_CLIENT = '{"error": "invalid_client", "error_description": ' + UNAUTHENTICATED + "}"
BAD_CLIENT_HEADER = 'Basic error="invalid_client", error_description=' + UNAUTHENTICATED


@pytest.fixture
def alexa(db: Database) -> Client:
    make_owner(db, OWNER, {"Front Door": {}})
    return register(db, "Amazon Alexa", ALEXA_URIS, "alexa")


def basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def answer(response: requests.Response) -> tuple[int, dict[str, str], str]:
    """Status, the headers that carry meaning, and the body with token values masked."""
    kept = ("Content-Type", "Cache-Control", "Pragma", "WWW-Authenticate")
    headers = {k: response.headers[k] for k in kept if k in response.headers}
    return response.status_code, headers, TOKEN_VALUE.sub(r'"\1": "X"', response.text)


def refresh(live: LiveServer, client: Client, token: str, **extra: str) -> requests.Response:
    return token_request(live, client, grant_type="refresh_token", refresh_token=token, **extra)


def test_answers_are_byte_for_byte_what_they_were(
    live: LiveServer, db: Database, alexa: Client
) -> None:
    _, first = link(live, alexa, OWNER)
    rt = first["refresh_token"]
    grant = {"grant_type": "refresh_token", "refresh_token": rt}
    basic_ok = live.post("/oauth/token", data=grant, headers=basic(alexa.client_id, alexa.secret))  # type: ignore[arg-type]
    bad_basic = live.post("/oauth/token", data=grant, headers=basic(alexa.client_id, "wrong"))
    bad_post = live.post(
        "/oauth/token", data={**grant, "client_id": alexa.client_id, "client_secret": "wrong"}
    )
    issued = refresh(live, alexa, rt)
    assert answer(issued) == (200, NO_STORE, ISSUED)
    assert answer(basic_ok) == (200, NO_STORE, ISSUED)
    assert TOKEN_VALUE.sub("", issued.text) != issued.text  # the values are real tokens
    assert answer(refresh(live, alexa, "not-a-token")) == (400, NO_STORE, INVALID_GRANT)
    missing = token_request(live, alexa, grant_type="refresh_token")
    assert answer(missing) == (400, NO_STORE, MISSING)
    wider = refresh(live, alexa, rt, scope="cameras admin")
    assert answer(wider) == (400, NO_STORE, WIDER_SCOPE)
    refused = {**NO_STORE, "WWW-Authenticate": BAD_CLIENT_HEADER}
    assert answer(bad_basic) == (401, refused, BAD_CLIENT)
    assert answer(bad_post) == (401, refused, BAD_CLIENT)
    with db.session() as session:
        revoke_grant(session, session.scalars(select(Grant.id)).one(), "test", actor="test")
    assert answer(refresh(live, alexa, rt)) == (400, NO_STORE, INVALID_GRANT)


def test_a_refresh_is_one_read_and_one_write(live: LiveServer, db: Database, alexa: Client) -> None:
    """The token with its grant, owner and client (one read statement: the client is not
    queried on its own); claim, supersede and the new pair (one write). Before issue 17 a
    refresh ran three writing transactions, eleven statements."""
    _, first = link(live, alexa, OWNER)
    second = refresh(live, alexa, first["refresh_token"]).json()
    with statements(db) as seen:
        third = refresh(live, alexa, second["refresh_token"])
    assert third.status_code == 200
    verbs = [s.split()[0] for s in seen if s.split()[0] not in ("BEGIN", "COMMIT", "ROLLBACK")]
    assert verbs == ["SELECT", "UPDATE", "UPDATE", "INSERT"], seen
    # The read is one statement on its own (no transaction); the writes are one transaction,
    # which on SQLite takes the write lock at its BEGIN.
    begin = "BEGIN IMMEDIATE" if db.is_sqlite else "BEGIN"
    transaction = [s.split()[0] if s != begin else s for s in seen[1:]]
    assert transaction == [begin, "UPDATE", "UPDATE", "INSERT", "COMMIT"], seen
    assert isinstance(bearer(db, third.json()["access_token"]), Principal)


def bearer(db: Database, token: str) -> Principal | Failure:
    with db.session() as session:
        return authenticate_bearer(session, token)


def token_rows(db: Database) -> int:
    with db.reading() as session:
        return session.scalar(select(func.count()).select_from(Token)) or 0


def refusals(db: Database) -> list[str]:
    with db.reading() as session:
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "oauth.refresh_refused")
        )
        return [e.detail["reason"] for e in events]


@contextmanager
def meanwhile(monkeypatch: pytest.MonkeyPatch, db: Database, change: Any) -> Iterator[None]:
    """Run `change(session, credential)` once, right after the refresh grant has read the
    presented token and before it writes: what a concurrent request could do in that gap."""
    real = oauth_server.find_refresh
    done: list[bool] = []

    def find_then_change(session: Any, value: str) -> RefreshCredential | None:
        credential = real(session, value)
        if credential is not None and not done:
            done.append(True)
            with db.session() as other:
                change(other, credential)
        return credential

    monkeypatch.setattr(oauth_server, "find_refresh", find_then_change)
    yield
    assert done, "the refresh grant no longer reads through find_refresh"


def test_a_refresh_racing_an_unlink_issues_nothing(
    live: LiveServer, db: Database, alexa: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, first = link(live, alexa, OWNER)
    before = token_rows(db)

    def unlink(session: Any, credential: RefreshCredential) -> None:
        revoke_grant(session, credential.grant_id, "revoked_by_owner", actor="test")

    with meanwhile(monkeypatch, db, unlink):
        response = refresh(live, alexa, first["refresh_token"])
    assert answer(response) == (400, NO_STORE, INVALID_GRANT)
    assert token_rows(db) == before  # no pair was stored for the unlinked grant
    assert refusals(db) == ["revoked"]


def test_a_refresh_racing_the_use_of_its_child_is_reuse(
    live: LiveServer, db: Database, alexa: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry of r1 (within its grace) while r2, its child, is used: the use of r2 supersedes
    r1 first, so the retry is reuse, as it would be a moment later, and the link is revoked."""
    _, first = link(live, alexa, OWNER)
    second = refresh(live, alexa, first["refresh_token"]).json()
    before = token_rows(db)

    def use_child(session: Any, credential: RefreshCredential) -> None:
        child = Token.token_hash == digest(second["refresh_token"])
        session.execute(update(Token).where(child).values(used_at=utcnow()))
        session.execute(
            update(Token).where(Token.id == credential.id).values(superseded_at=utcnow())
        )

    with meanwhile(monkeypatch, db, use_child):
        response = refresh(live, alexa, first["refresh_token"])
    assert answer(response) == (400, NO_STORE, INVALID_GRANT)
    assert token_rows(db) == before
    assert refusals(db) == ["reused"]
    assert bearer(db, second["access_token"]) is Failure.REVOKED


def test_an_unlink_on_one_instance_refuses_a_refresh_on_the_other(
    settings: Any, db: Database, alexa: Client
) -> None:
    """No cache between the database and the refresh grant: two instances, each with its own
    engine, agree at once."""
    other_db = Database(db.url)
    try:
        with (
            LiveServer(create_app(settings, db)) as one,
            LiveServer(create_app(settings, other_db)) as two,
        ):
            _, first = link(one, alexa, OWNER)
            assert refresh(two, alexa, first["refresh_token"]).status_code == 200
            revoked = one.post(
                "/oauth/revoke",
                data={"token": first["refresh_token"], "token_type_hint": "refresh_token"},
                auth=(alexa.client_id, alexa.secret),
            )
            assert revoked.status_code == 200
            assert answer(refresh(two, alexa, first["refresh_token"])) == (
                400,
                NO_STORE,
                INVALID_GRANT,
            )
    finally:
        other_db.dispose()
