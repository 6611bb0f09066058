"""One redaction for every log path: URLs in any case, passwords with spaces, `@` and
percent-escapes, several URLs a line, query secrets, bearer tokens and stream tickets; and a
camera whose password is `Pa ss@W0rd%21` leaves no piece of it in any log or on stderr."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from camvoice.db import Database
from camvoice.models import Account
from camvoice.redact import redact
from camvoice.settings import Settings
from camvoice.tickets import Audience, Protocol
from service.app import configure_logging, create_app
from tests.conftest import LiveServer
from tests.media_support import bare_registry, mint
from tests.oauth_support import make_owner

PASSWORD = "Pa ss@W0rd%21"
FRAGMENTS = ("Pa ss", "ss@W0rd", "W0rd", "%21", "Pa%20ss")


@pytest.mark.parametrize(
    ("line", "secrets", "kept"),
    [
        # ffmpeg's error line, upper-case scheme: the old redaction matched rtsp:// only.
        ("Error opening input file RTSP://user:Pass@10.0.0.5:554/h264.", ["user", "Pass"],
         "@10.0.0.5:554/h264"),
        # A password with a space and an `@`: the old one stopped at the space.
        (f"rtsp://admin:{PASSWORD}@192.0.2.7/ch1: Connection refused", FRAGMENTS,
         "@192.0.2.7/ch1: Connection refused"),
        ("RtSpS://u:p%40ss%20w@cam.example:322/s", ["p%40ss", "%20w", "u:"], "@cam.example:322"),
        ("two: rtsp://a:one1@h1/x and HTTPS://b:two2@h2/y end", ["one1", "two2"], " end"),
        ("rtsp://u:p@[2001:db8::1]:554/s", ["u:p"], "[2001:db8::1]"),
        ("GET https://x.example/live.m3u8?accessToken=at.123&Signature=s1g&n=1", ["at.123", "s1g"],
         "n=1"),
        ("url=https://h/p?X-Amz-Signature=abc123&ticket=t1ck&sig=5ig", ["abc123", "t1ck", "5ig"],
         "https://h/p"),
        ("Authorization: Bearer eyJhbGciOi.payload.sig", ["eyJhbGciOi", "payload"],
         "Authorization: Bearer ***"),
        ("GET /streams/cam_1/abcDEF.mac123/index.m3u8 200", ["abcDEF", "mac123"], "/streams/cam_1/"),
        ("GET /snapshots/cam_1/abcDEF.mac123.jpg", ["abcDEF"], "/snapshots/cam_1/"),
        ("rtsps://relay:8554/cam/cam_1/tick.et/trackID=0", ["tick.et"], "/cam/cam_1/"),
        ('{"access_token": "tok1", "appSecret": "s3c"} appSecret=s3c2&appKey=k',
         ["tok1", "s3c"], "appKey=k"),
        ("setLocalDescription(answer)\r\na=ice-ufrag:Uf1\r\na=ice-pwd:Pw0rdOfIce22\r\n",
         ["Pw0rdOfIce22"], "a=ice-ufrag:Uf1"),
    ],
)  # fmt: skip
def test_redact_hides_every_form_of_secret(line: str, secrets: list[str], kept: str) -> None:
    shown = redact(line)
    for secret in secrets:
        assert secret not in shown, shown
    assert kept in shown, shown


def test_every_log_record_is_redacted_whoever_logs_it(caplog: pytest.LogCaptureFixture) -> None:
    """The catch-all: a library's record, its arguments and its traceback."""
    configure_logging("INFO")
    other = logging.getLogger("some.library")
    with caplog.at_level("INFO"):
        other.info("fetching %s", f"RTSP://admin:{PASSWORD}@10.0.0.5/s")
        try:
            raise ConnectionError(
                f"cannot reach https://h/x?token=T0kenValue for rtsp://u:{PASSWORD}@h"
            )
        except ConnectionError:
            other.exception("call failed with Bearer abc.def.ghi")
    text = caplog.text
    for secret in (*FRAGMENTS, "T0kenValue", "abc.def.ghi"):
        assert secret not in text
    assert "ConnectionError" in text and "rtsp://***@h" in text


def test_rtsps_relay_output_is_logged_redacted(caplog: pytest.LogCaptureFixture) -> None:
    """The RTSPS relay (system python, a subprocess) prints to a pipe the parent logs: a
    traceback or a GStreamer line naming the source goes through the redaction."""
    from media.rtsps import log_lines

    line = f"rtspsrc: Could not open resource RTSPS://user:{PASSWORD}@cam.local/live"
    child = subprocess.Popen(
        [sys.executable, "-c", f"import sys; print({line!r}, file=sys.stderr)"],
        stderr=subprocess.PIPE,
    )
    assert child.stderr is not None
    with caplog.at_level("INFO", logger="media.rtsps"):
        log_lines(child.stderr)
    child.wait(10)
    assert "rtsps relay: rtspsrc: Could not open resource rtsps://***@cam.local/live".lower() in (
        caplog.text.lower()
    )
    assert not any(fragment in caplog.text for fragment in FRAGMENTS)


def refusing_port() -> int:
    """A port nothing listens on: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("scheme", ["RTSP", "rtsp"])
def test_camera_password_never_reaches_a_log(
    scheme: str,
    settings: Settings,
    db: Database,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """End to end: the relay and a snapshot of a camera whose source refuses; ffmpeg's errors,
    which echo the source, are logged; no piece of the password is, on any stream."""
    configured = settings.model_copy(update={"media_dir": tmp_path / "media"})
    app = create_app(configured, db)
    make_owner(db, "owner@example.com")
    source = f"{scheme}://admin:{PASSWORD}@127.0.0.1:{refusing_port()}/stream"
    with db.session() as session:
        owner = session.scalars(select(Account)).one()
        camera = bare_registry(configured).add(session, owner, "Porch", actor="t", source=source)
    try:
        with LiveServer(app) as live, caplog.at_level("DEBUG"):
            hls = mint(configured, camera, Protocol.HLS, Audience.GOOGLE)
            jpeg = mint(configured, camera, Protocol.JPEG, Audience.GOOGLE)
            assert (
                requests.get(hls.replace(configured.public_url, live.url), timeout=30).status_code
                == 502
            )
            assert (
                requests.get(jpeg.replace(configured.public_url, live.url), timeout=30).status_code
                == 502
            )
    finally:
        app.extensions["camvoice.relays"].shutdown()
    captured = capfd.readouterr()
    logged = caplog.text + captured.err + captured.out
    assert "ffmpeg[" in logged and "snapshot of camera" in logged  # ffmpeg's complaints...
    assert "127.0.0.1" in logged  # ...with the address, not the credentials
    for fragment in ("admin", *FRAGMENTS):
        assert fragment not in logged, fragment
    assert hls.split("/")[-2] not in logged
    assert jpeg.split("/")[-1].removesuffix(".jpg") not in logged
