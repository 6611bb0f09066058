"""An owner leaving: their data exported as JSON, and their account deleted for good.

Deletion, and why the assistants still hear of it after the account is gone:

- One transaction does it all. It first writes the assistants' farewell events to the outbox
  (topic `account.deleted`: Alexa's DeleteReport of the owner's endpoints, Google's
  requestSync), then erases: OAuth grants, codes and tokens, sign-in sessions, cameras (their
  sealed sources with them), the camera-cloud (EZVIZ) link, the Alexa event link, stream views,
  audit rows and the account itself. It commits whole or not at all, so the events exist if and
  only if the data went, and the owner's old token answers 401 on the very next request.
- Delivery comes later, from `camvoice worker`, when nothing of the owner is left to read. So
  each event carries what its handler needs at delivery time: the endpoint ids and the
  agentUserId, and for Alexa the owner's event-gateway tokens from AcceptGrant, still sealed
  with the key ring, in Alexa's own outbox row only (`Outbox.publish_to`). The outbox drops
  that sealed part from the row once the event is delivered or dead (camvoice/outbox.py).
- Adapters say what they add, through the `OwnerData` the composition root builds: a farewell
  per outbox subscriber (what its event must carry; None: nothing to tell), an eraser for the
  rows they keep, and a section of the export.
- Kept: one audit tombstone, `account.deleted`, with no account id and no email: its `ref` is an
  HMAC of the email under the secret key, so an operator given a former owner's email can show
  that the account was deleted, while the row alone tells nobody whose it was.

Not erased here: sign-in rate-limit rows keyed by the email, which expire within a day (the
purge removes them), and delivered outbox rows of earlier camera events, which hold only opaque
ids and go with CAMVOICE_OUTBOX_RETENTION_DAYS.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from camvoice import audit
from camvoice.models import Account, AuditEvent, Camera, utcnow
from camvoice.outbox import Outbox
from camvoice.sealing import shown_source
from camvoice.sessions import end_all
from camvoice.streams import StreamView

TOPIC = "account.deleted"
EXPORT_FORMAT = "camvoice-export/1"
# What an adapter's farewell returns for its subscriber's event: extra payload fields, with any
# secret under "sealed" (dropped from the row once delivered); None when there is nothing to tell.
Farewell = Callable[[Session, str, list[str]], dict[str, Any] | None]
Eraser = Callable[[Session, str], int]  # deletes an adapter's rows of an account; how many
Exporter = Callable[[Session, str], Any]  # an adapter's section of the export, without secrets
CAMERA_FIELDS = ("id", "name", "nicknames", "room", "model", "firmware", "serial", "width",
                 "height", "backend", "online", "image_encryption", "audio", "sleep_mode",
                 "status_light", "created_at", "updated_at")  # fmt: skip


class OwnerData:
    """What each adapter adds to an owner's export and deletion, wired once per process."""

    def __init__(self) -> None:
        self.farewells: dict[str, Farewell] = {}  # outbox subscriber -> its farewell
        self.erasers: dict[str, Eraser] = {}
        self.exporters: dict[str, Exporter] = {}

    def add_farewell(self, subscriber: str, farewell: Farewell) -> None:
        self.farewells[subscriber] = farewell

    def add_eraser(self, name: str, eraser: Eraser) -> None:
        self.erasers[name] = eraser

    def add_exporter(self, section: str, exporter: Exporter) -> None:
        self.exporters[section] = exporter


def tombstone_ref(key: str, email: str) -> str:
    """The tombstone's reference to a deleted owner: not reversible without the secret key."""
    digest = hmac.new(key.encode(), email.strip().lower().encode(), hashlib.sha256)
    return "hmac-sha256:" + digest.hexdigest()


def delete_account(
    session: Session, owner_data: OwnerData, outbox: Outbox, account: Account, *, key: str,
    actor: str,
) -> dict[str, int]:  # fmt: skip
    """Tell the assistants (outbox), then erase everything of `account`, in the caller's
    transaction; the counts the tombstone keeps."""
    account_id, email = account.id, account.email
    # The account's row locked first (PostgreSQL): a camera a sync adds meanwhile waits, then
    # finds no owner, instead of slipping past the DeleteReport's list.
    session.execute(select(Account.id).where(Account.id == account_id).with_for_update())
    camera_ids = list(session.scalars(select(Camera.id).where(Camera.owner_id == account_id)))
    told = publish_farewells(session, owner_data, outbox, account_id, camera_ids)
    counts = {name: erase(session, account_id) for name, erase in owner_data.erasers.items()}
    counts["sessions"] = end_all(session, account_id)
    counts["stream_views"] = _delete(session, StreamView, StreamView.account_id == account_id)
    counts["audit_events"] = _delete(session, AuditEvent, AuditEvent.account_id == account_id)
    counts["cameras"] = len(camera_ids)  # deleted with the account (ORM cascade), sources too
    session.delete(account)
    session.flush()
    audit.record(session, "account.deleted", actor=actor, ref=tombstone_ref(key, email),
                 assistants_told=told, cameras=counts["cameras"])  # fmt: skip
    return counts


def publish_farewells(
    session: Session, owner_data: OwnerData, outbox: Outbox, account_id: str, cameras: list[str]
) -> int:
    """One `account.deleted` event per subscriber that has something to tell its assistant."""
    payloads: dict[str, dict[str, Any]] = {}
    for subscriber, farewell in owner_data.farewells.items():
        extra = farewell(session, account_id, cameras)
        if extra is not None:
            payloads[subscriber] = {"account_id": account_id, "camera_ids": cameras, **extra}
    return outbox.publish_to(session, TOPIC, payloads)


def _delete(session: Session, table: type[Any], condition: Any) -> int:
    result = session.execute(delete(table).where(condition).execution_options(
        synchronize_session="fetch"))  # fmt: skip
    return int(result.rowcount)  # type: ignore[attr-defined]


def export_account(session: Session, owner_data: OwnerData, account: Account) -> dict[str, Any]:
    """The owner's data as plain JSON-able values: account (no password hash), cameras (no
    source credentials, no sealed values), the adapters' sections (links without tokens) and
    the audit log."""
    cameras = session.scalars(
        select(Camera).where(Camera.owner_id == account.id).order_by(Camera.name)
    )
    events = session.scalars(
        select(AuditEvent).where(AuditEvent.account_id == account.id).order_by(AuditEvent.id)
    )
    data: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "exported_at": utcnow(),
        "account": {
            "id": account.id,
            "email": account.email,
            "created_at": account.created_at,
            "disabled_at": account.disabled_at,
        },
        "cameras": [
            {**{k: getattr(c, k) for k in CAMERA_FIELDS}, "source": shown_source(c)}
            for c in cameras
        ],
    }
    for section, exporter in owner_data.exporters.items():
        data[section] = exporter(session, account.id)
    data["audit"] = [
        {
            "at": e.at,
            "action": e.action,
            "actor": e.actor,
            "camera_id": e.camera_id,
            "assistant": e.assistant,
            "detail": e.detail,
        }
        for e in events
    ]
    return plain(data)


def plain(value: Any) -> Any:
    """Timestamps as ISO 8601 strings, all the way down."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value
