"""The RTSP guard: a one-connection relay on loopback between a puller and a checked camera.

ffmpeg and GStreamer's rtspsrc follow an RTSP 3xx to wherever it points, whenever it comes,
and neither has a switch to stop it; camvoice's own pre-flight DESCRIBE cannot know whether the
camera will answer the puller the same way (a camera can tell the two apart). So the puller is
given this guard's loopback URL instead of the camera's: the guard connects only to the address
camvoice checked (over TLS for rtsps, verified against the camera's name), passes requests
through as they are, and reads every answer: a redirect ends the connection instead of reaching
the puller. Interleaved media frames ($, channel, length) pass through untouched. The listener
takes one connection (the puller's) and closes; the pumps end with either side.

Standard library only: the RTSPS relay, which runs under the system python and imports nothing
from camvoice, imports this module from its own folder.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import threading
from urllib.parse import urlsplit

ACCEPT_TIMEOUT = 20.0  # the puller connects at once; a start that never comes frees the port
CONNECT_TIMEOUT = 5.0
MAX_HEAD = 64 * 1024
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322}
STATUS = re.compile(rb"^RTSP/\d\.\d (\d{3})")
REQUEST = re.compile(rb"^[A-Z_]+ \S+ RTSP/\d\.\d")
CONTENT_LENGTH = re.compile(rb"(?im)^content-length:\s*(\d{1,9})\s*$")


def guard_url(url: str, address: str) -> str:
    """Start a guard to `address` for the camera at `url` (rtsp or rtsps, credentials kept);
    the rtsp:// URL on loopback the puller is to use instead."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    tls_name = parts.hostname if scheme == "rtsps" else None
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(ACCEPT_TIMEOUT)
    upstream = (address, parts.port or DEFAULT_PORTS[scheme])
    threading.Thread(
        target=serve, args=(listener, upstream, tls_name), daemon=True, name="rtsp-guard"
    ).start()
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"127.0.0.1:{listener.getsockname()[1]}"
    return parts._replace(
        scheme="rtsp", netloc=f"{userinfo}@{netloc}" if userinfo else netloc
    ).geturl()


def serve(listener: socket.socket, upstream: tuple[str, int], tls_name: str | None) -> None:
    """Take the puller's one connection, connect to the camera, relay until either ends."""
    try:
        with listener:
            player, _ = listener.accept()
    except OSError:
        return
    try:
        camera = socket.create_connection(upstream, timeout=CONNECT_TIMEOUT)
        if tls_name is not None:
            camera = ssl.create_default_context().wrap_socket(camera, server_hostname=tls_name)
        camera.settimeout(None)
    except OSError:
        player.close()
        return
    threading.Thread(target=pump, args=(player, camera), daemon=True).start()
    answers(camera, player)


def pump(source: socket.socket, sink: socket.socket) -> None:
    """The puller's requests to the camera, byte for byte."""
    try:
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    except OSError:
        pass
    finally:
        close_both(source, sink)


def answers(camera: socket.socket, player: socket.socket) -> None:
    """The camera's messages to the puller, one at a time; a redirect ends the connection."""
    buffer = b""
    try:
        while True:
            size = message_size(buffer)
            if size is None:
                chunk = camera.recv(65536)
                if not chunk:
                    return
                buffer += chunk
                continue
            if size < 0:
                return  # a redirect, or not RTSP: nothing more reaches the puller
            player.sendall(buffer[:size])
            buffer = buffer[size:]
    except OSError:
        pass
    finally:
        close_both(camera, player)


def message_size(buffer: bytes) -> int | None:
    """The length of the complete message at the start of `buffer`, None when more is needed,
    or -1 when it must not be passed on (a 3xx answer, an oversized or unreadable head)."""
    if not buffer:
        return None
    if buffer[:1] == b"$":  # interleaved: $, channel, 16-bit length, data
        if len(buffer) < 4:
            return None
        size = 4 + int.from_bytes(buffer[2:4], "big")
        return size if len(buffer) >= size else None
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return -1 if len(buffer) > MAX_HEAD else None
    head = buffer[:end]
    status = STATUS.match(head)
    if status is not None and 300 <= int(status.group(1)) < 400:
        return -1
    if status is None and not REQUEST.match(head):
        return -1  # neither an answer nor a request from the camera: not RTSP
    length = CONTENT_LENGTH.search(head)
    size = end + 4 + (int(length.group(1)) if length else 0)
    return size if len(buffer) >= size else None


def close_both(a: socket.socket, b: socket.socket) -> None:
    for sock in (a, b):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
