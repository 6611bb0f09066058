"""The media endpoints: ticketed HLS playlists and segments, snapshots, and the MediaMTX hook."""

from __future__ import annotations

import hmac
import logging
import re
from typing import Any

from flask import Blueprint, Response, abort, current_app, jsonify, request, send_file
from werkzeug.http import http_date

from camvoice.addresses import AddressRefused
from camvoice.cameras import StreamUnavailable
from camvoice.models import Camera
from camvoice.sealing import Unsealable
from camvoice.services import Services
from camvoice.settings import Settings
from camvoice.streams import record_denial
from camvoice.tickets import Protocol, TicketError
from media import hls_proxy
from media.relay import PLAYLIST, SEGMENT, RelayBusy, RelayFailed, RelayManager, RelayStarting
from media.rtsp_check import SourceRefused, checked_source
from media.snapshots import SnapshotFailed, Snapshots

log = logging.getLogger(__name__)

bp = Blueprint("media", __name__)
RELAY_SECRET_HEADER = "X-Camvoice-Relay-Secret"  # noqa: S105 - a header name
CAMERA_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def services() -> Services:
    return Services.of(current_app)


def settings() -> Settings:
    return services().settings


def relays() -> RelayManager:
    return current_app.extensions["camvoice.relays"]  # type: ignore[no-any-return]


def snapshot_grabs() -> Snapshots:
    return current_app.extensions["camvoice.snapshots"]  # type: ignore[no-any-return]


def retry_later(error: str, message: str, seconds: int) -> Response:
    """503 with Retry-After: players and assistants try again rather than give up."""
    response = jsonify(error=error, message=message)
    response.status_code = 503
    response.headers["Retry-After"] = str(seconds)
    return response


@bp.after_request
def cast_headers(response: Response) -> Response:
    """Cast receivers and hls.js fetch cross-origin; the ticket, not the origin, is the check."""
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def denied(camera_id: str, reason: str, protocol: Protocol, audit: bool) -> Response:
    services().metrics.stream_denied("media", protocol.value, reason)
    if audit:
        with services().db.session() as session:
            record_denial(session, camera_id, reason, protocol)
    status = 403
    response = jsonify(error="forbidden", message=f"stream ticket refused: {reason}")
    response.status_code = status
    return response


def check(camera_id: str, token: str, protocol: Protocol, audit: bool) -> Any:
    """(camera, None) when admitted, or (None, a 403 response)."""
    if not CAMERA_ID.match(camera_id):
        abort(404)
    try:
        with services().db.session() as session:
            camera, _ticket = services().streams.admit(session, token, camera_id, protocol)
            return camera, None
    except TicketError as exc:
        return None, denied(camera_id, exc.reason, protocol, audit)


@bp.get("/streams/<camera_id>/<token>/index.m3u8")
def playlist(camera_id: str, token: str) -> Response:
    camera, refusal = check(camera_id, token, Protocol.HLS, audit=True)
    if refusal is not None:
        return refusal  # type: ignore[no-any-return]
    if camera.backend != "local":
        proxied = cloud_playlist(camera)
        if proxied is not None:
            return proxied
    source = source_for_relay(camera)
    if source is None:
        return unavailable("The camera's stream did not start.")
    try:
        folder = relays().ensure(camera.id, source, camera.name, camera.owner_id)
    except RelayBusy:
        return retry_later("busy", "Too many live streams right now; retry soon.", 10)
    except RelayStarting:
        # At once, not after waiting for the camera: a hung camera must not hold web threads.
        # A 503, not a playlist without segments: players retry a 5xx playlist (hls.js, Shaka
        # in Cast receivers, ExoPlayer), while Shaka fails an empty one (HLS_EMPTY_MEDIA_PLAYLIST).
        return retry_later("starting", "The camera's stream is starting; retry in a second.", 1)
    except RelayFailed:
        response = jsonify(error="stream_unavailable", message="The camera's stream did not start.")
        response.status_code = 502
        return response
    body = (folder / PLAYLIST).read_text()
    return Response(
        body,
        mimetype="application/vnd.apple.mpegurl",
        headers={"Cache-Control": "no-cache, no-store"},
    )


def source_for_relay(camera: Camera) -> str | None:
    """The camera's source, credentials unsealed: only for starting its relay or snapshot."""
    try:
        return services().registry.source_url(camera)
    except Unsealable as exc:
        log.warning("%s; its owner must set the source again", exc)
        return None


def unavailable(message: str) -> Response:
    response = jsonify(error="stream_unavailable", message=message)
    response.status_code = 502
    return response


def cloud_playlist(camera: Camera) -> Response | None:
    """A camera cloud's playlist with every URI rewritten to a sealed, ticketed one.

    None when the camera's backend does not stream it itself (camvoice's relay does).
    """
    camera_id = camera.id
    try:
        url = services().registry.backend_for(camera).upstream_hls(camera)
    except StreamUnavailable as exc:
        return unavailable(f"The camera's stream did not start: {exc}.")
    if url is None:
        return None
    timeout = settings().ezviz_timeout
    try:
        text, base = hls_proxy.media_playlist(url, timeout, settings().address_policy())
        body = hls_proxy.rewrite(settings(), camera_id, text, base)
    except hls_proxy.UpstreamError as exc:
        log.warning("cloud playlist of %s failed: %s", camera_id, exc)
        return unavailable("The camera cloud's stream did not answer.")
    return Response(
        body,
        mimetype="application/vnd.apple.mpegurl",
        headers={"Cache-Control": "no-cache, no-store"},
    )


@bp.get("/streams/<camera_id>/<token>/p/<sealed>")
def cloud_segment(camera_id: str, token: str, sealed: str) -> Response:
    """A segment (or init section) of a camera cloud's stream, fetched through camvoice."""
    _camera, refusal = check(camera_id, token, Protocol.HLS, audit=False)
    if refusal is not None:
        return refusal  # type: ignore[no-any-return]
    url = hls_proxy.unseal(settings(), camera_id, sealed)
    if url is None:
        abort(404, description="segment no longer available")
    try:
        chunks, kind = hls_proxy.segment(url, settings().ezviz_timeout, settings().address_policy())
    except hls_proxy.UpstreamError as exc:
        log.warning("cloud segment of %s failed: %s", camera_id, exc)
        return unavailable("The camera cloud's segment did not answer.")
    return Response(
        chunks,
        mimetype=kind,
        headers={"Cache-Control": "max-age=60", "X-Content-Type-Options": "nosniff"},
    )


@bp.get("/streams/<camera_id>/<token>/<segment>")
def segment(camera_id: str, token: str, segment: str) -> Response:
    if not SEGMENT.match(segment):
        abort(404)
    _camera, refusal = check(camera_id, token, Protocol.HLS, audit=False)
    if refusal is not None:
        return refusal  # type: ignore[no-any-return]
    try:  # no folder (the relay never ran here) or a segment deleted meanwhile
        relays().touch(camera_id)
        return send_file(relays().folder(camera_id) / segment, mimetype="video/mp2t", max_age=60)
    except FileNotFoundError:
        abort(404, description="segment no longer available")


@bp.get("/snapshots/<camera_id>/<token>.jpg")
def snapshot(camera_id: str, token: str) -> Response:
    camera, refusal = check(camera_id, token, Protocol.JPEG, audit=True)
    if refusal is not None:
        return refusal  # type: ignore[no-any-return]
    try:
        taken = snapshot_grabs().get(camera.id, source_for_relay(camera), camera.name)
    except SnapshotFailed:  # refused, or no frame: said at once, not retried by every fetch
        response = jsonify(error="snapshot_unavailable", message="No image from the camera.")
        response.status_code = 502
        return response
    if taken is None:
        return retry_later("snapshot_unavailable", "No image from the camera yet; retry soon.", 2)
    when, image = taken
    return Response(
        image,
        mimetype="image/jpeg",
        headers={"Cache-Control": "no-store", "Last-Modified": http_date(when)},
    )


@bp.post("/media/auth")
def mediamtx_auth() -> Response:
    """MediaMTX's HTTP authentication hook: 200 admits a reader, 401 refuses.

    Paths are `cam/<camera_id>`; the ticket comes as the password, or `token=` in the query.
    Publishing is never allowed through this hook.
    """
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return Response(status=400)
    path = str(body.get("path") or "")
    action = body.get("action")
    protocol = Protocol.HLS if body.get("protocol") == "hls" else Protocol.RTSPS
    token = str(body.get("password") or "")
    query = str(body.get("query") or "")
    if not token and "token=" in query:
        token = query.split("token=", 1)[1].split("&", 1)[0]
    match = re.fullmatch(r"cam/([A-Za-z0-9_-]{1,32})", path)
    if action not in ("read", "playback") or match is None or not token:
        return Response(status=401)
    camera, refusal = check(match.group(1), token, protocol, audit=True)
    if refusal is not None:
        return Response(status=401)
    sent = request.headers.get(RELAY_SECRET_HEADER, "")
    if sent and hmac.compare_digest(sent.encode(), settings().relay_secret().encode()):
        # Our own relay needs the camera's source (it may hold credentials): only it gets it,
        # checked against the address policy now and with its redirects already followed.
        if body.get("want") != "source":
            return jsonify(name=camera.name)  # a re-check: the pipeline already runs
        policy = settings().address_policy()
        source = source_for_relay(camera)
        if source is None:
            return Response(status=403)
        try:
            source = checked_source(policy, source)
            # The address checked, for the relay's guard to connect to (no second lookup).
            address = None if source == "demo" else policy.check(source).addresses[0]
        except (SourceRefused, AddressRefused) as exc:
            log.warning("RTSPS relay refused camera %s's source: %s", camera.id, exc)
            return Response(status=403)
        return jsonify(source=source, address=address, name=camera.name)
    return Response(status=200)
