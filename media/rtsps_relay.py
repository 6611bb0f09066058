"""The RTSPS relay for Alexa: GStreamer's RTSP server over TLS, admitting only valid tickets.

Runs under the system python3 that Debian's GStreamer bindings (python3-gi) serve, so it imports
nothing from camvoice: `camvoice relay` starts it as a subprocess. Each client asks for
rtsps://host:port/cam/<camera_id>/<ticket>; before building a pipeline the relay asks camvoice
(POST /media/auth, the same check as every other fetch) whether the ticket admits that camera,
and learns the camera's source from the answer. Interleaved TCP only, as Alexa requires.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import urllib.error
import urllib.request
from typing import Any

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gio, GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

SECRET_HEADER = "X-Camvoice-Relay-Secret"  # noqa: S105 - a header name


def quote(text: str) -> str:
    """Safe inside a gst-launch description string."""
    return '"' + "".join(c for c in text if c.isalnum() or c in " -_.")[:60] + '"'


def demo_pipeline(name: str) -> str:
    """The synthetic camera: moving pattern, name, clock, tone; H.264 + AAC."""
    return (
        "( videotestsrc is-live=true pattern=ball ! video/x-raw,width=640,height=360,"
        f"framerate=15/1 ! textoverlay text={quote(name)} valignment=top halignment=left "
        'font-desc="Sans 20" ! clockoverlay valignment=bottom halignment=left '
        'time-format="%H:%M:%S" ! videoconvert ! x264enc tune=zerolatency speed-preset=veryfast '
        "key-int-max=15 bitrate=800 ! video/x-h264,profile=main ! h264parse config-interval=-1 ! "
        "rtph264pay name=pay0 pt=96 "
        "audiotestsrc is-live=true wave=sine freq=440 ! audioconvert ! audioresample ! "
        "audio/x-raw,rate=44100,channels=1 ! avenc_aac ! rtpmp4gpay name=pay1 pt=97 )"
    )


def camera_pipeline(source: str) -> str:
    """A real camera: pull its RTSP over TCP and re-packetise its H.264 without re-encoding."""
    location = source.replace('"', "%22")
    return (
        f'( rtspsrc location="{location}" protocols=tcp latency=200 ! rtph264depay ! '
        "h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 )"
    )


def admit(auth_url: str, secret: str, camera_id: str, ticket: str) -> dict[str, Any] | None:
    """Ask camvoice whether this ticket admits this camera; None means refuse."""
    body = json.dumps(
        {"action": "read", "path": f"cam/{camera_id}", "protocol": "rtsp", "password": ticket}
    ).encode()
    request = urllib.request.Request(  # noqa: S310 - the configured camvoice URL
        auth_url, data=body, headers={"Content-Type": "application/json", SECRET_HEADER: secret}
    )
    try:
        with urllib.request.urlopen(request, timeout=3) as response:  # noqa: S310
            return json.loads(response.read() or b"{}")  # type: ignore[no-any-return]
    except (urllib.error.URLError, TimeoutError, ValueError):
        return None


class TicketMounts(GstRtspServer.RTSPMountPoints):
    """Every /cam/<camera_id>/<ticket>[/control] URL maps to the one /cam factory.

    DESCRIBE must match a mount exactly, and cameras and tickets are not known in advance, so
    the camera and ticket are cut from the path here and read back from the URL by the factory.
    """

    def do_make_path(self, url: Any) -> str:
        parts = url.abspath.strip("/").split("/")
        if len(parts) >= 3 and parts[0] == "cam":
            return "/" + "/".join(["cam", *parts[3:]])
        return str(url.abspath)


class TicketFactory(GstRtspServer.RTSPMediaFactory):
    """Builds one pipeline per admitted client from the URL's camera and ticket."""

    def __init__(self, auth_url: str, secret: str) -> None:
        super().__init__()
        self.auth_url = auth_url
        self.secret = secret
        self.set_shared(False)
        self.set_protocols(GstRtsp.RTSPLowerTrans.TCP)

    def do_create_element(self, url: Any) -> Gst.Element | None:
        parts = url.abspath.strip("/").split("/")
        if len(parts) < 3 or parts[0] != "cam":
            return None
        camera_id, ticket = parts[1], parts[2]
        answer = admit(self.auth_url, self.secret, camera_id, ticket)
        if answer is None or not answer.get("source"):
            print(f"relay: refused a client for camera {camera_id}", file=sys.stderr, flush=True)
            return None
        source = answer["source"]
        description = (
            demo_pipeline(answer.get("name", "")) if source == "demo" else camera_pipeline(source)
        )
        return Gst.parse_launch(description)


def main() -> None:
    parser = argparse.ArgumentParser(description="camvoice RTSPS relay")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--auth-url", required=True)
    parser.add_argument("--bind", default="0.0.0.0")  # noqa: S104 - a public media server
    args = parser.parse_args()
    secret = os.environ["CAMVOICE_RELAY_SECRET"]

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.bind)
    server.set_service(str(args.port))

    auth = GstRtspServer.RTSPAuth()
    auth.set_tls_certificate(Gio.TlsCertificate.new_from_files(args.cert, args.key))
    token = GstRtspServer.RTSPToken()
    token.set_string("media.factory.role", "viewer")
    auth.set_default_token(token)
    server.set_auth(auth)

    factory = TicketFactory(args.auth_url, secret)
    factory.add_role_from_structure(
        Gst.Structure.new_from_string(
            "viewer, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
        )
    )
    mounts = TicketMounts()
    mounts.add_factory("/cam", factory)
    server.set_mount_points(mounts)
    if server.attach(None) == 0:
        sys.exit(f"relay: cannot listen on port {args.port}")
    print(f"relay: serving rtsps on port {args.port}", file=sys.stderr, flush=True)

    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    loop.run()


if __name__ == "__main__":
    main()
