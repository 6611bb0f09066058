"""Grants and tokens: issuing, rotating, revoking, and resolving a bearer token for adapters.

Everything here that Authlib leaves to the application: hashed storage, refresh rotation with
a grace for retries, reuse detection, and unlinking that kills every token of a grant at once.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, select, update
from sqlalchemy.orm import Session

from camvoice import audit
from camvoice.cameras import CAMERA_COLUMNS, camera_of
from camvoice.db import Driver, connection_of
from camvoice.models import Account, Camera, utcnow
from oauth.models import AuthorizationCode, Grant, OAuthClient, Token, digest

LAST_USED_RESOLUTION = timedelta(seconds=60)  # don't write last_used_at on every request
REFRESH_RETRY_GRACE = timedelta(seconds=120)  # a used refresh token may be retried this long


def new_secret() -> str:
    """An unguessable token string (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def find_token(session: Session, value: str, kind: str) -> Token | None:
    stmt = select(Token).where(Token.token_hash == digest(value), Token.kind == kind)
    return session.scalars(stmt).one_or_none()


# The refresh grant's statements, built once (building one costs more than running it), in
# Core: no ORM objects are made, and the write lock is held for the statements alone.
TOKENS = Token.__table__
ISSUED = ("grant_id", "client_id", "account_id", "scope", "kind", "token_hash", "issued_at",
          "expires_at", "used_at", "superseded_at", "revoked_at", "parent_id")  # fmt: skip
# A pair in one statement (executemany), the new rows' ids not asked for.
INSERT_TOKENS = TOKENS.insert().values({name: bindparam(name) for name in ISSUED}).inline()
CLIENTS = OAuthClient.__table__
# The presented refresh token with its grant's state, its owner, and its client (outer joined:
# a token's client_id has no foreign key), so the token endpoint authenticates the client
# without a query of its own.
FIND_REFRESH = (
    select(
        Token.id, Token.grant_id, Token.client_id, Token.account_id, Token.scope,
        Token.parent_id, Token.used_at, Token.superseded_at, Token.revoked_at,
        Grant.revoked_at.label("grant_revoked_at"), Account.id.label("owner"),
        *(column.label(f"client_{column.name}") for column in CLIENTS.c),
    )
    .join(Grant, Grant.id == Token.grant_id)
    .outerjoin(Account, Account.id == Token.account_id)
    .outerjoin(CLIENTS, CLIENTS.c.client_id == Token.client_id)
    .where(Token.token_hash == bindparam("hash"), Token.kind == "refresh")
)  # fmt: skip
CREDENTIAL_FIELDS = 11  # FIND_REFRESH's columns before the client's
LIVE = (TOKENS.c.superseded_at.is_(None), TOKENS.c.revoked_at.is_(None))
CLAIM = (
    update(TOKENS)
    .where(TOKENS.c.id == bindparam("used"), *LIVE)
    .values(used_at=func.coalesce(TOKENS.c.used_at, bindparam("now")))
)
STILL_LIVE = (
    select(TOKENS.c.id).where(TOKENS.c.id == bindparam("used"), *LIVE).with_for_update(read=True)
)
SUPERSEDE = (
    update(TOKENS)
    .where(TOKENS.c.superseded_at.is_(None))
    .where(
        (TOKENS.c.id == bindparam("parent"))
        | ((TOKENS.c.parent_id == bindparam("parent")) & (TOKENS.c.id != bindparam("used")))
    )
    .values(superseded_at=bindparam("now"))
)


def store_tokens(
    session: Session,
    grant: Grant,
    access_token: str,
    refresh_token: str | None,
    expires_in: int,
) -> None:
    """Persist a token pair of a new link (or the simulator's access token) as hashes."""
    issued = {"grant_id": grant.id, "client_id": grant.client_id,
              "account_id": grant.account_id, "scope": grant.scope}  # fmt: skip
    insert_pair(session.connection(), issued, access_token, refresh_token, expires_in, None)


def store_refreshed(
    connection: Connection | Driver,
    used: RefreshCredential,
    access_token: str,
    refresh_token: str,
    expires_in: int,
) -> None:
    """Persist the pair a refresh issued, as children of the refresh token used (same grant,
    client, owner and scope)."""
    issued = {"grant_id": used.grant_id, "client_id": used.client_id,
              "account_id": used.account_id, "scope": used.scope}  # fmt: skip
    insert_pair(connection, issued, access_token, refresh_token, expires_in, used.id)


def insert_pair(
    connection: Connection | Driver,
    issued: dict[str, str],
    access_token: str,
    refresh_token: str | None,
    expires_in: int,
    parent_id: int | None,
) -> None:
    """The access token and (if any) refresh token as hashes, in one INSERT."""
    now = utcnow()
    common = {**issued, "issued_at": now, "used_at": None, "superseded_at": None,
              "revoked_at": None}  # fmt: skip
    rows = [{**common, "kind": "access", "token_hash": digest(access_token),
             "expires_at": now + timedelta(seconds=expires_in), "parent_id": None}]  # fmt: skip
    if refresh_token:
        rows.append({**common, "kind": "refresh", "token_hash": digest(refresh_token),
                     "expires_at": None, "parent_id": parent_id})  # fmt: skip
    connection.execute(INSERT_TOKENS, rows)


@dataclass(frozen=True)
class RefreshCredential:
    """A presented refresh token with what the refresh grant needs of its grant and owner,
    read in one query; Authlib's grant asks it what it asks a token (check_client, get_scope)."""

    id: int
    grant_id: str
    client_id: str
    account_id: str
    scope: str
    parent_id: int | None
    used_at: datetime | None
    superseded_at: datetime | None
    revoked_at: datetime | None
    grant_revoked_at: datetime | None
    owner: str | None  # the account's id, None once the account is gone
    # The token's client as the token endpoint may authenticate it (read in the same query),
    # or None: gone, or one of the console's simulator clients, which nobody may use there.
    client: OAuthClient | None = None

    def check_client(self, client: OAuthClient) -> bool:
        return self.client_id == client.client_id

    def get_scope(self) -> str:
        return self.scope


def find_refresh(connection: Connection | Driver, value: str) -> RefreshCredential | None:
    """The refresh token `value` with its grant's state, its owner and its client, or None if
    there is no such token."""
    row = connection.execute(FIND_REFRESH, {"hash": digest(value)}).one_or_none()
    if row is None:
        return None
    client = dict(zip(CLIENTS.c.keys(), row[CREDENTIAL_FIELDS:], strict=True))
    usable = client["client_id"] is not None and not client["simulator"]
    return RefreshCredential(
        *row[:CREDENTIAL_FIELDS], client=OAuthClient(**client) if usable else None
    )


def refusal(credential: RefreshCredential) -> str | None:
    """Why this refresh token may not be used now ("revoked", "reused"), or None if it may."""
    if credential.grant_revoked_at is not None or credential.revoked_at is not None:
        return "revoked"
    if credential.superseded_at is not None or (
        credential.used_at is not None and utcnow() - credential.used_at > REFRESH_RETRY_GRACE
    ):
        return "reused"
    return None


def rotate(connection: Connection | Driver, used: RefreshCredential) -> bool:
    """A refresh token is being used: mark it used (its first use is kept), and its parent and
    the parent's other children die now.

    The used token itself stays valid for REFRESH_RETRY_GRACE, or until one of its own children
    is used, so a client that lost our answer (a retry) can present it again without breaking the
    link; later, presenting it again is reuse.

    Checked again as it is written: False, and nothing written, when the token was superseded
    or revoked after it was read (one of its children used, or the link revoked, meanwhile), so
    a refresh racing either issues nothing. A first use marks the token (a row lock until
    commit); a retry only reads it under a shared lock (FOR SHARE on PostgreSQL; SQLite's write
    transaction serialises anyway), so retries of one token do not queue behind each other.
    """
    params = {"used": used.id, "parent": used.parent_id, "now": utcnow()}
    if used.used_at is None:
        claimed = connection.execute(CLAIM, params).rowcount == 1
    else:
        claimed = connection.execute(STILL_LIVE, params).first() is not None
    if claimed and used.parent_id is not None:
        connection.execute(SUPERSEDE, params)
    return claimed


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


def erase_account(session: Session, account_id: str) -> int:
    """A deleted owner's codes, tokens and grants, gone at once: their tokens answer 401 (Alexa
    INVALID_AUTHORIZATION_CREDENTIAL, Google authFailure) on the next request. How many links."""
    session.execute(delete(Token).where(Token.account_id == account_id))
    session.execute(delete(AuthorizationCode).where(AuthorizationCode.account_id == account_id))
    result = session.execute(delete(Grant).where(Grant.account_id == account_id))
    return int(result.rowcount)  # type: ignore[attr-defined]


def export_links(session: Session, account_id: str) -> list[dict[str, object]]:
    """An owner's links for their export, revoked ones too: never a token or its hash."""
    rows = session.execute(
        select(Grant, OAuthClient.name, OAuthClient.assistant)
        .join(OAuthClient, OAuthClient.client_id == Grant.client_id)
        .where(Grant.account_id == account_id, OAuthClient.simulator.is_(False))
        .order_by(Grant.created_at)
    ).all()
    return [
        {
            "client": name,
            "assistant": assistant,
            "scope": grant.scope,
            "created_at": grant.created_at,
            "last_used_at": grant.last_used_at,
            "revoked_at": grant.revoked_at,
            "revoked_reason": grant.revoked_reason,
        }
        for grant, name, assistant in rows
    ]


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
    # The grant's last use is older than LAST_USED_RESOLUTION and was not written (a check
    # made with touch=False, in a reading transaction): `touch` it in a writing one.
    stale: bool = False


def authenticate_bearer(
    session: Session | Driver,
    token: str | None,
    assistant: str | None = None,
    *,
    touch: bool = True,
) -> Principal | Failure:
    """Turn an access token into (account, client, scopes), or a typed failure.

    With `assistant`, a token issued to any other audience's client is INVALID here (RFC 9700
    2.3: a token is for its audience): an Alexa token cannot disconnect Google, nor the reverse,
    and an `other` client's token is refused by both.

    The grant's last use is written at most once a minute; with touch=False it is not written
    here (a reading transaction takes no write lock) and the Principal says `stale` instead;
    a Driver (Database.driver) only reads, so it is always given touch=False.
    """
    if not token:
        return Failure.MISSING
    # One Core query for token, link and client (no ORM objects built): this runs on every
    # directive, and its answer is read from the database each time, so a revocation through
    # any instance refuses the very next request everywhere.
    row = connection_of(session).execute(BEARER, {"token_hash": digest(token)}).one_or_none()
    return judged(session, row, assistant, touch)


def authenticate_for_camera(
    session: Session | Driver,
    token: str | None,
    assistant: str,
    camera_id: str,
    *,
    touch: bool = True,
) -> tuple[Principal | Failure, Camera | None]:
    """`authenticate_bearer` and the token owner's camera `camera_id`, read in the same
    statement: a directive names both, and each statement costs more to run than to read.

    The camera is None when the token is refused, or when no camera of the token's owner has
    that id (another owner's camera looks the same as none). It is a copy in no session
    (cameras.camera_of), for reading."""
    if not token:
        return Failure.MISSING, None
    values = {"token_hash": digest(token), "camera_id": camera_id}
    row = connection_of(session).execute(BEARER_AND_CAMERA, values).one_or_none()
    principal = judged(session, row, assistant, touch=touch)
    if row is None or not isinstance(principal, Principal) or row.camera_found is None:
        return principal, None
    return principal, camera_of(row[-len(CAMERA_COLUMNS) :])


def judged(
    session: Session | Driver, row: Any | None, assistant: str | None, touch: bool
) -> Principal | Failure:
    """What a BEARER row (None: no such token) says of the token presented."""
    if row is None:
        return Failure.INVALID
    if assistant and row.assistant != assistant:
        return Failure.INVALID
    if row.revoked_at is not None or row.grant_revoked_at is not None:
        return Failure.REVOKED
    now = utcnow()
    if row.expires_at is not None and row.expires_at <= now:
        return Failure.EXPIRED
    stale = row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION
    if stale and touch:
        if isinstance(session, Driver):
            raise ValueError("a Driver only reads: authenticate with touch=False")
        touch_grant(session, row.grant_id)
    return Principal(
        account_id=row.account_id,
        client_id=row.client_id,
        assistant=row.assistant,
        grant_id=row.grant_id,
        scopes=frozenset(row.scope.split()),
        stale=stale and not touch,
    )


def touch_grant(session: Session, grant_id: str) -> None:
    """Record that a grant was used now (the console lists each link's last use)."""
    session.execute(
        update(Grant).where(Grant.id == grant_id).values(last_used_at=utcnow()),
        execution_options={"synchronize_session": False},
    )


BEARER = (
    select(
        Token.account_id, Token.client_id, Token.scope, Token.expires_at, Token.revoked_at,
        Grant.id.label("grant_id"), Grant.revoked_at.label("grant_revoked_at"),
        Grant.last_used_at, OAuthClient.assistant,
    )
    .join(Grant, Grant.id == Token.grant_id)
    .join(OAuthClient, OAuthClient.client_id == Token.client_id)
    .where(Token.token_hash == bindparam("token_hash"), Token.kind == "access")
)  # fmt: skip
# BEARER and the camera a directive names, when the token's owner has it: its columns last.
BEARER_AND_CAMERA = BEARER.add_columns(Camera.id.label("camera_found"), *CAMERA_COLUMNS).outerjoin(
    Camera, (Camera.id == bindparam("camera_id")) & (Camera.owner_id == Token.account_id)
)
