"""Google smart-home intents: SYNC, QUERY, EXECUTE (GetCameraStream), DISCONNECT.

Each handler turns one intent's payload into its response payload, reading cameras through the
core and mapping the core's readiness blockers to Google's errorCodes through the core's table.
Field names follow Google's cloud-to-cloud reference exactly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from camvoice import audit
from camvoice.cameras import CameraGone, protocols
from camvoice.db import Driver
from camvoice.discovery import Encoded, encoded, registry_version
from camvoice.models import Camera
from camvoice.readiness import BLOCKERS, Blocker
from camvoice.services import Services
from camvoice.streams import OpenStream, StreamRefused, blockers_for, reason_of, record_refusal
from camvoice.tickets import Audience, Protocol
from oauth.tokens import Principal, revoke_grant

CAMERA_TYPE = "action.devices.types.CAMERA"
CAMERA_STREAM = "action.devices.traits.CameraStream"
GET_CAMERA_STREAM = "action.devices.commands.GetCameraStream"
EXECUTE = "action.devices.EXECUTE"
# What the media path really serves, in order of preference: WebRTC (sub-second, Nest displays)
# where the camera's source allows it, HLS for every camera (the only one a Cast receiver plays).
OUR_PROTOCOLS = {"webrtc": Protocol.WEBRTC, "hls": Protocol.HLS}


class BadRequest(ValueError):
    """The body is not the documented shape; answered with HTTP 400."""


@dataclass
class Context:
    services: Services
    principal: Principal
    # Cameras read with the bearer token (views.answer), by id: None for one the caller does
    # not own. Each is used once, by the first execution that names it; a later one (a command
    # with two executions) reads it again, after what the first may have changed.
    cameras: dict[str, Camera | None] = field(default_factory=dict)

    @property
    def homegraph(self) -> bool:
        """Whether camera changes are reported to HomeGraph (willReportState)."""
        return self.services.settings.google_homegraph_key is not None


def owned(ctx: Context, session: Session | Driver, camera_id: object) -> Camera | None:
    """The caller's camera, or None for an unknown or another owner's device (never revealed)."""
    if not isinstance(camera_id, str):
        raise BadRequest("device id must be a string")
    return ctx.services.registry.read_owned_camera(session, ctx.principal.account_id, camera_id)


def named_camera(intent: str, payload: Any) -> str | None:
    """The one device an EXECUTE names (Google's GetCameraStream names one), so the bearer
    check can read it in its own statement; None for any other intent or shape, which
    `execute` then reads, or refuses as before."""
    commands = payload.get("commands") if isinstance(payload, dict) else None
    if intent != EXECUTE or not isinstance(commands, list) or len(commands) != 1:
        return None
    try:
        ids = device_ids(commands[0])
    except BadRequest:  # refused by `execute`, after the token is judged
        return None
    return ids[0] if len(ids) == 1 and isinstance(ids[0], str) else None


def device_ids(payload: Any, key: str = "devices") -> list[Any]:
    devices = payload.get(key) if isinstance(payload, dict) else None
    if not isinstance(devices, list) or not all(isinstance(d, dict) and "id" in d for d in devices):
        raise BadRequest(f"payload.{key} must be a list of objects with an id")
    return [d["id"] for d in devices]


def sync(ctx: Context, payload: Any) -> dict[str, Any]:
    """Every camera of the owner, blocked ones included. The version is read through the
    driver; after a change the cameras are read, after it, in a reading transaction (no write
    lock on SQLite); the audit row is then written by itself, before the answer is sent."""
    services, owner = ctx.services, ctx.principal.account_id
    with services.db.driver() as reading:
        version = registry_version(reading, owner)  # first: before the cameras would be read

    def build() -> Encoded:
        with services.db.reading() as session:  # after the version: never older than it
            cameras = services.registry.owned_cameras(session, owner)
            return encoded([sync_device(ctx, camera) for camera in cameras])

    # Everything a device is built from: the cameras (their version) and these settings.
    key = ("google", owner, ctx.homegraph, services.settings.manufacturer)
    devices = services.discovery.answer(key, version, build)
    with services.db.driver() as committing:  # the INSERT commits by itself
        audit.record(committing, "google.sync", actor="google", account_id=owner,
                     assistant="google", devices=devices.count)  # fmt: skip
    return {"agentUserId": owner, "devices": devices}


def sync_device(ctx: Context, camera: Camera) -> dict[str, Any]:
    manufacturer = ctx.services.settings.manufacturer
    return {
        "id": camera.id,
        "type": CAMERA_TYPE,
        "traits": [CAMERA_STREAM],
        "name": {
            "name": camera.name[:60],
            "defaultNames": [f"{manufacturer} {camera.model or 'camera'}"],
            "nicknames": list(camera.nicknames or []),
        },
        **({"roomHint": camera.room} if camera.room else {}),
        "willReportState": ctx.homegraph,
        "deviceInfo": device_info(manufacturer, camera),
        "attributes": {
            "cameraStreamSupportedProtocols": advertised(camera),
            "cameraStreamNeedAuthToken": needs_auth_token(camera),
        },
    }


def advertised(camera: Camera) -> list[str]:
    """SYNC's protocols for a camera: WebRTC when its source can be served so (a camera
    cloud's HLS cannot), then HLS, which every camera keeps for Chromecast."""
    return [
        name
        for name, protocol in OUR_PROTOCOLS.items()
        if protocol is Protocol.HLS or protocol in protocols(camera)
    ]


def needs_auth_token(camera: Camera) -> bool:
    """WebRTC's signaling URL is shared, so its ticket travels as cameraStreamAuthToken; an
    HLS-only camera's signed URL is its own credential and needs none."""
    return "webrtc" in advertised(camera)


def device_info(manufacturer: str, camera: Camera) -> dict[str, str]:
    """What is known about the camera; an unknown model or firmware is left out, not made up."""
    known = {"model": camera.model, "swVersion": camera.firmware}
    return {"manufacturer": manufacturer, **{key: value for key, value in known.items() if value}}


def query(ctx: Context, payload: Any) -> dict[str, Any]:
    devices: dict[str, Any] = {}
    with ctx.services.db.reading() as session:
        for camera_id in device_ids(payload):
            camera = owned(ctx, session, camera_id)
            if camera is None:
                devices[camera_id] = {"status": "ERROR", "errorCode": "deviceNotFound"}
            elif camera.online:
                devices[camera_id] = {"online": True, "status": "SUCCESS"}
            else:
                devices[camera_id] = {
                    "online": False,
                    "status": "OFFLINE",
                    "errorCode": "deviceOffline",
                }
    return {"devices": devices}


def execute(ctx: Context, payload: Any) -> dict[str, Any]:
    commands = payload.get("commands") if isinstance(payload, dict) else None
    if not isinstance(commands, list) or not commands:
        raise BadRequest("payload.commands must be a non-empty list")
    work: list[tuple[str, dict[str, Any]]] = []  # checked in full before anything runs
    for command in commands:
        if not isinstance(command, dict):
            raise BadRequest("each command must be an object")
        ids = device_ids(command)
        executions = command.get("execution")
        if not isinstance(executions, list) or not executions:
            raise BadRequest("command.execution must be a non-empty list")
        for execution in executions:
            if not isinstance(execution, dict) or not isinstance(execution.get("command"), str):
                raise BadRequest("execution.command must be a string")
            params = execution.get("params") or {}
            if execution["command"] == GET_CAMERA_STREAM and not (
                isinstance(params, dict)
                and isinstance(params.get("SupportedStreamProtocols"), list)
            ):
                raise BadRequest("params.SupportedStreamProtocols must be a list")
            for camera_id in ids:
                if not isinstance(camera_id, str):
                    raise BadRequest("device id must be a string")
                work.append((camera_id, execution))
    return {"commands": [execute_one(ctx, camera_id, execution) for camera_id, execution in work]}


def execute_one(ctx: Context, camera_id: str, execution: dict[str, Any]) -> dict[str, Any]:
    """One device's command. The camera is read in one statement (no write lock), unless it
    was read with the token; the audit row, of the stream handed out or of the refusal, then
    commits by itself. Both go through the driver (Database.driver)."""
    streams = ctx.services.streams
    opened: OpenStream | None = None
    if camera_id in ctx.cameras:  # read with the bearer token: used once, as read
        camera = ctx.cameras.pop(camera_id)
    else:
        with ctx.services.db.driver() as reading:
            camera = owned(ctx, reading, camera_id)
    if camera is None:
        return error(camera_id, "deviceNotFound")
    if execution["command"] != GET_CAMERA_STREAM:
        return error(camera_id, "functionNotSupported")
    to_chromecast = execution["params"].get("StreamToChromecast") is True
    chosen = chosen_protocol(camera, execution["params"], to_chromecast)
    if chosen is None:
        # Nothing to play it with: no camera-cloud call. A blocked camera still says why.
        known = blockers_for(camera, Audience.GOOGLE, Protocol.HLS)
        with ctx.services.db.driver() as committing:
            record_refusal(committing, camera, Audience.GOOGLE,
                           reason_of(known) or "no_common_protocol")  # fmt: skip
        if known:
            ctx.services.metrics.stream_denied("google", "hls", known[0].value)
            return blocked(camera_id, known[0])
        return error(camera_id, "functionNotSupported")
    if not streams.asks_backend(camera):
        try:
            with ctx.services.db.driver() as committing:  # the row commits by itself
                opened = streams.open(
                    ctx.services.db, camera, Audience.GOOGLE, OUR_PROTOCOLS[chosen],
                    ctx.principal.grant_id, within=committing, to_chromecast=to_chromecast,
                )  # fmt: skip
        except StreamRefused as refused:  # its audit row is committed already
            return blocked(camera_id, refused.blockers[0])
    if opened is None:  # a camera cloud is asked, with no transaction open
        try:
            opened = streams.open(
                ctx.services.db, camera, Audience.GOOGLE, OUR_PROTOCOLS[chosen],
                ctx.principal.grant_id, to_chromecast=to_chromecast,
            )  # fmt: skip
        except CameraGone:
            return error(camera_id, "deviceNotFound")
        except StreamRefused as refused:
            return blocked(camera_id, refused.blockers[0])
    return {
        "ids": [camera_id],
        "status": "SUCCESS",
        "states": stream_states(ctx, camera, opened, chosen, to_chromecast),
    }


def chosen_protocol(camera: Camera, params: dict[str, Any], to_chromecast: bool) -> str | None:
    """Our first protocol the device supports; a Cast receiver plays HLS, not WebRTC."""
    return next(
        (
            name
            for name in advertised(camera)
            if name in params["SupportedStreamProtocols"]
            and not (to_chromecast and name == "webrtc")
        ),
        None,
    )


def stream_states(
    ctx: Context, camera: Camera, opened: OpenStream, chosen: str, to_chromecast: bool
) -> dict[str, Any]:
    """The EXECUTE states of a stream handed out for `camera` (as SYNC advertised it)."""
    if chosen == "webrtc":
        return webrtc_states(ctx, opened)
    states: dict[str, Any] = {
        "online": True,
        "cameraStreamAccessUrl": opened.url,
        "cameraStreamProtocol": chosen,
    }
    if needs_auth_token(camera):
        # Promised in SYNC: without one Google would hand the owner's OAuth access token to
        # the receiver. The HLS ticket (already in the URL) is camera-bound and short-lived.
        states["cameraStreamAuthToken"] = opened.token
    receiver = ctx.services.settings.google_receiver_app_id
    if receiver and to_chromecast:  # a Cast receiver plays it
        states["cameraStreamReceiverAppId"] = receiver
    return states


def webrtc_states(ctx: Context, opened: OpenStream) -> dict[str, Any]:
    """A Nest display's answer: where to post its offer, the ticket to post it with, and the
    STUN/TURN servers when configured (Google takes them as a string holding a JSON array).
    No cameraStreamOffer: the display makes the offer and camvoice answers it."""
    states: dict[str, Any] = {
        "online": True,
        "cameraStreamProtocol": "webrtc",
        "cameraStreamSignalingUrl": opened.url,
        "cameraStreamAuthToken": opened.token,
    }
    servers = ctx.services.settings.ice_server_list()  # TURN credentials minted for it
    if servers:
        states["cameraStreamIceServers"] = json.dumps(servers)
    return states


def blocked(camera_id: str, blocker: Blocker) -> dict[str, Any]:
    code = BLOCKERS[blocker].google_error
    if blocker is Blocker.OFFLINE:
        return {"ids": [camera_id], "status": "OFFLINE", "errorCode": code}
    return error(camera_id, code)


def error(camera_id: Any, code: str) -> dict[str, Any]:
    return {"ids": [camera_id], "status": "ERROR", "errorCode": code}


def disconnect(ctx: Context, payload: Any) -> dict[str, Any]:
    """The owner unlinked in the Google Home app: revoke this link (and only this one)."""
    with ctx.services.db.session() as session:
        revoke_grant(session, ctx.principal.grant_id, "google_disconnect", actor="google")
    return {}


INTENTS: dict[str, Callable[[Context, Any], dict[str, Any]]] = {
    "action.devices.SYNC": sync,
    "action.devices.QUERY": query,
    EXECUTE: execute,
    "action.devices.DISCONNECT": disconnect,
}
