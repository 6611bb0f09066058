"""HomeGraph: tell Google when an owner's cameras change (requestSync) or go offline
(reportStateAndNotification), from the outbox worker, authenticated with google-auth.

Credentials come from a service-account key file; its own `token_uri` decides where tokens are
fetched (tests run a fake Google on 127.0.0.1). We refresh the credentials ourselves and set the
header on a plain requests session rather than using AuthorizedSession, whose newer releases
look up iamcredentials.googleapis.com in the background on every call (see ../shared/traps.md).

The outbox delivers at least once. reportState's `requestId` comes from the outbox event's
stable key, so a re-delivery carries the same one (Google documents it as an id for debugging;
the call itself sets state, so a repeat is harmless). requestSync has no such field, only
`agentUserId`: a repeat asks Google for one more SYNC.
"""

from __future__ import annotations

import functools
import logging
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import google.auth.transport.requests
import requests
from google.oauth2 import service_account
from sqlalchemy import String, delete
from sqlalchemy.orm import Mapped, Session, mapped_column

from camvoice.db import Database
from camvoice.models import Base, Camera, utcnow
from camvoice.outbox import RetryLater, message_id, retry_after_seconds
from oauth.tokens import linked_since

log = logging.getLogger(__name__)
SCOPE = "https://www.googleapis.com/auth/homegraph"
TIMEOUT = 10
SYNC_FIELDS = {"name", "room", "nicknames", "model", "firmware"}


class UnknownAgentUser(Exception):
    """HomeGraph answered 404: Google does not know this agentUserId (not linked any more)."""


class HomeGraphStop(Base):
    """Owners Google no longer knows (404): no calls for them until they link Google again."""

    __tablename__ = "homegraph_stops"

    account_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    stopped_at: Mapped[datetime] = mapped_column(default=utcnow)


class HomeGraph:
    """A small client for the two HomeGraph calls camvoice makes."""

    def __init__(self, key_file: Path, base_url: str) -> None:
        self.credentials = service_account.Credentials.from_service_account_file(
            str(key_file), scopes=[SCOPE]
        )
        self.base_url = base_url.rstrip("/")
        self.http = requests.Session()
        self._lock = threading.Lock()

    def _authorization(self) -> str:
        with self._lock:
            if not self.credentials.valid:
                # HomeGraph's own timeout, not google-auth's 120 s default: the outbox lease
                # (camvoice/outbox.py) must outlast the slowest delivery, this refresh included.
                request = google.auth.transport.requests.Request(self.http)
                self.credentials.refresh(functools.partial(request, timeout=TIMEOUT))
            return f"Bearer {self.credentials.token}"

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.http.post(
            f"{self.base_url}{path}",
            json=body,
            headers={"Authorization": self._authorization()},
            timeout=TIMEOUT,
        )
        if response.status_code == 404:
            raise UnknownAgentUser(body.get("agentUserId"))
        if response.status_code >= 400:
            # Raised to the outbox, which retries with backoff (at least what a 429 or 503's
            # Retry-After asks); the message holds no secrets.
            message = f"HomeGraph {path} answered {response.status_code}"
            if response.status_code in (429, 503):
                wait = retry_after_seconds(response.headers.get("Retry-After"))
                raise RetryLater(message, wait)
            raise RuntimeError(message)
        return response.json() if response.content else {}

    def request_sync(self, agent_user_id: str) -> None:
        self._post("/v1/devices:requestSync", {"agentUserId": agent_user_id, "async": False})

    def report_state(self, agent_user_id: str, states: dict[str, dict[str, Any]]) -> None:
        self._post(
            "/v1/devices:reportStateAndNotification",
            {
                "requestId": message_id("reportStateAndNotification"),
                "agentUserId": agent_user_id,
                "payload": {"devices": {"states": states}},
            },
        )


def make_handler(db: Database, client: HomeGraph) -> Any:
    """The outbox handler for camera events: requestSync and/or reportState for the owner."""

    def handle(topic: str, event: dict[str, Any]) -> None:
        account_id = event["account_id"]
        if topic == "account.deleted":
            farewell_sync(client, account_id)
            return
        with db.session() as session:
            if not google_is_told(session, account_id):
                return  # not linked to Google (any more): nothing to tell it
            camera = session.get(Camera, event["camera_id"])
            online = camera.online if camera is not None else None
        changed = set(event.get("changed", []))
        try:
            if topic != "camera.changed" or changed & SYNC_FIELDS:
                client.request_sync(account_id)
            if "online" in changed and online is not None:
                client.report_state(account_id, {event["camera_id"]: {"online": online}})
        except UnknownAgentUser:
            log.warning("HomeGraph does not know owner %s; stopping calls for them", account_id)
            with db.session() as session:
                session.merge(HomeGraphStop(account_id=account_id, stopped_at=utcnow()))

    return handle


def google_is_told(session: Session, account_id: str) -> bool:
    """Whether HomeGraph calls for the owner are due: linked to Google, and not stopped since."""
    linked = linked_since(session, account_id, "google")
    stop = session.get(HomeGraphStop, account_id)
    return linked is not None and (stop is None or stop.stopped_at <= linked)


def farewell(session: Session, account_id: str, camera_ids: list[str]) -> dict[str, Any] | None:
    """A deleted owner's requestSync needs only the agentUserId, which the event carries; read
    now whether Google is to be told at all (the links are erased right after)."""
    return {} if google_is_told(session, account_id) else None


def erase(session: Session, account_id: str) -> int:
    result = session.execute(delete(HomeGraphStop).where(HomeGraphStop.account_id == account_id))
    return int(result.rowcount)  # type: ignore[attr-defined]


def farewell_sync(client: HomeGraph, account_id: str) -> None:
    """requestSync for an erased owner: Google's SYNC then finds their token refused (401) and
    the devices gone. A 404 means Google had already forgotten them: nothing left to do."""
    try:
        client.request_sync(account_id)
    except UnknownAgentUser:
        log.info("HomeGraph no longer knows deleted owner %s", account_id)
