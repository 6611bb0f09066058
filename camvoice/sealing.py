"""Secrets at rest: camera source credentials sealed, and every sealed value resealed on rotation.

A source URL with credentials (`rtsp://user:pass@host/...`) is kept twice: `cameras.source`
holds it without its userinfo (what listings, readiness and audit rows read), and
`cameras.source_secret` holds the whole URL sealed with the key ring (Settings.sealer). Only the
paths that start a relay, a snapshot or a probe open it (`source_url`).

Rows written before sealing existed keep their URL in `source`; `seal_plain_sources` moves them
(`camvoice db upgrade` runs it after migrating: a migration has no key) and `reseal` re-encrypts
every sealed column with the ring's first key (`camvoice keys reseal`).
"""

from __future__ import annotations

import logging
from typing import Any

from cryptography.fernet import InvalidToken, MultiFernet
from sqlalchemy import select
from sqlalchemy.orm import InstrumentedAttribute, Session

from camvoice.models import Camera
from camvoice.redact import MASK, userinfo_end

log = logging.getLogger(__name__)


class Unsealable(Exception):
    """A sealed value that no key of the ring opens (the keys changed): enter it again."""


def public_source(source: str) -> str:
    """A source URL without its userinfo: what may be stored in the clear and shown."""
    scheme, sep, rest = source.partition("://")
    if not sep or "@" not in rest:
        return source
    cut = userinfo_end(rest)
    return f"{scheme.lower()}://{rest[cut + 1 :] if cut >= 0 else MASK}"


def store_source(camera: Camera, source: str | None, sealer: MultiFernet | None) -> None:
    """Set a camera's source, sealing its credentials. No sealer, no credentials kept."""
    if source is None or public_source(source) == source:
        camera.source, camera.source_secret = source, None
        return
    if sealer is None:
        raise RuntimeError("source credentials need a sealer to be stored")
    camera.source = public_source(source)
    camera.source_secret = sealer.encrypt(source.encode()).decode()


def source_url(camera: Camera, sealer: MultiFernet) -> str | None:
    """The source as the camera needs it, credentials included: for starting a relay only."""
    if not camera.source_secret:
        return camera.source
    try:
        return sealer.decrypt(camera.source_secret.encode()).decode()
    except InvalidToken:
        raise Unsealable(f"camera {camera.id}'s source credentials cannot be opened") from None


def shown_source(camera: Camera) -> str | None:
    """The source as listings show it: credentials, when kept, as ***."""
    if camera.source_secret and camera.source and "://" in camera.source:
        scheme, _, rest = camera.source.partition("://")
        return f"{scheme}://{MASK}@{rest}"
    return public_source(camera.source) if camera.source else camera.source


def seal_plain_sources(session: Session, sealer: MultiFernet) -> int:
    """Seal the credentials of sources stored before sealing existed; how many were sealed."""
    count = 0
    stmt = select(Camera).where(Camera.source.contains("@"), Camera.source_secret.is_(None))
    for camera in session.scalars(stmt):
        store_source(camera, camera.source, sealer)
        count += 1
    return count


def reseal(session: Session, sealer: MultiFernet, column: InstrumentedAttribute[Any]) -> int:
    """Re-encrypt one sealed column with the ring's first key; how many values were resealed.
    A value no key opens is left alone and logged (its owner must enter it again)."""
    model, key = column.class_, column.key
    count = 0
    for row in session.scalars(select(model).where(column.is_not(None))):
        try:
            setattr(row, key, sealer.rotate(getattr(row, key).encode()).decode())
            count += 1
        except InvalidToken:
            log.warning("%s.%s of one row cannot be opened with any key", model.__name__, key)
    return count
