"""The camera registry: backends that serve cameras, and the changes owners and operators make.

A Backend is where a camera's settings come from. `local` keeps them in camvoice's own database
(the embedded default); `ezviz` (camvoice/ezviz.py) syncs an owner's EZVIZ cameras into the same
table, so directives read one registry whichever backend a camera comes from.
"""

from __future__ import annotations

from typing import Any, Protocol
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from camvoice import audit, outbox, tickets
from camvoice.models import Account, Camera
from camvoice.readiness import Assistant, explain, readiness

SETTINGS = ("online", "image_encryption", "audio", "sleep_mode", "status_light")
DESCRIPTIVE = ("name", "room", "nicknames", "model", "firmware", "serial", "source")


class CameraError(ValueError):
    """A caller's mistake: unknown camera, bad source URL, empty name."""


class StreamUnavailable(Exception):
    """A backend could not give a camera's stream right now; the message is safe to show."""


class Backend(Protocol):
    """Where an owner's cameras and their settings live."""

    name: str

    def list_cameras(self, session: Session, account_id: str) -> list[Camera]: ...

    def get_camera(self, session: Session, account_id: str, camera_id: str) -> Camera | None: ...

    def apply(
        self, session: Session, camera: Camera, changes: dict[str, Any], code: str | None = None
    ) -> None:
        """Push changed settings to where they really live (`code`: the camera label's code)."""
        ...

    def recheck(self, session: Session, camera: Camera, protocol: tickets.Protocol) -> None:
        """Refresh what the readiness rules read, just before a stream is handed out."""
        ...

    def upstream_hls(self, session: Session, camera: Camera) -> str | None:
        """The HLS address a camera cloud streams from, or None when camvoice relays it."""
        ...


class LocalBackend:
    """Cameras kept in camvoice's own database, managed by the CLI and the console."""

    name = "local"

    def list_cameras(self, session: Session, account_id: str) -> list[Camera]:
        stmt = select(Camera).where(Camera.owner_id == account_id).order_by(Camera.name)
        return list(session.scalars(stmt))

    def get_camera(self, session: Session, account_id: str, camera_id: str) -> Camera | None:
        camera = session.get(Camera, camera_id)
        # Another owner's camera is indistinguishable from a missing one.
        return camera if camera is not None and camera.owner_id == account_id else None

    def apply(
        self, session: Session, camera: Camera, changes: dict[str, Any], code: str | None = None
    ) -> None:
        for key, value in changes.items():
            setattr(camera, key, value)

    def recheck(self, session: Session, camera: Camera, protocol: tickets.Protocol) -> None:
        """The database is the camera's truth: nothing to ask."""

    def upstream_hls(self, session: Session, camera: Camera) -> str | None:
        return None


BACKENDS: dict[str, Backend] = {"local": LocalBackend()}


def backend_for(camera: Camera) -> Backend:
    return BACKENDS[camera.backend]


def validate_source(source: str | None, backend: str = "local") -> str | None:
    """`demo`, an rtsp:// or rtsps:// URL with a host, `ezviz` (the platform's HLS), or None."""
    if source is None or source == "demo" or (source == "ezviz" and backend == "ezviz"):
        return source
    parts = urlsplit(source)
    if parts.scheme not in ("rtsp", "rtsps") or not parts.hostname:
        raise CameraError(f"stream source must be 'demo' or an rtsp:// URL, not {redact(source)!r}")
    return source


def protocols(camera: Camera) -> frozenset[tickets.Protocol]:
    """What a camera's source can be served as: the platform's HLS is HLS only (no RTSPS)."""
    if not camera.source:
        return frozenset()
    if camera.source == "ezviz":
        return frozenset({tickets.Protocol.HLS})
    return frozenset(tickets.Protocol)


def redact(source: str | None) -> str | None:
    """A source URL without its credentials, safe to log or show."""
    if not source or "@" not in source:
        return source
    parts = urlsplit(source)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://***@{host}{port}{parts.path}"


def add_camera(
    session: Session,
    owner: Account,
    name: str,
    *,
    actor: str,
    source: str | None = "demo",
    backend: str = "local",
    **fields: Any,
) -> Camera:
    name = name.strip()
    if not name:
        raise CameraError("camera name must not be empty")
    unknown = set(fields) - set(SETTINGS) - set(DESCRIPTIVE)
    if unknown:
        raise CameraError(f"unknown camera fields: {', '.join(sorted(unknown))}")
    camera = Camera(
        owner_id=owner.id,
        name=name,
        backend=backend,
        source=validate_source(source, backend),
        **fields,
    )
    session.add(camera)
    session.flush()
    audit.record(session, "camera.added", actor=actor, account_id=owner.id, camera_id=camera.id)
    outbox.publish(session, "camera.added", {"account_id": owner.id, "camera_id": camera.id})
    return camera


def update_camera(
    session: Session,
    camera: Camera,
    changes: dict[str, Any],
    *,
    actor: str,
    push: bool = True,
    code: str | None = None,
) -> dict[str, Any]:
    """Apply changes through the camera's backend; audit and publish only what really changed.

    `push=False` records changes that came from the backend itself (a sync): nothing to send back.
    """
    unknown = set(changes) - set(SETTINGS) - set(DESCRIPTIVE)
    if unknown:
        raise CameraError(f"unknown camera fields: {', '.join(sorted(unknown))}")
    if "source" in changes:
        changes["source"] = validate_source(changes["source"], camera.backend)
    if "name" in changes and not str(changes["name"]).strip():
        raise CameraError("camera name must not be empty")
    changed = {k: v for k, v in changes.items() if getattr(camera, k) != v}
    if not changed:
        return {}
    before = {k: getattr(camera, k) for k in changed}
    # A change that came from the backend itself (a sync) only needs recording here.
    (backend_for(camera) if push else BACKENDS["local"]).apply(session, camera, changed, code)
    session.flush()
    shown = {k: (redact(v) if k == "source" else v) for k, v in changed.items()}
    shown_before = {k: (redact(v) if k == "source" else v) for k, v in before.items()}
    audit.record(
        session,
        "camera.changed",
        actor=actor,
        account_id=camera.owner_id,
        camera_id=camera.id,
        before=shown_before,
        after=shown,
    )
    outbox.publish(
        session,
        "camera.changed",
        {"account_id": camera.owner_id, "camera_id": camera.id, "changed": sorted(changed)},
    )
    return changed


def remove_camera(session: Session, camera: Camera, *, actor: str) -> None:
    audit.record(
        session, "camera.removed", actor=actor, account_id=camera.owner_id, camera_id=camera.id
    )
    outbox.publish(
        session, "camera.removed", {"account_id": camera.owner_id, "camera_id": camera.id}
    )
    session.delete(camera)


def all_cameras(session: Session, owner_id: str | None = None) -> list[Camera]:
    """Every camera (optionally one owner's), for operators."""
    stmt = select(Camera).order_by(Camera.owner_id, Camera.name)
    if owner_id is not None:
        stmt = stmt.where(Camera.owner_id == owner_id)
    return list(session.scalars(stmt))


def describe(camera: Camera, language: str = "en") -> dict[str, Any]:
    """A camera with its readiness for each assistant, for listings and the console."""
    ready: dict[str, Any] = {}
    for assistant in Assistant:
        blockers = readiness(camera, assistant)
        ready[assistant.value] = {
            "ready": not blockers,
            "blockers": [{"code": b.value, "reason": explain(b, language)} for b in blockers],
        }
    return {
        "id": camera.id,
        "owner": camera.owner.email,
        "name": camera.name,
        "nicknames": list(camera.nicknames or []),
        "room": camera.room,
        "model": camera.model,
        "firmware": camera.firmware,
        "serial": camera.serial,
        "backend": camera.backend,
        "source": redact(camera.source),
        **{key: getattr(camera, key) for key in SETTINGS},
        "readiness": ready,
    }
