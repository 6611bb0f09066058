"""Syncing an owner's EZVIZ account into the registry, linking and unlinking it.

The platform is read with no transaction open; the differences are then applied in one short
transaction through the registry, so the same audit rows and outbox events follow as when a
person makes the change.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from backends.ezviz.client import (
    Client,
    EzvizError,
    Keys,
    Kind,
    keys_in_use,
    list_devices,
    read_device,
)
from backends.ezviz.models import EzvizLink
from camvoice import audit
from camvoice.cameras import CameraError, Registry
from camvoice.models import Account, Camera, utcnow
from camvoice.services import Services

log = logging.getLogger(__name__)

MAX_BACKOFF = 6 * 3600.0
CLOUD_SOURCE = "ezviz"  # a camera's source when it streams through the platform's HLS


class SyncFailed(CameraError):
    """A sync that changed nothing; recorded on the link (last_error, backoff) before raising."""


@dataclass
class SyncReport:
    added: int = 0
    changed: int = 0
    removed: int = 0


def sync_account(services: Services, account_id: str) -> SyncReport:
    """Read the account from the platform, then apply the differences in one short transaction.

    No transaction is open during the HTTP calls (SQLite holds its write lock for a whole one).
    A sync that fails part-way changes nothing, so a device is never removed on a partial list.
    """
    settings = services.settings
    read: dict[str, dict[str, Any]] = {}
    with keys_in_use(services.db, settings, account_id) as keys:
        client = Client(
            keys, settings.ezviz_api_url, settings.ezviz_timeout, settings.ezviz_area_domains
        )
        for item in list_devices(client):
            serial = str(item.get("deviceSerial") or "")
            if serial and serial not in read:
                try:
                    read[serial] = read_device(client, item)
                except EzvizError as exc:
                    if exc.kind is not Kind.NOT_FOUND:
                        raise
                    # Unbound between the list and the read: it is gone.
    with services.db.session() as session:
        return apply_sync(session, services.registry, account_id, keys.app_key, read)


def apply_sync(
    session: Session,
    registry: Registry,
    account_id: str,
    app_key: str,
    read: dict[str, dict[str, Any]],
) -> SyncReport:
    """Add, rename, update and remove cameras, with the same audit and outbox events as a person.

    The link row is locked and checked again first: an owner who unlinked (or changed keys)
    while the platform was being read must not get the old account's cameras back.
    """
    report = SyncReport()
    link = session.get(EzvizLink, account_id, with_for_update=True)
    owner = session.get(Account, account_id)
    if owner is None or link is None or link.app_key != app_key:
        return report
    stmt = select(Camera).where(Camera.owner_id == account_id, Camera.backend == "ezviz")
    known = {camera.serial: camera for camera in session.scalars(stmt)}
    for serial, fields in read.items():
        camera = known.get(serial)
        if camera is None:
            fields = dict(fields)
            name = fields.pop("name")
            registry.add(session, owner, name, actor="ezviz", backend="ezviz",
                         source=CLOUD_SOURCE, serial=serial, **fields)  # fmt: skip
            report.added += 1
        elif registry.record(session, camera, fields, actor="ezviz"):
            report.changed += 1
    for serial, camera in known.items():
        if serial not in read:
            registry.remove(session, camera, actor="ezviz")
            report.removed += 1
    return report


def backoff(interval: float, failures: int) -> float:
    """Seconds until the next try: the interval, doubled per consecutive failure, capped."""
    return min(interval * 2 ** min(failures, 10), max(MAX_BACKOFF, interval))


def sync_now(services: Services, account_id: str) -> SyncReport:
    """Sync one owner and schedule the next sync; a failure backs off, is kept for the owner,
    and raises SyncFailed."""
    db, settings = services.db, services.settings
    now = utcnow()
    try:
        report = sync_account(services, account_id)
    except Exception as exc:  # an odd answer must not stop the worker or skip the backoff
        if not isinstance(exc, EzvizError):
            log.exception("EZVIZ sync of %s failed unexpectedly", account_id)
        with db.session() as session:
            link = session.get(EzvizLink, account_id)
            if link is not None:
                link.failures += 1
                delay = backoff(settings.ezviz_sync_interval, link.failures)
                link.next_sync_at = now + timedelta(seconds=delay)
                link.last_error = str(exc)[:255]
                log.warning("EZVIZ sync of %s failed (%s); next try in %.0f s",
                            account_id, exc, delay)  # fmt: skip
        services.metrics.syncs.labels("ezviz", "failed").inc()
        raise SyncFailed(str(exc)[:255]) from None
    with db.session() as session:
        link = session.get(EzvizLink, account_id)
        if link is not None:
            link.failures = 0
            link.last_error = None
            link.last_sync_at = now
            link.next_sync_at = now + timedelta(seconds=settings.ezviz_sync_interval)
    services.metrics.syncs.labels("ezviz", "ok").inc()
    if report.added or report.changed or report.removed:
        log.info("EZVIZ sync of %s: %s", account_id, report)
    return report


def sync_due(services: Services) -> int:
    """Sync every owner whose turn has come; several workers never sync the same owner twice.

    A newly linked account is due at once: its first import runs here, in the worker.
    """
    db, settings = services.db, services.settings
    now = utcnow()
    with db.reading() as session:
        due = session.execute(
            select(EzvizLink.account_id, EzvizLink.next_sync_at)
            .where(EzvizLink.next_sync_at <= now)
            .order_by(EzvizLink.next_sync_at)
            .limit(10)
        ).all()
    synced = 0
    for account_id, when in due:
        lease = utcnow() + timedelta(seconds=settings.ezviz_sync_interval)
        with db.session() as session:
            claimed = session.execute(
                update(EzvizLink)
                .where(EzvizLink.account_id == account_id, EzvizLink.next_sync_at == when)
                .values(next_sync_at=lease)
            ).rowcount
        if claimed == 1:
            with contextlib.suppress(SyncFailed):  # recorded on the link, retried after backoff
                sync_now(services, account_id)
            synced += 1
    return synced


def link_account(
    services: Services, owner: Account, app_key: str, app_secret: str, actor: str
) -> None:
    """Check the keys with one token call and keep them (secret sealed). The cameras are
    imported by the worker's next round (`sync_due`), or at once by `sync_now`."""
    settings = services.settings
    app_key, app_secret = app_key.strip(), app_secret.strip()
    if not app_key or not app_secret:
        raise CameraError("appKey and appSecret must not be empty")
    keys = Keys(owner.id, app_key, app_secret, None, None, None)
    try:
        Client(
            keys, settings.ezviz_api_url, settings.ezviz_timeout, settings.ezviz_area_domains
        ).renew()
    except EzvizError as exc:
        raise CameraError(f"EZVIZ refused these keys ({exc})") from None
    sealer = settings.sealer()
    with services.db.session() as session:
        link = session.get(EzvizLink, owner.id) or EzvizLink(account_id=owner.id, failures=0)
        link.app_key = app_key
        link.app_secret = sealer.encrypt(app_secret.encode()).decode()
        keys.store(link, settings)
        link.next_sync_at = utcnow()
        link.last_sync_at = None
        link.last_error = None
        session.add(link)
        audit.record(session, "ezviz.linked", actor=actor, account_id=owner.id)


def unlink_account(session: Session, registry: Registry, owner: Account, actor: str) -> int:
    """Forget the keys and remove the owner's EZVIZ cameras (assistants hear DeleteReport)."""
    link = session.get(EzvizLink, owner.id)
    if link is None:
        raise CameraError(f"{owner.email} has no EZVIZ account linked")
    stmt = select(Camera).where(Camera.owner_id == owner.id, Camera.backend == "ezviz")
    removed = 0
    for camera in session.scalars(stmt):
        registry.remove(session, camera, actor=actor)
        removed += 1
    session.delete(link)
    audit.record(session, "ezviz.unlinked", actor=actor, account_id=owner.id)
    return removed
