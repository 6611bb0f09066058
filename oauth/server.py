"""The authorization server on Authlib: grants, PKCE, revocation and introspection.

Authlib validates the protocol; these subclasses supply storage and the defaults that differ
from Authlib's (see ../shared/traps.md): one-hour access tokens, rotating refresh tokens,
S256-only PKCE, post and basic client auth everywhere, hashed storage, atomic code redemption,
and revocation of what a replayed code issued.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import InvalidGrantError, InvalidRequestError, grants
from authlib.oauth2.rfc6749.authenticate_client import (
    authenticate_client_secret_basic,
    authenticate_client_secret_post,
    authenticate_none,
)
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from flask import Flask, current_app
from sqlalchemy import bindparam, select, update

from camvoice import audit, untrusted
from camvoice.db import Database
from camvoice.models import Account, utcnow
from camvoice.services import Services
from oauth.models import SCOPES, AuthorizationCode, Grant, OAuthClient, Token, digest
from oauth.tokens import (
    RefreshCredential,
    find_refresh,
    find_token,
    new_secret,
    refusal,
    revoke_grant,
    rotate,
    store_refreshed,
    store_tokens,
)

log = logging.getLogger(__name__)

CODE_TTL = timedelta(minutes=5)
CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]


def database() -> Database:
    """The app's database; Authlib calls the functions below inside a request."""
    return Services.of(current_app).db


# Every token request looks its client up: one Core statement built once, its row made into
# an unattached OAuthClient (Authlib only calls its methods), no ORM load.
CLIENTS = OAuthClient.__table__
FIND_CLIENT = select(CLIENTS).where(CLIENTS.c.client_id == bindparam("client_id"))


def query_client(client_id: str) -> OAuthClient | None:
    """A registered client; the console's own simulator clients are none, so nobody can link
    with them (their grants are never listed, so a link through them could not be seen).

    An id no database can hold (NUL, from HTTP Basic) names no client: PostgreSQL would fail."""
    if not untrusted.storable(client_id):
        return None
    with database().reading() as session:
        row = session.connection().execute(FIND_CLIENT, {"client_id": client_id}).one_or_none()
    return OAuthClient(**row._mapping) if row is not None and not row.simulator else None


def save_token(token: dict[str, Any], request: Any) -> None:
    """Persist the token pair of a code redemption, and the grant (link) it creates.

    The refresh grant stores its own pair (RefreshTokenGrant.save_token)."""
    db = database()
    code: AuthorizationCode = request.authorization_code
    with db.session() as session:
        grant = Grant(account_id=code.account_id, client_id=code.client_id, scope=code.scope)
        session.add(grant)
        session.flush()
        store_tokens(
            session, grant, token["access_token"], token.get("refresh_token"), token_ttl(token)
        )
        session.execute(
            update(AuthorizationCode)
            .where(AuthorizationCode.code_hash == code.code_hash)
            .values(grant_id=grant.id)
        )
        client = request.client
        audit.record(
            session,
            "account.linked",
            actor=f"client:{client.client_id}",
            account_id=grant.account_id,
            assistant=client.assistant,
            client=client.name,
        )
    _revoke_if_replayed_meanwhile(code.code_hash)


def token_ttl(token: dict[str, Any]) -> int:
    return int(token["expires_in"])


def _revoke_if_replayed_meanwhile(code_hash: str) -> None:
    """A replay that raced our redemption found no grant to revoke yet: revoke it now."""
    with database().session() as session:
        code = session.get(AuthorizationCode, code_hash)
        if code is not None and code.replayed and code.grant_id:
            revoke_grant(session, code.grant_id, "code_replayed", actor="oauth")


def authenticate_basic(query_client: Any, request: Any) -> OAuthClient | None:
    """Authlib's client_secret_basic, except that a header it cannot parse ("Basic " with
    nothing after it, credentials that are not UTF-8) authenticates nobody, so the endpoint
    answers invalid_client, 401 (RFC 6749 5.2), where Authlib would raise ValueError."""
    try:
        return authenticate_client_secret_basic(query_client, request)  # type: ignore[no-any-return]
    except ValueError:  # UnicodeDecodeError included
        return None


ClientAuth = Callable[[Any, Any], OAuthClient | None]


def knowing_presented_client(method: ClientAuth) -> ClientAuth:
    """Authlib's client authentication `method`, taking the client the refresh grant already
    read with the presented token (RefreshTokenGrant.validate_token_request) instead of querying
    it again, when the request names that client. Authlib checks its secret all the same."""

    def authenticate(query_client: Any, request: Any) -> OAuthClient | None:
        known: OAuthClient | None = getattr(request, "presented_client", None)

        def query(client_id: str) -> OAuthClient | None:
            if known is not None and client_id == known.client_id:
                return known
            return query_client(client_id)  # type: ignore[no-any-return]

        return method(query, request)

    return authenticate


class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = [*CLIENT_AUTH_METHODS, "none"]

    def validate_authorization_request(self) -> str:
        redirect_uri: str = super().validate_authorization_request()
        client: OAuthClient = self.request.client
        if client.public and not self.request.payload.data.get("code_challenge"):
            raise InvalidRequestError(
                "Public clients must use PKCE (code_challenge with S256).",
                redirect_uri=redirect_uri,
            )
        return redirect_uri

    def save_authorization_code(self, code: str, request: Any) -> None:
        data = request.payload.data
        with database().session() as session:
            session.add(
                AuthorizationCode(
                    code_hash=digest(code),
                    client_id=request.client.client_id,
                    account_id=request.user.id,
                    redirect_uri=request.payload.redirect_uri,
                    scope=request.scope,
                    code_challenge=data.get("code_challenge"),
                    code_challenge_method=data.get("code_challenge_method"),
                    expires_at=utcnow() + CODE_TTL,
                )
            )

    def query_authorization_code(self, code: str, client: OAuthClient) -> AuthorizationCode | None:
        """Redeem atomically: of two concurrent redemptions, exactly one gets the code."""
        code_hash = digest(code)
        with database().session() as session:
            row = session.get(AuthorizationCode, code_hash)
            if row is None or row.client_id != client.client_id:
                return None
            if row.expires_at <= utcnow() or not self.presented_by_its_client(row):
                # Checked before the code is spent: a stolen code sent with a wrong verifier or
                # redirect URI neither burns it for the real client nor revokes their link.
                return None
            claimed = session.execute(
                update(AuthorizationCode)
                .where(AuthorizationCode.code_hash == code_hash)
                .where(AuthorizationCode.used_at.is_(None))
                .values(used_at=utcnow())
            ).rowcount
            if claimed == 1:
                return row
            # Replay: RFC 6749 4.1.2 says revoke what the code issued.
            session.execute(
                update(AuthorizationCode)
                .where(AuthorizationCode.code_hash == code_hash)
                .values(replayed=True)
            )
            grant_id = session.get(AuthorizationCode, code_hash).grant_id  # type: ignore[union-attr]
            log.warning("authorization code replayed by client %s", client.client_id)
            audit.record(
                session,
                "oauth.code_replayed",
                actor=f"client:{client.client_id}",
                account_id=row.account_id,
                assistant=client.assistant,
            )
            if grant_id:
                revoke_grant(session, grant_id, "code_replayed", actor="oauth")
            return None

    def presented_by_its_client(self, row: AuthorizationCode) -> bool:
        """The redirect URI and PKCE verifier of this request match what the code was bound to.

        Authlib checks both again after redeeming; checking here first keeps redemption honest.
        """
        payload = self.request.payload
        if row.redirect_uri and payload.redirect_uri != row.redirect_uri:
            return False
        if not row.code_challenge:
            return True
        verifier = payload.data.get("code_verifier")
        compare = S256CodeChallenge.CODE_CHALLENGE_METHODS["S256"]  # Authlib's own check
        return isinstance(verifier, str) and bool(compare(verifier, row.code_challenge))

    def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
        """Kept (marked used) rather than deleted, so a replay can be recognised."""

    def authenticate_user(self, authorization_code: AuthorizationCode) -> Account | None:
        with database().session() as session:
            return session.get(Account, authorization_code.account_id)


class S256CodeChallenge(CodeChallenge):
    """PKCE with S256 only: a challenge must say so (Authlib's default method is plain)."""

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if data.get("code_challenge") and data.get("code_challenge_method") != "S256":
            raise InvalidRequestError(
                "code_challenge_method must be S256.", redirect_uri=redirect_uri
            )
        super().validate_code_challenge(grant, redirect_uri)


class RefreshTokenGrant(grants.RefreshTokenGrant):
    """The refresh grant in two visits to the database: one read (token, grant, owner and
    client in one statement, the client then authenticated from it) and one write (the new pair
    and the rotation, committed together), both through the driver (Database.driver: no ORM
    session, no Connection machinery). A refusal writes only when it has something to record."""

    TOKEN_ENDPOINT_AUTH_METHODS = [*CLIENT_AUTH_METHODS, "none"]
    INCLUDE_NEW_REFRESH_TOKEN = True

    def validate_token_request(self) -> None:
        """Read the presented token, with its grant, owner and client, in one statement before
        Authlib authenticates the client: the client is then taken from what was read (see
        knowing_presented_client) instead of a query of its own."""
        value = self.request.form.get("refresh_token")
        self.presented = None
        if isinstance(value, str):
            with database().driver() as driver:
                self.presented = find_refresh(driver, value)
            self.request.presented_client = self.presented and self.presented.client
        super().validate_token_request()

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshCredential | None:
        """The token validate_token_request read, if it may be used now."""
        return self.judged(self.presented)

    def judged(self, credential: RefreshCredential | None) -> RefreshCredential | None:
        """`credential` if it may be used now; a refusal is recorded."""
        if credential is None:
            return None
        reason = refusal(credential)
        if reason is None:
            return credential
        self.refuse(credential, reason)
        return None

    def refuse(self, token: RefreshCredential, reason: str) -> None:
        """Record a refused refresh; a reused token (it leaked, or a client is confused)
        revokes the whole grant."""
        with database().session() as session:
            if reason == "reused":
                revoke_grant(session, token.grant_id, "refresh_token_reused", actor="oauth")
            audit.record(
                session,
                "oauth.refresh_refused",
                actor=f"client:{token.client_id}",
                account_id=token.account_id,
                reason=reason,
            )

    def authenticate_user(self, refresh_token: RefreshCredential) -> str | None:
        """The owner's account id: Authlib only needs to know there is one (the new tokens
        name the grant's owner, read with the token), so no Account is loaded."""
        return refresh_token.owner

    def save_token(self, token: dict[str, Any]) -> None:
        """Store the new pair and rotate the presented token in one transaction. If the token
        was superseded or revoked since it was read (a race), nothing is stored and the answer
        is invalid_grant, as it would have been a moment later."""
        credential: RefreshCredential = self.request.refresh_token
        with database().driver() as driver, driver.transaction():
            claimed = rotate(driver, credential)
            if claimed:
                store_refreshed(
                    driver,
                    credential,
                    token["access_token"],
                    token["refresh_token"],
                    token_ttl(token),
                )
        if not claimed:
            # Read it again: the refusal it now earns is recorded (reuse revokes the link).
            with database().driver() as driver:
                self.judged(find_refresh(driver, self.request.form["refresh_token"]))
            raise InvalidGrantError()

    def revoke_old_credential(self, refresh_token: RefreshCredential) -> None:
        """Done by save_token, in the transaction that stores the new pair."""


class Revocation(RevocationEndpoint):
    """RFC 7009. Revoking a refresh token unlinks (the whole grant); an access token, just it."""

    CLIENT_AUTH_METHODS = [*CLIENT_AUTH_METHODS, "none"]

    def query_token(self, token_string: str, token_type_hint: str | None) -> Token | None:
        kinds = (
            ["refresh", "access"] if token_type_hint == "refresh_token" else ["access", "refresh"]  # noqa: S105
        )
        with database().session() as session:
            for kind in kinds:
                token = find_token(session, token_string, kind)
                if token is not None:
                    return token
        return None

    def revoke_token(self, token: Token, request: Any) -> None:
        with database().session() as session:
            if token.kind == "refresh":
                revoke_grant(
                    session, token.grant_id, "revoked_by_client", actor=f"client:{token.client_id}"
                )
            else:
                session.execute(
                    update(Token).where(Token.id == token.id).values(revoked_at=utcnow())
                )


class Introspection(IntrospectionEndpoint):
    """RFC 7662, for the client that holds the token."""

    CLIENT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def query_token(self, token_string: str, token_type_hint: str | None) -> Token | None:
        return Revocation.query_token(self, token_string, token_type_hint)  # type: ignore[arg-type]

    def check_permission(self, token: Token, client: OAuthClient, request: Any) -> bool:
        return token.check_client(client)

    def introspect_token(self, token: Token) -> dict[str, Any]:
        with database().session() as session:
            grant = session.get(Grant, token.grant_id)
            live = grant is not None and grant.revoked_at is None
        if not live:
            return {"active": False}
        body: dict[str, Any] = {
            "active": True,
            "client_id": token.client_id,
            "scope": token.scope,
            "sub": token.account_id,
            "token_type": "Bearer" if token.kind == "access" else "refresh_token",
            "iat": int(token.issued_at.timestamp()),
        }
        if token.expires_at is not None:
            body["exp"] = int(token.expires_at.timestamp())
        return body


def create_server(app: Flask, access_token_ttl: int) -> AuthorizationServer:
    app.config["OAUTH2_SCOPES_SUPPORTED"] = list(SCOPES)
    server = AuthorizationServer(app, query_client=query_client, save_token=save_token)
    server.register_token_generator(
        "default",
        BearerTokenGenerator(
            access_token_generator=lambda **_: new_secret(),
            refresh_token_generator=lambda **_: new_secret(),
            expires_generator=lambda client, grant_type: access_token_ttl,
        ),
    )
    for method, authenticate in (
        ("client_secret_basic", authenticate_basic),
        ("client_secret_post", authenticate_client_secret_post),
        ("none", authenticate_none),
    ):
        server.register_client_auth_method(method, knowing_presented_client(authenticate))
    server.register_grant(AuthorizationCodeGrant, [S256CodeChallenge(required=True)])
    server.register_grant(RefreshTokenGrant)
    server.register_endpoint(Revocation)
    server.register_endpoint(Introspection)
    return server
