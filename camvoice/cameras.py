"""The camera registry: one table of cameras whichever backend they come from, and the changes
owners, operators and backends make to it.

A Backend is where a camera's settings really live. The composition root registers them
(backends/: `local`, the service's own database, and `ezviz`, a camera cloud synced into the same
table), so directives read one registry. Backends are called with no transaction open: they may
talk to a camera cloud, and a transaction must never wait on the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from cryptography.fernet import MultiFernet
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from camvoice import audit, tickets
from camvoice.addresses import CAMERA_SCHEMES, AddressPolicy, AddressRefused
from camvoice.db import Database, Driver, connection_of
from camvoice.models import Account, Camera
from camvoice.outbox import Outbox
from camvoice.readiness import Assistant, explain, readiness
from camvoice.redact import redact as redact_text
from camvoice.sealing import Unsealable, shown_source, source_url, store_source

SETTINGS = ("online", "image_encryption", "audio", "sleep_mode", "status_light")
DESCRIPTIVE = (
    "name", "room", "nicknames", "model", "firmware", "serial", "source", "width", "height"
)  # fmt: skip


class CameraError(ValueError):
    """A caller's mistake: unknown camera, bad source URL, empty name."""


class NoSuchCamera(CameraError):
    """No such camera (or not this owner's: the two look the same)."""


class CameraGone(LookupError):
    """The backend says the camera is not (or no longer) the owner's; it has been removed."""


class StreamUnavailable(Exception):
    """A backend could not give a camera's stream right now; the message is safe to show."""


class Backend(Protocol):
    """Where cameras and their settings really live. Called with no transaction open."""

    name: str

    def push(self, camera: Camera, changes: dict[str, Any], code: str | None) -> None:
        """Make changed settings true where they live (`code`: the camera label's code).
        Raises CameraError, in the owner's words, when that fails."""
        ...

    def recheck(self, camera: Camera, protocol: tickets.Protocol) -> bool:
        """Ask where the camera lives whether it still streams, just before a URL is handed out,
        and record what was learnt. False when there is nowhere else to ask (the registry is
        the camera's truth). Raises CameraGone when it left the owner."""
        ...

    def upstream_hls(self, camera: Camera) -> str | None:
        """The HLS address a camera cloud streams from, or None when camvoice relays it."""
        ...


@dataclass(frozen=True)
class CloudLink:
    """An owner's account at a camera cloud, as the console shows it."""

    label: str  # what identifies the account to its owner (EZVIZ: the appKey)
    importing: bool  # linked, and the first import has not run yet
    last_error: str | None


@runtime_checkable
class CloudBackend(Backend, Protocol):
    """A backend an owner links their own camera-cloud account to."""

    def link(self, owner: Account, credentials: dict[str, str], actor: str) -> None:
        """Check and keep the owner's credentials; the worker imports the cameras.
        Raises CameraError when they are refused."""
        ...

    def link_of(self, account_id: str) -> CloudLink | None: ...


CAMERA_COLUMNS = tuple(Camera.__table__.c)
CAMERA_KEYS = tuple(column.key for column in CAMERA_COLUMNS)  # the attributes' names too
OWNED_CAMERA = select(*CAMERA_COLUMNS).where(
    Camera.id == bindparam("camera_id"), Camera.owner_id == bindparam("account_id")
)


def camera_of(values: Sequence[Any]) -> Camera:
    """A Camera from the values of CAMERA_COLUMNS, in their order (a Core row), in no session.

    Built as the ORM builds a loaded one (no constructor, no change history): a few
    microseconds, where Camera(**values) takes tens. For readers only: changing it writes
    nothing, and a relationship (`owner`) is not loaded."""
    camera: Camera = Camera.__mapper__.class_manager.new_instance()
    camera.__dict__.update(zip(CAMERA_KEYS, values, strict=True))
    return camera


def validate_source(
    source: str | None, backend: str = "local", addresses: AddressPolicy | None = None
) -> str | None:
    """`demo`, an rtsp:// or rtsps:// URL whose host passes the address policy (the strict one,
    public addresses only, unless the operator's is given), `ezviz` (the platform's HLS), or
    None. Checked again before every connection: DNS answers change."""
    if source is None or source == "demo" or (source == "ezviz" and backend == "ezviz"):
        return source
    try:
        (addresses or AddressPolicy()).check(source, CAMERA_SCHEMES)
    except AddressRefused as exc:
        shown = redact(source) if isinstance(source, str) else type(source).__name__
        raise CameraError(f"stream source must be 'demo' or an rtsp:// URL ({exc}), "
                          f"not {shown!r}") from None  # fmt: skip
    return source


EVERY_PROTOCOL = frozenset(tickets.Protocol)
HLS_ONLY = frozenset({tickets.Protocol.HLS})


def protocols(camera: Camera) -> frozenset[tickets.Protocol]:
    """What a camera's source can be served as: the platform's HLS is HLS only (no RTSPS)."""
    if not camera.source:
        return frozenset()
    if camera.source == "ezviz":
        return HLS_ONLY
    return EVERY_PROTOCOL


def redact(source: str | None) -> str | None:
    """A source URL without its credentials, safe to log or show (the one redaction)."""
    return source if source is None else redact_text(source)


class Registry:
    """Reads and changes of cameras, with the audit rows and outbox events every change makes."""

    def __init__(
        self,
        outbox: Outbox,
        addresses: AddressPolicy | None = None,
        sealer: MultiFernet | None = None,
    ) -> None:
        self.outbox = outbox
        self.addresses = addresses or AddressPolicy()  # public addresses only, unless told
        self.sealer = sealer  # seals source credentials; without one none can be kept
        self.backends: dict[str, Backend] = {}

    def register(self, backend: Backend) -> None:
        self.backends[backend.name] = backend

    def backend_for(self, camera: Camera) -> Backend:
        return self.backends[camera.backend]

    def cloud(self, name: str) -> CloudBackend | None:
        """The camera cloud called `name`, when one is registered."""
        backend = self.backends.get(name)
        return backend if isinstance(backend, CloudBackend) else None

    def owned_cameras(self, session: Session, account_id: str) -> list[Camera]:
        """Every camera of an owner, whichever backend it comes from, by name."""
        stmt = select(Camera).where(Camera.owner_id == account_id).order_by(Camera.name)
        return list(session.scalars(stmt))

    def owned_camera(self, session: Session, account_id: str, camera_id: str) -> Camera | None:
        """One camera of an owner; another owner's camera is indistinguishable from none."""
        camera = session.get(Camera, camera_id)
        return camera if camera is not None and camera.owner_id == account_id else None

    @staticmethod
    def read_owned_camera(
        session: Session | Driver, account_id: str, camera_id: str
    ) -> Camera | None:
        """`owned_camera` for a caller that only reads the camera (a directive): one prebuilt
        Core statement and a `camera_of` copy, outside any session, instead of an ORM load,
        which cost a directive more than its statements."""
        values = {"camera_id": camera_id, "account_id": account_id}
        row = connection_of(session).execute(OWNED_CAMERA, values).one_or_none()
        return None if row is None else camera_of(row)

    def add(
        self,
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
        check_fields(fields)
        camera = Camera(owner_id=owner.id, name=name, backend=backend, **fields)
        store_source(camera, validate_source(source, backend, self.addresses), self.sealer)
        session.add(camera)
        session.flush()
        audit.record(session, "camera.added", actor=actor, account_id=owner.id, camera_id=camera.id)
        self.outbox.publish(
            session, "camera.added", {"account_id": owner.id, "camera_id": camera.id}
        )
        return camera

    def record(
        self, session: Session, camera: Camera, changes: dict[str, Any], *, actor: str
    ) -> dict[str, Any]:
        """Write changes that are already true where the camera lives (a sync, a backend's
        answer, or a push that succeeded); audit and publish only what really changed."""
        changed = self._validated(camera, changes)
        if not changed:
            return {}
        before = {k: getattr(camera, k) for k in changed}
        for key, value in changed.items():
            if key == "source":
                store_source(camera, value, self.sealer)
            else:
                setattr(camera, key, value)
        session.flush()
        audit.record(
            session,
            "camera.changed",
            actor=actor,
            account_id=camera.owner_id,
            camera_id=camera.id,
            before=shown(before),
            after=shown(changed),
        )
        self.outbox.publish(
            session,
            "camera.changed",
            {"account_id": camera.owner_id, "camera_id": camera.id, "changed": sorted(changed)},
        )
        return changed

    def change(
        self,
        db: Database,
        camera_id: str,
        changes: dict[str, Any],
        *,
        actor: str,
        owner_id: str | None = None,
        code: str | None = None,
    ) -> Camera:
        """An owner's or operator's change: pushed to the camera's backend first (no transaction
        open while it may call a camera cloud), then recorded. `owner_id` limits it to one owner's
        cameras (NoSuchCamera otherwise)."""
        with db.reading() as session:
            camera = self._find(session, camera_id, owner_id)
            changed = self._validated(camera, changes)
        if not changed:
            return camera
        self.backend_for(camera).push(camera, changed, code)
        with db.session() as session:
            camera = self._find(session, camera_id, owner_id)
            self.record(session, camera, changed, actor=actor)
        return camera

    def remove(self, session: Session, camera: Camera, *, actor: str) -> None:
        audit.record(
            session, "camera.removed", actor=actor, account_id=camera.owner_id, camera_id=camera.id
        )
        self.outbox.publish(
            session, "camera.removed", {"account_id": camera.owner_id, "camera_id": camera.id}
        )
        session.delete(camera)

    @staticmethod
    def _find(session: Session, camera_id: str, owner_id: str | None) -> Camera:
        camera = session.get(Camera, camera_id)
        if camera is None or (owner_id is not None and camera.owner_id != owner_id):
            raise NoSuchCamera(f"no camera {camera_id}")
        return camera

    def source_url(self, camera: Camera) -> str | None:
        """The camera's source with its credentials, for the paths that start a relay, a
        snapshot or a probe only. Raises Unsealable when the key ring no longer opens it."""
        if camera.source_secret and self.sealer is None:
            raise Unsealable(f"camera {camera.id}'s source is sealed and no sealer is wired")
        return source_url(camera, self.sealer) if self.sealer else camera.source

    def _current(self, camera: Camera, key: str) -> Any:
        """A field's value to compare a change with: the source as it was given."""
        if key != "source":
            return getattr(camera, key)
        try:
            return self.source_url(camera)
        except Unsealable:
            return None  # unreadable: any source given replaces it

    def _validated(self, camera: Camera, changes: dict[str, Any]) -> dict[str, Any]:
        """The changes that differ from the camera, checked: unknown fields, sources, names."""
        check_fields(changes)
        changes = dict(changes)
        if "source" in changes:
            changes["source"] = validate_source(changes["source"], camera.backend, self.addresses)
        if "name" in changes and not str(changes["name"]).strip():
            raise CameraError("camera name must not be empty")
        return {k: v for k, v in changes.items() if self._current(camera, k) != v}


def check_fields(fields: dict[str, Any]) -> None:
    unknown = set(fields) - set(SETTINGS) - set(DESCRIPTIVE)
    if unknown:
        raise CameraError(f"unknown camera fields: {', '.join(sorted(unknown))}")


def shown(fields: dict[str, Any]) -> dict[str, Any]:
    """Fields as an audit row keeps them: a source without its credentials."""
    return {k: (redact(v) if k == "source" else v) for k, v in fields.items()}


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
        "picture": f"{camera.width}x{camera.height}" if camera.width else None,
        "backend": camera.backend,
        "source": shown_source(camera),
        **{key: getattr(camera, key) for key in SETTINGS},
        "readiness": ready,
    }
