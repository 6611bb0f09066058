"""Opening streams and admitting their fetches: the one place a camera becomes a stream URL.

`Streams.open` is what every adapter calls when an assistant or a page asks to see a camera: the
readiness rules on the last known state, one check with the camera's backend, then a signed URL,
or a typed refusal (StreamRefused with the blockers, CameraGone). The media endpoints call
`Streams.admit` on every playlist, segment and snapshot fetch, which re-checks the ticket, the
camera's readiness and the link (grant) or console sign-in session it was minted for. So
unlinking, signing out, or turning Image Encryption on, stops new fetches. A WebRTC stream is
the signaling URL and a ticket to offer with; the engine admits it once and `recheck`s it every
few seconds while the session plays.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Connection, String, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from camvoice import audit
from camvoice.cameras import CameraGone, Registry, protocols
from camvoice.db import Database, Driver
from camvoice.metrics import Metrics
from camvoice.models import Base, Camera, utcnow
from camvoice.readiness import Assistant, Blocker, readiness
from camvoice.settings import Settings
from camvoice.tickets import Audience, Protocol, Ticket, TicketError, TicketSigner, new_ticket

VIEW_GAP = timedelta(seconds=60)  # a session whose player stopped fetching this long is over
LAST_SEEN_RESOLUTION = timedelta(seconds=10)

GrantCheck = Callable[[Session, str], bool]  # is the link a ticket was minted for still alive?


class SessionCheck(typing.Protocol):
    """Is the console sign-in session a web ticket names still on? `touch`: count it as use."""

    def __call__(self, session: Session, ref: str, touch: bool = False) -> bool: ...


def no_live_grants(session: Session, grant_id: str) -> bool:
    """The grant check until the OAuth server's is wired in: fail closed, refuse every link."""
    return False


def no_live_sessions(session: Session, ref: str, touch: bool = False) -> bool:
    """The sign-in session check until the store's is wired in: fail closed."""
    return False


def reason_of(blockers: list[Blocker]) -> str:
    """Blockers as an audit row or a refusal message names them."""
    return ",".join(b.value for b in blockers)


class StreamRefused(Exception):
    """The readiness rules refuse the camera; adapters map the first blocker to their protocol."""

    def __init__(self, blockers: list[Blocker]) -> None:
        super().__init__(reason_of(blockers))
        self.blockers = blockers


def record_refusal(
    session: Session | Connection | Driver,
    camera: Camera,
    audience: Audience,
    reason: str,
    **detail: Any,
) -> None:
    """Audit a stream asked for and refused before any URL was handed out (in the caller's
    transaction, or committed by itself through a Database.driver connection)."""
    audit.record(session, "stream.denied", actor=audience.value, account_id=camera.owner_id,
                 camera_id=camera.id, assistant=audience.value, reason=reason,
                 **detail)  # fmt: skip


@dataclass(frozen=True)
class OpenStream:
    """A stream handed out: the camera as checked, its URL, a snapshot URL when the source can
    give one (a camera cloud's HLS cannot), and when both expire. `token` is the stream's
    ticket: for WebRTC the URL is the signaling endpoint and the ticket its bearer token; other
    URLs carry it, and Google takes it again as cameraStreamAuthToken."""

    camera: Camera
    url: str
    image_url: str | None
    expires_at: datetime
    token: str


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
    session_ref: Mapped[str | None] = mapped_column(String(32), default=None)


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


class Streams:
    """Opens streams and admits their fetches, with the wiring it needs passed in."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        grant_is_live: GrantCheck = no_live_grants,
        session_is_live: SessionCheck = no_live_sessions,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.settings = settings
        self.registry = registry
        self.grant_is_live = grant_is_live
        self.session_is_live = session_is_live
        self.clouds: dict[str, bool] = {}  # registered backend's name -> is a camera cloud

    @cached_property
    def signer(self) -> TicketSigner:
        """The settings' ticket signer, its keys derived once rather than for every ticket."""
        return self.settings.signer()

    def open(
        self,
        db: Database,
        camera: Camera,
        audience: Audience,
        protocol: Protocol,
        grant_id: str | None = None,
        session_ref: str | None = None,
        *,
        within: Session | Connection | Driver | None = None,
        **detail: Any,
    ) -> OpenStream:
        """Readiness on the last known state, one check with the backend, then a signed URL.

        Call it with no transaction open: a camera cloud may be asked (a known-blocked camera
        costs no call, and a camera kept in the registry alone is not read again). Raises
        StreamRefused with the blockers, or CameraGone. Both the refusal and the URL handed out
        are audited; `detail` goes into that audit row. A console stream names its sign-in
        session (`session_ref`): signing out ends it.

        `within`: the caller's transaction, or a Database.driver connection (the row then
        commits by itself), for a camera whose backend asks nobody (`asks_backend` False): the
        audit row is written there, so the directive commits once. The caller commits it before
        answering, and must not let StreamRefused roll it back.
        """
        if within is not None and self.asks_backend(camera):
            raise ValueError("a camera cloud is asked with no transaction open")
        blockers = blockers_for(camera, audience, protocol)
        if (
            not blockers
            and within is None
            and self.registry.backend_for(camera).recheck(camera, protocol)
        ):
            camera = self._reread(db, camera)  # what the backend learnt
            blockers = blockers_for(camera, audience, protocol)
        with nullcontext(within) if within is not None else db.session() as session:
            if blockers:
                record_refusal(session, camera, audience, reason_of(blockers),
                               protocol=protocol.value, **detail)  # fmt: skip
            else:
                audit.record(session, "stream.requested", actor=audience.value,
                             account_id=camera.owner_id, camera_id=camera.id,
                             assistant=audience.value, protocol=protocol.value,
                             **detail)  # fmt: skip
        self.metrics.stream_opened(audience.value, protocol.value, [b.value for b in blockers])
        if blockers:
            raise StreamRefused(blockers)
        ttl = self.settings.stream_ticket_ttl
        token = self._signed(camera, protocol, audience, grant_id, session_ref)
        image = (
            self._signed(camera, Protocol.JPEG, audience, grant_id, session_ref)
            if Protocol.JPEG in protocols(camera)
            else None
        )
        return OpenStream(
            camera=camera,
            url=self.url(camera, protocol, token),
            token=token,
            image_url=None if image is None else self.url(camera, Protocol.JPEG, image),
            expires_at=datetime.fromtimestamp(int(datetime.now(UTC).timestamp() + ttl), UTC),
        )

    def asks_backend(self, camera: Camera) -> bool:
        """Whether opening this camera's stream asks a camera cloud first (so it must be opened
        with no transaction held); a camera whose truth is the registry asks nobody."""
        known = self.clouds.get(camera.backend)
        if known is None:
            known = self.registry.cloud(camera.backend) is not None
            if camera.backend in self.registry.backends:
                self.clouds[camera.backend] = known
        return known

    @staticmethod
    def _reread(db: Database, camera: Camera) -> Camera:
        with db.reading() as session:
            fresh = session.get(Camera, camera.id)
        if fresh is None or fresh.owner_id != camera.owner_id:
            raise CameraGone(camera.id)
        return fresh

    def mint(
        self,
        camera: Camera,
        protocol: Protocol,
        audience: Audience,
        grant_id: str | None = None,
        session_ref: str | None = None,
    ) -> str:
        """A signed, short-lived URL for a camera that passed its readiness rules; for WebRTC the
        ticket alone (an offer's bearer token: never put in a URL, where logs would keep it)."""
        token = self.ticket(camera, protocol, audience, grant_id, session_ref)
        return token if protocol is Protocol.WEBRTC else self.url(camera, protocol, token)

    def url(self, camera: Camera, protocol: Protocol, token: str) -> str:
        """Where a ticket is played: the signaling URL for WebRTC (the ticket is its bearer
        token), otherwise a URL that carries the ticket."""
        settings = self.settings
        base = settings.public_url
        if protocol is Protocol.WEBRTC:
            return self.signaling_url()
        if protocol is Protocol.HLS:
            template = settings.hls_url_template or "{base}/streams/{camera_id}/{ticket}/index.m3u8"
        elif protocol is Protocol.RTSPS:
            host = urlsplit(base).hostname
            template = (
                settings.rtsps_url_template
                or f"rtsps://{host}:{settings.rtsps_url_port()}/cam/{{camera_id}}/{{ticket}}"
            )
        else:
            template = "{base}/snapshots/{camera_id}/{ticket}.jpg"
        return template.format(base=base, camera_id=camera.id, ticket=token)

    def ticket(
        self,
        camera: Camera,
        protocol: Protocol,
        audience: Audience,
        grant_id: str | None = None,
        session_ref: str | None = None,
    ) -> str:
        """A signed, short-lived ticket for a camera that passed its readiness rules."""
        if blockers_for(camera, audience, protocol):
            raise ValueError("refusing to mint a stream ticket for a blocked camera")
        return self._signed(camera, protocol, audience, grant_id, session_ref)

    def _signed(
        self,
        camera: Camera,
        protocol: Protocol,
        audience: Audience,
        grant_id: str | None,
        session_ref: str | None,
    ) -> str:
        """`ticket` once the readiness rules were checked (by `open`, which just did)."""
        ticket = new_ticket(camera.id, camera.owner_id, protocol, audience,
                            self.settings.stream_ticket_ttl, grant_id, session_ref)  # fmt: skip
        return self.signer.sign(ticket)

    def signaling_url(self) -> str:
        """Where WebRTC offers are posted (with the ticket as a bearer token)."""
        return f"{self.settings.public_url}/webrtc/signal"

    def may_relay(self, session: Session, camera_id: str) -> bool:
        """Whether any audience may still be shown this camera over HLS.

        A relay is shared by every viewer of a camera, so it may run while the least strict
        audience's rules (Alexa's and the console's: no audio rule) pass; once the camera is
        encrypted, asleep, offline or gone, no fetch can be admitted and the relay should stop.
        It stops too when every recent viewer was a console session that has since ended (its
        owner signed out): nobody left may fetch, so there is no idle timeout to wait out.
        """
        camera = session.get(Camera, camera_id)
        if camera is None or blockers_for(camera, Audience.WEB, Protocol.HLS):
            return False
        recent = session.scalars(
            select(StreamView.session_ref).where(
                StreamView.camera_id == camera_id,
                StreamView.protocol == Protocol.HLS.value,
                StreamView.last_seen >= utcnow() - VIEW_GAP,
            )
        ).all()
        return not recent or any(
            ref is None or self.session_is_live(session, ref) for ref in recent
        )

    def admit(
        self, session: Session, token: str, camera_id: str, protocol: Protocol
    ) -> tuple[Camera, Ticket]:
        """Check one fetch; raises TicketError with the reason when it must be refused."""
        ticket = self.signer.verify(token, camera_id, protocol)
        view = session.get(StreamView, ticket.id)
        if ticket.expired:
            now = utcnow()
            max_view = timedelta(seconds=self.settings.stream_max_view)
            if view is None or now - view.last_seen > VIEW_GAP or now - view.started_at > max_view:
                raise TicketError("expired")
        camera = self.recheck(session, ticket)
        self.record_view(session, ticket, camera, view)
        return camera, ticket

    def recheck(self, session: Session, ticket: Ticket, touch: bool = True) -> Camera:
        """Would this (verified) ticket still be admitted? The camera when so, else TicketError.

        What `admit` checks once the signature is: the camera exists and is the ticket's owner's,
        it passes the audience's readiness rules, and the link (grant) or console sign-in session
        the ticket was minted for is still on. A long-lived session (a WebRTC peer connection)
        calls it every few seconds; `touch` counts that as use of the sign-in session.
        """
        camera = session.get(Camera, ticket.camera_id)
        if camera is None or camera.owner_id != ticket.account_id:
            raise TicketError("no_such_camera")
        blockers = blockers_for(camera, ticket.audience, ticket.protocol)
        if blockers:
            raise TicketError("blocked:" + reason_of(blockers))
        if ticket.grant_id and not self.grant_is_live(session, ticket.grant_id):
            raise TicketError("link_revoked")
        if ticket.session_ref and not self.session_is_live(session, ticket.session_ref, touch):
            raise TicketError("signed_out")
        return camera

    def record_view(
        self, session: Session, ticket: Ticket, camera: Camera, view: StreamView | None = None
    ) -> None:
        """The ticket's viewing session: started (audited once) or kept alive."""
        view = view or session.get(StreamView, ticket.id)
        if view is None:
            if self._start_view(session, ticket, camera):
                audit.record(
                    session,
                    "stream.started",
                    actor=ticket.audience.value,
                    account_id=camera.owner_id,
                    camera_id=camera.id,
                    assistant=ticket.audience.value,
                    protocol=ticket.protocol.value,
                )
        elif utcnow() - view.last_seen > LAST_SEEN_RESOLUTION:
            view.last_seen = utcnow()

    @staticmethod
    def _start_view(session: Session, ticket: Ticket, camera: Camera) -> bool:
        """Record the first fetch of a ticket; False if another fetch recorded it first.

        A player asks for its playlist and a segment (or two tabs for one URL) at once: both
        fetches find no view and both insert it. The loser's insert is undone in its savepoint
        and the fetch goes on, instead of failing the whole request on the primary key.
        """
        try:
            with session.begin_nested():
                session.add(
                    StreamView(
                        ticket_id=ticket.id,
                        camera_id=camera.id,
                        account_id=camera.owner_id,
                        audience=ticket.audience.value,
                        protocol=ticket.protocol.value,
                        session_ref=ticket.session_ref,
                    )
                )
        except IntegrityError:
            return False
        return True


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
