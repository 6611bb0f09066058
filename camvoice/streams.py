"""Stream minting and access: turn a ready camera into a signed URL, and check every fetch.

Adapters call `mint` after the readiness rules pass; the media endpoints call `admit` on every
playlist, segment and snapshot fetch, which re-checks the ticket, the camera's readiness and the
link (grant) it was minted for. So unlinking, or turning Image Encryption on, stops new fetches.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from sqlalchemy import String
from sqlalchemy.orm import Mapped, Session, mapped_column

from camvoice import audit
from camvoice.cameras import backend_for, protocols
from camvoice.models import Base, Camera, utcnow
from camvoice.readiness import Assistant, Blocker, readiness
from camvoice.settings import Settings
from camvoice.tickets import Audience, Protocol, Ticket, TicketError, new_ticket

VIEW_GAP = timedelta(seconds=60)  # a session whose player stopped fetching this long is over
LAST_SEEN_RESOLUTION = timedelta(seconds=10)

# Set by the composition root: is the link (OAuth grant) a ticket was minted for still alive?
grant_is_live: Callable[[Session, str], bool] = lambda session, grant_id: True  # noqa: E731


class StreamView(Base):
    """A viewing session: begun by the first fetch of a ticket, kept alive by later fetches."""

    __tablename__ = "stream_views"

    ticket_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    camera_id: Mapped[str] = mapped_column(String(32), index=True)
    account_id: Mapped[str] = mapped_column(String(32))
    audience: Mapped[str] = mapped_column(String(16))
    protocol: Mapped[str] = mapped_column(String(8))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)


def blockers_for(
    camera: Camera, audience: Audience, protocol: Protocol | None = None
) -> list[Blocker]:
    """The readiness rules for an audience; the web console follows Alexa's (no audio rule).

    With a protocol, a source that cannot be served that way (the EZVIZ platform's HLS asked for
    as RTSPS) is NO_STREAM too.
    """
    blockers = readiness(
        camera, Assistant.GOOGLE if audience is Audience.GOOGLE else Assistant.ALEXA
    )
    if protocol is not None and protocol not in protocols(camera) and camera.source:
        blockers.append(Blocker.NO_STREAM)
    return blockers


def stream_blockers(
    session: Session, camera: Camera, audience: Audience, protocol: Protocol
) -> list[Blocker]:
    """The blockers just before minting: the last known state, then one check with the backend.

    A camera cloud is asked only once the last synced state passes, so a known-blocked camera
    costs no call. Raises LookupError when the backend says the camera is no longer the owner's.
    """
    blockers = blockers_for(camera, audience, protocol)
    if blockers:
        return blockers
    backend_for(camera).recheck(session, camera, protocol)
    return blockers_for(camera, audience, protocol)


def mint(
    settings: Settings,
    camera: Camera,
    protocol: Protocol,
    audience: Audience,
    grant_id: str | None = None,
) -> str:
    """A signed, short-lived URL for a camera that passed its readiness rules."""
    if blockers_for(camera, audience, protocol):
        raise ValueError("refusing to mint a stream URL for a blocked camera")
    ticket = new_ticket(
        camera.id, camera.owner_id, protocol, audience, settings.stream_ticket_ttl, grant_id
    )
    token = settings.signer().sign(ticket)
    base = settings.public_url
    if protocol is Protocol.HLS:
        template = settings.hls_url_template or "{base}/streams/{camera_id}/{ticket}/index.m3u8"
    elif protocol is Protocol.RTSPS:
        host = urlsplit(base).hostname
        template = (
            settings.rtsps_url_template
            or f"rtsps://{host}:{settings.rtsps_port}/cam/{{camera_id}}/{{ticket}}"
        )
    else:
        template = "{base}/snapshots/{camera_id}/{ticket}.jpg"
    return template.format(base=base, camera_id=camera.id, ticket=token)


def admit(
    session: Session,
    settings: Settings,
    token: str,
    camera_id: str,
    protocol: Protocol,
) -> tuple[Camera, Ticket]:
    """Check one fetch; raises TicketError with the reason when it must be refused."""
    ticket = settings.signer().verify(token, camera_id, protocol)
    now = utcnow()
    view = session.get(StreamView, ticket.id)
    if ticket.expired:
        max_view = timedelta(seconds=settings.stream_max_view)
        if view is None or now - view.last_seen > VIEW_GAP or now - view.started_at > max_view:
            raise TicketError("expired")
    camera = session.get(Camera, ticket.camera_id)
    if camera is None or camera.owner_id != ticket.account_id:
        raise TicketError("no_such_camera")
    blockers = blockers_for(camera, ticket.audience, ticket.protocol)
    if blockers:
        raise TicketError("blocked:" + ",".join(b.value for b in blockers))
    if ticket.grant_id and not grant_is_live(session, ticket.grant_id):
        raise TicketError("link_revoked")
    if view is None:
        session.add(
            StreamView(
                ticket_id=ticket.id,
                camera_id=camera.id,
                account_id=camera.owner_id,
                audience=ticket.audience.value,
                protocol=ticket.protocol.value,
            )
        )
        audit.record(
            session,
            "stream.started",
            actor=ticket.audience.value,
            account_id=camera.owner_id,
            camera_id=camera.id,
            assistant=ticket.audience.value,
            protocol=ticket.protocol.value,
        )
    elif now - view.last_seen > LAST_SEEN_RESOLUTION:
        view.last_seen = now
    return camera, ticket


def record_denial(session: Session, camera_id: str, reason: str, protocol: Protocol) -> None:
    """Audit a refused fetch. The ticket itself is never written down."""
    camera = session.get(Camera, camera_id)
    audit.record(
        session,
        "stream.denied",
        actor="media",
        account_id=camera.owner_id if camera else None,
        camera_id=camera_id if camera else None,
        reason=reason,
        protocol=protocol.value,
    )
