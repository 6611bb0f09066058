"""Grants and tokens: issuing, rotating, revoking, and resolving a bearer token for adapters.

Everything here that Authlib leaves to the application: hashed storage, refresh rotation with
a grace for retries, reuse detection, and unlinking that kills every token of a grant at once.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session

from camvoice import audit
from camvoice.models import Account, utcnow
from oauth.models import Grant, OAuthClient, Token, digest

LAST_USED_RESOLUTION = timedelta(seconds=60)  # don't write last_used_at on every request
REFRESH_RETRY_GRACE = timedelta(seconds=120)  # a used refresh token may be retried this long


def new_secret() -> str:
    """An unguessable token string (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def find_token(session: Session, value: str, kind: str) -> Token | None:
    stmt = select(Token).where(Token.token_hash == digest(value), Token.kind == kind)
    return session.scalars(stmt).one_or_none()


# The refresh grant's statements, built once: building one costs more than running it.
INSERT_TOKENS = insert(Token).execution_options(render_nulls=True)  # one INSERT for a pair
FIND_REFRESH = (
    select(Token, Grant, Account)
    .join(Grant, Grant.id == Token.grant_id)
    .outerjoin(Account, Account.id == Token.account_id)
    .where(Token.token_hash == bindparam("hash"), Token.kind == "refresh")
)
CLAIM = (
    update(Token)
    .where(Token.id == bindparam("used"))
    .where(Token.superseded_at.is_(None), Token.revoked_at.is_(None))
    .values(used_at=func.coalesce(Token.used_at, bindparam("now")))
    .execution_options(synchronize_session=False)
)
SUPERSEDE = (
    update(Token)
    .where(Token.superseded_at.is_(None))
    .where(
        (Token.id == bindparam("parent"))
        | ((Token.parent_id == bindparam("parent")) & (Token.id != bindparam("used")))
    )
    .values(superseded_at=bindparam("now"))
    .execution_options(synchronize_session=False)
)


def store_tokens(
    session: Session,
    grant: Grant,
    access_token: str,
    refresh_token: str | None,
    expires_in: int,
    parent: Token | None = None,
) -> None:
    """Persist a token pair of `grant` as hashes, in one INSERT (both rows have every column)."""
    now = utcnow()
    common = {
        "grant_id": grant.id,
        "client_id": grant.client_id,
        "account_id": grant.account_id,
        "scope": grant.scope,
        "issued_at": now,
    }
    rows = [
        {
            "kind": "access",
            "token_hash": digest(access_token),
            "expires_at": now + timedelta(seconds=expires_in),
            "parent_id": None,
            **common,
        }
    ]
    if refresh_token:
        rows.append(
            {
                "kind": "refresh",
                "token_hash": digest(refresh_token),
                "expires_at": None,
                "parent_id": parent.id if parent else None,
                **common,
            }
        )
    session.execute(INSERT_TOKENS, rows)


@dataclass(frozen=True)
class RefreshCredential:
    """A presented refresh token with its grant and owner, read in one query; Authlib's grant
    asks it what it asks a token (check_client, get_scope)."""

    token: Token
    grant: Grant
    account: Account | None  # None once the owner is gone

    def check_client(self, client: OAuthClient) -> bool:
        return self.token.check_client(client)

    def get_scope(self) -> str:
        return self.token.get_scope()


def find_refresh(session: Session, value: str) -> RefreshCredential | None:
    """The refresh token `value`, its grant and its owner, or None if no such token."""
    row = session.execute(FIND_REFRESH, {"hash": digest(value)}).one_or_none()
    return None if row is None else RefreshCredential(*row)


def refusal(credential: RefreshCredential) -> str | None:
    """Why this refresh token may not be used now ("revoked", "reused"), or None if it may."""
    token = credential.token
    if credential.grant.revoked_at is not None or token.revoked_at is not None:
        return "revoked"
    if token.superseded_at is not None or (
        token.used_at is not None and utcnow() - token.used_at > REFRESH_RETRY_GRACE
    ):
        return "reused"
    return None


def rotate(session: Session, used: Token) -> bool:
    """A refresh token is being used: mark it used (its first use is kept), and its parent and
    the parent's other children die now.

    The used token itself stays valid for REFRESH_RETRY_GRACE, or until one of its own children
    is used, so a client that lost our answer (a retry) can present it again without breaking the
    link; later, presenting it again is reuse.

    The mark is conditional: False, and nothing written, when the token was superseded or
    revoked after it was read (one of its children used, or the link revoked, meanwhile), so a
    refresh racing either cannot issue a pair of its own.
    """
    params = {"used": used.id, "parent": used.parent_id, "now": utcnow()}
    if not session.execute(CLAIM, params).rowcount:
        return False
    if used.parent_id is not None:
        session.execute(SUPERSEDE, params)
    return True


def revoke_grant(session: Session, grant_id: str, reason: str, *, actor: str) -> bool:
    """Unlink: revoke the grant and every token it issued. True if it was live."""
    grant = session.get(Grant, grant_id)
    if grant is None or grant.revoked_at is not None:
        return False
    now = utcnow()
    grant.revoked_at = now
    grant.revoked_reason = reason
    session.execute(
        update(Token)
        .where(Token.grant_id == grant_id, Token.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    client = session.get(OAuthClient, grant.client_id)
    audit.record(
        session,
        "account.unlinked",
        actor=actor,
        account_id=grant.account_id,
        assistant=client.assistant if client else None,
        client=client.name if client else grant.client_id,
        reason=reason,
    )
    return True


def revoke_account(session: Session, account_id: str, reason: str, *, actor: str) -> int:
    """Revoke every live link of an account (a disabled account speaks for nobody any more:
    its assistants' tokens, refreshes and stream URLs stop at once). How many were live."""
    live = session.scalars(
        select(Grant.id).where(Grant.account_id == account_id, Grant.revoked_at.is_(None))
    ).all()
    return sum(revoke_grant(session, grant_id, reason, actor=actor) for grant_id in live)


def grant_is_live(session: Session, grant_id: str) -> bool:
    grant = session.get(Grant, grant_id)
    return grant is not None and grant.revoked_at is None


def live_links(session: Session, account_id: str) -> list[tuple[Grant, str]]:
    """An owner's live links (grants) with the name of the client each was made for."""
    rows = session.execute(
        select(Grant, OAuthClient.name)
        .join(OAuthClient, OAuthClient.client_id == Grant.client_id)
        .where(Grant.account_id == account_id, Grant.revoked_at.is_(None))
        .where(OAuthClient.simulator.is_(False))  # the console's own credentials: no link
        .order_by(Grant.created_at)
    ).all()
    return [(grant, name) for grant, name in rows]


def owns_link(session: Session, account_id: str, grant_id: str) -> bool:
    grant = session.get(Grant, grant_id)
    return grant is not None and grant.account_id == account_id


def linked_since(session: Session, account_id: str, assistant: str) -> datetime | None:
    """When the owner's newest live link to `assistant` was made, or None if none is live."""
    stmt = (
        select(Grant.created_at)
        .join(OAuthClient, OAuthClient.client_id == Grant.client_id)
        .where(Grant.account_id == account_id, Grant.revoked_at.is_(None))
        .where(OAuthClient.assistant == assistant, OAuthClient.simulator.is_(False))
        .order_by(Grant.created_at.desc())
        .limit(1)
    )
    return session.scalars(stmt).first()


SIMULATOR_CLIENTS = {"alexa": "camvoice simulator (Alexa)", "google": "camvoice simulator (Google)"}
SIMULATOR_TOKEN_TTL = 120  # one simulated utterance, not a link: its stream tickets last longer


def simulator_token(session: Session, account_id: str, assistant: str) -> tuple[str, str]:
    """A short-lived access token of the console's own simulator client: (token, grant id).

    The simulator's client and grant are marked apart: never listed as a link, never a reason
    to tell HomeGraph anything, and each call deletes the owner's expired simulator tokens, so
    they do not pile up."""
    client = session.scalars(
        select(OAuthClient).where(
            OAuthClient.simulator.is_(True), OAuthClient.assistant == assistant
        )
    ).first()
    if client is None:
        client = OAuthClient(
            client_id=secrets.token_urlsafe(18),
            name=SIMULATOR_CLIENTS[assistant],
            assistant=assistant,
            simulator=True,
            secret_hash=None,
            redirect_uris=["http://127.0.0.1/simulator"],
            public=True,
        )
        session.add(client)
        session.flush()
    grant = session.scalars(
        select(Grant).where(
            Grant.account_id == account_id,
            Grant.client_id == client.client_id,
            Grant.revoked_at.is_(None),
        )
    ).first()
    if grant is None:
        grant = Grant(account_id=account_id, client_id=client.client_id, scope="cameras")
        session.add(grant)
        session.flush()
    session.execute(delete(Token).where(Token.grant_id == grant.id, Token.expires_at < utcnow()))
    token = new_secret()
    store_tokens(session, grant, token, None, SIMULATOR_TOKEN_TTL)
    return token, grant.id


class Failure(StrEnum):
    """Why a bearer token was refused; each adapter maps these to its protocol."""

    MISSING = "missing"
    INVALID = "invalid"
    EXPIRED = "expired"
    REVOKED = "revoked"


@dataclass(frozen=True)
class Principal:
    """Who a valid access token acts for."""

    account_id: str
    client_id: str
    assistant: str
    grant_id: str
    scopes: frozenset[str]


def authenticate_bearer(
    session: Session, token: str | None, assistant: str | None = None
) -> Principal | Failure:
    """Turn an access token into (account, client, scopes), or a typed failure.

    With `assistant`, a token issued to any other audience's client is INVALID here (RFC 9700
    2.3: a token is for its audience): an Alexa token cannot disconnect Google, nor the reverse,
    and an `other` client's token is refused by both.
    """
    if not token:
        return Failure.MISSING
    # One query for token, link and client: this runs on every directive.
    row = session.execute(
        select(Token, Grant, OAuthClient.assistant)
        .join(Grant, Grant.id == Token.grant_id)
        .join(OAuthClient, OAuthClient.client_id == Token.client_id)
        .where(Token.token_hash == digest(token), Token.kind == "access")
    ).one_or_none()
    if row is None:
        return Failure.INVALID
    access, grant, client_assistant = row
    if assistant and client_assistant != assistant:
        return Failure.INVALID
    if access.revoked_at is not None or grant.revoked_at is not None:
        return Failure.REVOKED
    if access.is_expired():
        return Failure.EXPIRED
    now = utcnow()
    if grant.last_used_at is None or now - grant.last_used_at > LAST_USED_RESOLUTION:
        grant.last_used_at = now
    return Principal(
        account_id=access.account_id,
        client_id=access.client_id,
        assistant=client_assistant,
        grant_id=grant.id,
        scopes=frozenset(access.scope.split()),
    )
