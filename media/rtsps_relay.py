"""The RTSPS relay for Alexa: GStreamer's RTSP server over TLS, admitting only valid tickets.

Runs under the system python3 that Debian's GStreamer bindings (python3-gi) serve, so it imports
nothing from camvoice: `camvoice relay` starts it as a subprocess. Each client asks for
rtsps://host:port/cam/<camera_id>/<ticket>; before building a pipeline the relay asks camvoice
(POST /media/auth, the same check as every other fetch) whether the ticket admits that camera,
and learns the camera's source from the answer. Interleaved TCP only, as Alexa requires.

Admission is not once: every --recheck seconds the relay asks camvoice again about the ticket of
each playing session and closes the connection of every client whose ticket is refused (Image
Encryption turned on, sleep, offline, link revoked, longest view reached), so a change ends its
RTSPS sessions within seconds, as it ends HLS fetches. The questions are asked from a thread of
their own; the connections are closed on the GLib main loop, where the server's sources run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gio, GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402
from rtsp_guard import guard_url  # noqa: E402 - media/rtsp_guard.py, this script's folder

SECRET_HEADER = "X-Camvoice-Relay-Secret"  # noqa: S105 - a header name
ASK_TIMEOUT = 3.0  # seconds camvoice has to answer one question about a ticket
# A session whose ticket camvoice could not be asked about (the app down, or too slow) this long
# is closed too: the relay fails closed, as the grant check does.
FAIL_CLOSED_AFTER = 10.0
MOUNT_LIFETIME = 2 * 3600.0  # seconds: longer than the longest ticket lifetime (1 h)
MAX_MOUNTS = 4096  # admitted tickets kept mounted at once; the oldest goes first
Verdict = Literal["admitted", "refused", "unknown"]


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


def ask(
    auth_url: str, secret: str, camera_id: str, ticket: str, want_source: bool = False
) -> tuple[Verdict, dict[str, Any] | None]:
    """Ask camvoice about a ticket: admitted (with the camera's source when wanted: camvoice
    checks it against its address policy and follows its redirects first), refused, or unknown.

    A refusal (4xx) and no answer are told apart so that a playing session is cut at once on a
    refusal, but survives a moment's restart of the app.
    """
    question = {"action": "read", "path": f"cam/{camera_id}", "protocol": "rtsp",
                "password": ticket, **({"want": "source"} if want_source else {})}  # fmt: skip
    body = json.dumps(question).encode()
    request = urllib.request.Request(  # noqa: S310 - the configured camvoice URL
        auth_url, data=body, headers={"Content-Type": "application/json", SECRET_HEADER: secret}
    )
    try:
        with urllib.request.urlopen(request, timeout=ASK_TIMEOUT) as response:  # noqa: S310
            return "admitted", json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return ("refused" if 400 <= exc.code < 500 else "unknown"), None
    except (urllib.error.URLError, OSError, ValueError):
        return "unknown", None


def admit(auth_url: str, secret: str, camera_id: str, ticket: str) -> dict[str, Any] | None:
    """Ask camvoice whether this ticket admits this camera; None means refuse."""
    verdict, answer = ask(auth_url, secret, camera_id, ticket, want_source=True)
    return answer if verdict == "admitted" else None


@dataclass
class Admission:
    """The ticket a pipeline was built for, and when camvoice last admitted it."""

    camera_id: str
    ticket: str
    last_admitted: float = field(default_factory=time.monotonic)
    last_seen: float = field(default_factory=time.monotonic)


class Admissions:
    """Tickets by pipeline name: how a playing session, found through the server, is asked
    about again. Its media holds the pipeline this relay built and named for the ticket it was
    admitted with."""

    FORGET_AFTER = 60.0  # a pipeline in no session this long is gone (or never got a SETUP)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_name: dict[str, Admission] = {}
        self._names = itertools.count(1)

    def add(self, camera_id: str, ticket: str) -> str:
        """Remember an admitted ticket; the name to give its pipeline."""
        name = f"camvoice-{next(self._names)}"
        with self._lock:
            self._by_name[name] = Admission(camera_id, ticket)
        return name

    def get(self, name: str) -> Admission | None:
        with self._lock:
            admission = self._by_name.get(name)
            if admission is not None:
                admission.last_seen = time.monotonic()
            return admission

    def prune(self) -> None:
        """Forget pipelines no session has shown for a while, so tickets do not pile up."""
        now = time.monotonic()
        with self._lock:
            for name, admission in list(self._by_name.items()):
                if now - admission.last_seen > self.FORGET_AFTER:
                    del self._by_name[name]


Asker = Callable[[str, str], Verdict]  # (camera_id, ticket) -> verdict


class Rechecker:
    """Admits every playing session again every `interval` seconds; closes the refused ones.

    Runs in its own thread so that camvoice's answers never hold up the GLib main loop; the
    server's client, session and media lists are read through their own locks (the filter calls
    are thread-safe), and the clients are closed on the main loop (GLib.idle_add).
    """

    def __init__(self, server: Any, admissions: Admissions, asker: Asker, interval: float) -> None:
        self.server = server
        self.admissions = admissions
        self.asker = asker
        self.interval = interval
        self.stopped = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="recheck")

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True, name="rechecker").start()

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.check_once()
            except Exception as exc:
                print(f"relay: re-check failed: {type(exc).__name__}", file=sys.stderr, flush=True)

    def playing(self) -> Iterator[tuple[Any, str]]:
        """(client, pipeline name) for every media of every session of every client."""
        for client in self.server.client_filter(None):
            for session in client.session_filter(None):
                for session_media in session.filter(None):
                    media = session_media.get_media()
                    element = media.get_element() if media is not None else None
                    yield client, element.get_name() if element is not None else ""

    def check_once(self) -> int:
        """One round: ask about each playing ticket once; close the clients refused. Returns how
        many clients were closed."""
        sessions = list(self.playing())
        names = {name for _client, name in sessions}
        verdicts = dict(zip(names, self.pool.map(self._still_admitted, names), strict=True))
        self.admissions.prune()
        doomed = list({id(c): c for c, name in sessions if not verdicts[name]}.values())
        if doomed:
            GLib.idle_add(close_clients, doomed)
        return len(doomed)

    def _still_admitted(self, name: str) -> bool:
        """Whether the session playing this pipeline may go on; unknown pipelines may not."""
        admission = self.admissions.get(name)
        if admission is None:
            return False
        verdict = self.asker(admission.camera_id, admission.ticket)
        now = time.monotonic()
        if verdict == "admitted":
            admission.last_admitted = now
            return True
        if verdict == "unknown":
            return now - admission.last_admitted <= FAIL_CLOSED_AFTER
        return False


def close_clients(clients: list[Any]) -> bool:
    """On the main loop: close each refused client's connection. Its sessions' pipelines are
    torn down with it, so the camera is no longer pulled for it."""
    for client in clients:
        client.close()
    print(f"relay: closed {len(clients)} session(s) no longer admitted", file=sys.stderr,
          flush=True)  # fmt: skip
    return GLib.SOURCE_REMOVE  # type: ignore[no-any-return]


class TicketMounts(GstRtspServer.RTSPMountPoints):
    """Each /cam/<camera_id>/<ticket> URL gets its own mount of the one factory, added when a
    client first names it. With the whole URL as the mount path, GStreamer's SETUP finds the
    stream's control after it, on the first connection or a new one. Mounts are dropped after
    MOUNT_LIFETIME (a ticket must start playing well within it); playing sessions keep their
    media without one."""

    def __init__(self, factory: GstRtspServer.RTSPMediaFactory) -> None:
        super().__init__()
        self.factory = factory
        self.added: OrderedDict[str, float] = OrderedDict()  # oldest first
        self.lock = threading.Lock()

    def do_make_path(self, url: Any) -> str:
        path = str(url.abspath)
        parts = path.strip("/").split("/")
        if len(parts) >= 3 and parts[0] == "cam" and all(parts[:3]):
            self.ensure("/" + "/".join(parts[:3]))
        return path

    def ensure(self, mount: str) -> None:
        now = time.monotonic()
        with self.lock:
            while self.added and (
                len(self.added) >= MAX_MOUNTS
                or now - next(iter(self.added.values())) > MOUNT_LIFETIME
            ):
                self.remove_factory(self.added.popitem(last=False)[0])
            if mount not in self.added:
                self.add_factory(mount, self.factory)
                self.added[mount] = now

    def forget(self, mount: str) -> None:
        """A refused ticket keeps no mount: URLs made up by anyone cannot fill the table."""
        with self.lock:
            if self.added.pop(mount, None) is not None:
                self.remove_factory(mount)


class ContentBase:
    """DESCRIBE's Content-Base is the URL the player asked for (RFC 2326 C.1.1), scheme,
    camera and ticket included. GStreamer builds it from the mount path, which drops the camera
    and ticket (and says rtsp for rtsps), so a player resolving SETUP against it on a new
    connection lost its ticket. One per client: the URL is kept when the DESCRIBE arrives and
    written into the answer as it is sent."""

    def __init__(self, client: Any) -> None:
        self.requested: str | None = None
        client.connect("pre-describe-request", self.remember)
        client.connect("send-message", self.rewrite)

    def remember(self, _client: Any, ctx: Any) -> Any:
        parsed, _method, uri, _version = ctx.request.parse_request()
        self.requested = uri if parsed == GstRtsp.RTSPResult.OK else None
        return GstRtsp.RTSPStatusCode.OK

    def rewrite(self, _client: Any, _ctx: Any, message: Any) -> None:
        # The context arrives as None through PyGObject (GLib warns of it once per message sent:
        # main() silences exactly that warning); the message itself is intact.
        if self.requested is None or message is None:
            return
        found, _value = message.get_header(GstRtsp.RTSPHeaderField.CONTENT_BASE, 0)
        if found != GstRtsp.RTSPResult.OK:
            return
        message.remove_header(GstRtsp.RTSPHeaderField.CONTENT_BASE, -1)
        message.add_header(GstRtsp.RTSPHeaderField.CONTENT_BASE, self.requested.rstrip("/") + "/")
        self.requested = None


class TicketFactory(GstRtspServer.RTSPMediaFactory):
    """Builds one pipeline per admitted client from the URL's camera and ticket."""

    def __init__(self, auth_url: str, secret: str, admissions: Admissions) -> None:
        super().__init__()
        self.auth_url = auth_url
        self.secret = secret
        self.admissions = admissions
        self.refused: Callable[[str], None] = lambda mount: None  # TicketMounts.forget
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
            self.refused(f"/cam/{camera_id}/{ticket}")
            return None
        source = answer["source"]
        if source == "demo":
            description = demo_pipeline(answer.get("name", ""))
        else:  # rtspsrc follows redirects anywhere: it pulls through a guard to the checked address
            description = camera_pipeline(guard_url(source, answer["address"]))
        pipeline = Gst.parse_launch(description)
        pipeline.set_name(self.admissions.add(camera_id, ticket))
        return pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description="camvoice RTSPS relay")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--auth-url", required=True)
    parser.add_argument("--bind", default="0.0.0.0")  # noqa: S104 - a public media server
    parser.add_argument("--recheck", type=float, default=3.0, help="seconds between re-checks")
    args = parser.parse_args()
    secret = os.environ["CAMVOICE_RELAY_SECRET"]
    # send-message's context cannot be marshalled by PyGObject (see ContentBase.rewrite).
    warnings.filterwarnings("ignore", r"g_value_get_object: assertion 'G_VALUE_HOLDS_OBJECT")

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

    admissions = Admissions()
    factory = TicketFactory(args.auth_url, secret, admissions)
    factory.add_role_from_structure(
        Gst.Structure.new_from_string(
            "viewer, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
        )
    )
    mounts = TicketMounts(factory)
    factory.refused = mounts.forget
    server.set_mount_points(mounts)
    server.connect(
        "client-connected",
        lambda _server, client: setattr(client, "content_base", ContentBase(client)),
    )
    if server.attach(None) == 0:
        sys.exit(f"relay: cannot listen on port {args.port}")
    print(f"relay: serving rtsps on port {args.port}", file=sys.stderr, flush=True)
    Rechecker(
        server,
        admissions,
        lambda camera_id, ticket: ask(args.auth_url, secret, camera_id, ticket)[0],
        args.recheck,
    ).start()

    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    loop.run()


if __name__ == "__main__":
    main()
