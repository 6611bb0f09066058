"""Proactive Alexa events: Login with Amazon tokens per owner, and the Alexa event gateway.

AcceptGrant gives us a code; we exchange it at LWA for the owner's event-gateway tokens and keep
them encrypted. The outbox worker then sends AddOrUpdateReport, DeleteReport and ChangeReport
when cameras change, refreshing the access token through LWA when it has expired.

The outbox delivers at least once, so each event's messageId comes from the outbox event's
stable key and the message's name (`message_header`): a re-delivery sends the same messageId.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import requests
from cryptography.fernet import InvalidToken
from sqlalchemy import String, Text, bindparam, delete, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from camvoice.db import Driver, connection_of
from camvoice.discovery import registry_version
from camvoice.models import Account, Base, Camera, utcnow
from camvoice.outbox import RetryLater, message_id, retry_after_seconds
from camvoice.services import Services
from camvoice.settings import Settings
from skills import messages

log = logging.getLogger(__name__)
LWA_TIMEOUT = 3.0  # AcceptGrant must be answered well within Alexa's 8 s
GATEWAY_TIMEOUT = 10.0
MAX_ENDPOINTS = 300  # per Discovery message, as in Discover.Response
DEAD_CODES = {
    "SKILL_DISABLED_EXCEPTION",
    "SKILL_NOT_FOUND_EXCEPTION",
    "ACCOUNT_NOT_FOUND_EXCEPTION",
}
# What Discovery's endpoint shows: a change of one is an AddOrUpdateReport.
SYNC_FIELDS = {"name", "room", "nicknames", "model", "firmware", "serial", "source", "width",
               "height"}  # fmt: skip


class LwaError(Exception):
    """LWA refused or failed; `dead` when the grant itself is gone (invalid_grant)."""

    def __init__(self, message: str, dead: bool = False) -> None:
        super().__init__(message)
        self.dead = dead


class AlexaLink(Base):
    """An owner's permission for camvoice to send Alexa events (from AcceptGrant)."""

    __tablename__ = "alexa_links"

    account_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    access_token: Mapped[str] = mapped_column(Text)  # Fernet-encrypted
    refresh_token: Mapped[str] = mapped_column(Text)  # Fernet-encrypted
    expires_at: Mapped[datetime] = mapped_column()
    dead_at: Mapped[datetime | None] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


def lwa_request(settings: Settings, form: dict[str, str]) -> dict[str, Any]:
    """POST to LWA's token endpoint with the skill's Alexa client credentials."""
    if not settings.alexa_client_id or not settings.alexa_client_secret:
        raise LwaError("CAMVOICE_ALEXA_CLIENT_ID / CAMVOICE_ALEXA_CLIENT_SECRET are not set")
    body = {
        **form,
        "client_id": settings.alexa_client_id,
        "client_secret": settings.alexa_client_secret.get_secret_value(),
    }
    try:
        reply = requests.post(settings.alexa_lwa_token_url, data=body, timeout=LWA_TIMEOUT)
    except requests.RequestException as exc:
        raise LwaError(f"LWA unreachable: {type(exc).__name__}") from None
    data = (
        reply.json() if reply.headers.get("Content-Type", "").startswith("application/json") else {}
    )
    if reply.status_code != 200 or "access_token" not in data:
        raise LwaError(f"LWA answered {reply.status_code} {data.get('error', '')}".strip(),
                       dead=data.get("error") == "invalid_grant")  # fmt: skip
    return data  # type: ignore[no-any-return]


def store_tokens(
    session: Session, settings: Settings, account_id: str, data: dict[str, Any]
) -> None:
    sealer = settings.sealer()
    link = session.get(AlexaLink, account_id) or AlexaLink(account_id=account_id)
    link.access_token = sealer.encrypt(data["access_token"].encode()).decode()
    link.refresh_token = sealer.encrypt(data["refresh_token"].encode()).decode()
    link.expires_at = utcnow() + timedelta(seconds=int(data.get("expires_in", 3600)))
    link.dead_at = None
    session.add(link)


def accept_grant(services: Services, account_id: str, code: str) -> None:
    """Exchange AcceptGrant's code at LWA and keep the owner's tokens (raises LwaError).
    LWA is asked with no transaction open."""
    data = lwa_request(services.settings, {"grant_type": "authorization_code", "code": code})
    with services.db.session() as session:
        store_tokens(session, services.settings, account_id, data)


def events_flow(session: Session, settings: Settings, account_id: str) -> bool:
    """Whether camvoice will send this owner's ChangeReports: the skill's Alexa client is set
    and the owner's AcceptGrant link is alive. Discovery says `proactivelyReported` only then."""
    if not settings.alexa_client_id or not settings.alexa_client_secret:
        return False
    link = session.get(AlexaLink, account_id)
    return link is not None and link.dead_at is None


def discovery_facts(
    session: Session | Driver, settings: Settings, account_id: str
) -> tuple[int | None, bool]:
    """The owner's registry version and `events_flow`, in one query: Discover reads both on
    every call, the version to find its kept answer, the link because it is part of it."""
    if not settings.alexa_client_id or not settings.alexa_client_secret:
        return registry_version(session, account_id), False
    row = connection_of(session).execute(FACTS, {"account_id": account_id}).one_or_none()
    if row is None:
        return None, False
    version, linked, dead_at = row
    return version, linked is not None and dead_at is None


# In Core, built once: read on every Discover, where the ORM's statement handling cost more
# than the query.
ACCOUNTS, LINKS = Account.__table__, AlexaLink.__table__
FACTS = (
    select(ACCOUNTS.c.registry_version, LINKS.c.account_id, LINKS.c.dead_at)
    .select_from(ACCOUNTS.outerjoin(LINKS, LINKS.c.account_id == ACCOUNTS.c.id))
    .where(ACCOUNTS.c.id == bindparam("account_id"))
)


class Gateway:
    """Sends one owner's events, refreshing their LWA token as needed."""

    def __init__(self, services: Services) -> None:
        self.db = services.db
        self.settings = services.settings

    def token(self, account_id: str, force: bool = False) -> str | None:
        """A valid access token for the owner, or None if they have no live link.

        LWA is asked between two short transactions, never inside one.
        """
        sealer = self.settings.sealer()
        with self.db.reading() as session:
            link = session.get(AlexaLink, account_id)
            if link is None or link.dead_at is not None:
                return None
            if not force and link.expires_at > utcnow() + timedelta(seconds=60):
                return sealer.decrypt(link.access_token.encode()).decode()
            sealed = link.refresh_token
        refresh = sealer.decrypt(sealed.encode()).decode()
        try:
            data = lwa_request(
                self.settings, {"grant_type": "refresh_token", "refresh_token": refresh}
            )
        except LwaError as exc:
            if not exc.dead:
                raise
            self.mark_dead(account_id, sealed)
            log.warning("Alexa grant of owner %s is dead; no more events", account_id)
            return None
        data.setdefault("refresh_token", refresh)
        with self.db.session() as session:
            link = session.get(AlexaLink, account_id)
            # A new AcceptGrant while LWA was asked holds newer tokens: keep those.
            if link is not None and link.refresh_token == sealed:
                store_tokens(session, self.settings, account_id, data)
        return str(data["access_token"])

    def carried_token(self, sealed: dict[str, str], force: bool = False) -> str | None:
        """A valid access token from the sealed pair an erased owner's farewell event carries
        (no link row is left to read or update); None when LWA says the grant is dead."""
        sealer = self.settings.sealer()
        try:
            if not force and datetime.fromisoformat(sealed["expires_at"]) > utcnow() + timedelta(
                seconds=60
            ):
                return sealer.decrypt(sealed["access_token"].encode()).decode()
            refresh = sealer.decrypt(sealed["refresh_token"].encode()).decode()
        except InvalidToken:
            raise RuntimeError("the event's sealed Alexa tokens no longer open") from None
        try:
            data = lwa_request(
                self.settings, {"grant_type": "refresh_token", "refresh_token": refresh}
            )
        except LwaError as exc:
            if exc.dead:
                return None
            raise
        return str(data["access_token"])

    def mark_dead(self, account_id: str, sealed_refresh: str | None = None) -> None:
        """Stop events for the owner; with `sealed_refresh`, only if the link still holds that
        refresh token (a new AcceptGrant meanwhile made a new, live link)."""
        with self.db.session() as session:
            link = session.get(AlexaLink, account_id)
            if link is not None and sealed_refresh in (None, link.refresh_token):
                link.dead_at = utcnow()

    def send(self, account_id: str, build: Any, carried: dict[str, str] | None = None) -> None:
        """POST build(token) to the gateway; 202 is success, 401 refreshes once. With
        `carried`, the token comes from an erased owner's sealed pair, not their link."""
        for attempt in range(2):
            if carried is not None:
                token = self.carried_token(carried, force=attempt == 1)
            else:
                token = self.token(account_id, force=attempt == 1)
            if token is None:
                return
            reply = requests.post(self.settings.alexa_event_gateway_url, json=build(token),
                                  headers={"Authorization": f"Bearer {token}"},
                                  timeout=GATEWAY_TIMEOUT)  # fmt: skip
            if reply.status_code == 202:
                return
            code = ""
            if reply.headers.get("Content-Type", "").startswith("application/json"):
                code = str((reply.json().get("payload") or {}).get("code", ""))
            if reply.status_code == 401 and attempt == 0:
                continue
            if reply.status_code in (401, 403, 404) and (
                code in DEAD_CODES or reply.status_code == 401
            ):
                self.mark_dead(account_id)
                log.warning("event gateway refused owner %s (%s); no more events", account_id, code)
                return
            # 400 is our bug, 5xx/429 are transient: raise so the outbox retries with backoff,
            # waiting at least as long as a Retry-After asks.
            message = f"event gateway answered {reply.status_code} {code}".strip()
            if reply.status_code in (429, 503):
                raise RetryLater(message, retry_after_seconds(reply.headers.get("Retry-After")))
            raise RuntimeError(message)


def make_handler(services: Services) -> Any:
    """The outbox handler: camera events to AddOrUpdateReport / DeleteReport / ChangeReport."""
    gateway = Gateway(services)
    db, settings = services.db, services.settings

    def handle(topic: str, event: dict[str, Any]) -> None:
        if topic == "account.deleted":
            farewell_report(gateway, event)
            return
        account_id, camera_id = event["account_id"], event["camera_id"]
        with db.session() as session:
            if session.get(AlexaLink, account_id) is None:
                return  # the owner never sent AcceptGrant: no events for them
            camera = session.get(Camera, camera_id)
            endpoint = (
                messages.endpoint(
                    camera,
                    settings,
                    messages.advertises_streams(services),
                    events_flow(session, settings, account_id),
                    messages.advertises_webrtc(services),
                )
                if camera
                else None
            )
            health = messages.EndpointHealth.connectivity(camera) if camera else None
        changed = set(event.get("changed", []))
        if topic == "camera.removed":
            gateway.send(account_id, lambda token: delete_report(camera_id, token))
            return
        if endpoint is None:
            return  # removed since: its own camera.removed event sends the DeleteReport
        if topic == "camera.added" or changed & SYNC_FIELDS:
            gateway.send(account_id, lambda token: add_or_update(endpoint, token))
        if "online" in changed:  # connectivity is the one property Alexa holds for a camera
            gateway.send(account_id, lambda token: change_report(camera_id, health, token))

    return handle


def farewell(session: Session, account_id: str, camera_ids: list[str]) -> dict[str, Any] | None:
    """What the DeleteReport of a deleted owner's endpoints needs once the owner is erased: the
    AcceptGrant tokens, as sealed as the link keeps them. None without a live link or cameras."""
    link = session.get(AlexaLink, account_id)
    if link is None or link.dead_at is not None or not camera_ids:
        return None
    sealed = {"access_token": link.access_token, "refresh_token": link.refresh_token,
              "expires_at": link.expires_at.isoformat()}  # fmt: skip
    return {"sealed": sealed}


def erase(session: Session, account_id: str) -> int:
    """Forget a deleted owner's Alexa event link (its tokens with it)."""
    result = session.execute(delete(AlexaLink).where(AlexaLink.account_id == account_id))
    return int(result.rowcount)  # type: ignore[attr-defined]


def farewell_report(gateway: Gateway, event: dict[str, Any]) -> None:
    """DeleteReport of every endpoint a deleted owner had, at most MAX_ENDPOINTS per message."""
    ids, sealed = event["camera_ids"], event.get("sealed")
    if sealed is None:  # delivered already and its tokens dropped: nothing left to send with
        return
    for part in range(0, len(ids), MAX_ENDPOINTS):
        chunk = [{"endpointId": i} for i in ids[part : part + MAX_ENDPOINTS]]
        name = f"Alexa.Discovery.DeleteReport.{part // MAX_ENDPOINTS}"
        gateway.send(event["account_id"], lambda token, c=chunk, n=name: {"event": {
            "header": {**messages.header("Alexa.Discovery", "DeleteReport"),
                       "messageId": message_id(n)},
            "payload": {"endpoints": c, "scope": scope(token)},
        }}, carried=sealed)  # fmt: skip


def scope(token: str) -> dict[str, str]:
    return {"type": "BearerToken", "token": token}


def add_or_update(endpoint: dict[str, Any], token: str) -> dict[str, Any]:
    return discovery_report("AddOrUpdateReport", [endpoint], token)


def delete_report(camera_id: str, token: str) -> dict[str, Any]:
    return discovery_report("DeleteReport", [{"endpointId": camera_id}], token)


def message_header(namespace: str, name: str) -> dict[str, Any]:
    """An event header whose messageId is the same on every delivery of one outbox event."""
    return {**messages.header(namespace, name), "messageId": message_id(f"{namespace}.{name}")}


def discovery_report(name: str, endpoints: list[dict[str, Any]], token: str) -> dict[str, Any]:
    """AddOrUpdateReport and DeleteReport carry their scope inside the payload."""
    payload = {"endpoints": endpoints, "scope": scope(token)}
    return {"event": {"header": message_header("Alexa.Discovery", name), "payload": payload}}


def change_report(camera_id: str, health: dict[str, Any] | None, token: str) -> dict[str, Any]:
    return {
        "event": {
            "header": message_header("Alexa", "ChangeReport"),
            "endpoint": {"scope": scope(token), "endpointId": camera_id},
            "payload": {"change": {"cause": {"type": "APP_INTERACTION"}, "properties": [health]}},
        },
        "context": {"properties": []},
    }
