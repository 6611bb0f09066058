"""Starting the RTSPS relay (media/rtsps_relay.py) under the system's GStreamer Python."""

from __future__ import annotations

import logging
import os
import subprocess
import threading
from functools import cache
from pathlib import Path
from typing import IO

from camvoice.redact import redact
from camvoice.settings import Settings
from media.relay import die_with_parent

log = logging.getLogger(__name__)

SYSTEM_PYTHON = "/usr/bin/python3"
SCRIPT = Path(__file__).with_name("rtsps_relay.py")
PROBE = (
    "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0');"
    "from gi.repository import Gst, GstRtspServer; Gst.init(None);"
    "import sys; sys.exit(0 if all(Gst.ElementFactory.find(e) for e in "
    "('x264enc', 'avenc_aac', 'rtph264pay', 'rtspsrc', 'clockoverlay')) else 1)"
)


@cache
def gstreamer_available() -> bool:
    """True when Debian's GStreamer RTSP server and the plugins we use are installed."""
    if not Path(SYSTEM_PYTHON).exists():
        return False
    try:
        result = subprocess.run(
            [SYSTEM_PYTHON, "-c", PROBE], capture_output=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def relay_problem(settings: Settings) -> str | None:
    """Why the relay cannot serve, or None when it can."""
    if not settings.relay_enabled:
        return "disabled (set CAMVOICE_RELAY_ENABLED=true)"
    if not settings.rtsps_cert or not settings.rtsps_key:
        return "no TLS certificate (set CAMVOICE_RTSPS_CERT and CAMVOICE_RTSPS_KEY)"
    for path in (settings.rtsps_cert, settings.rtsps_key):
        if not path.exists():
            return f"{path} does not exist"
    if not gstreamer_available():
        return "GStreamer RTSP server not installed (run deploy/install-gstreamer.sh)"
    return None


def start_relay(settings: Settings, app_url: str) -> subprocess.Popen[bytes]:
    """Start the relay process; it asks app_url/media/auth about every client, and again about
    every playing session each CAMVOICE_STREAM_RECHECK_INTERVAL seconds."""
    command = [
        SYSTEM_PYTHON, str(SCRIPT),
        "--port", str(settings.rtsps_port),
        "--cert", str(settings.rtsps_cert),
        "--key", str(settings.rtsps_key),
        "--auth-url", app_url.rstrip("/") + "/media/auth",
        "--recheck", str(settings.stream_recheck_interval),
    ]  # fmt: skip
    env = {**os.environ, "CAMVOICE_RELAY_SECRET": settings.relay_secret()}
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, preexec_fn=die_with_parent)
    assert process.stderr is not None
    threading.Thread(
        target=log_lines, args=(process.stderr,), daemon=True, name="rtsps-relay-log"
    ).start()
    return process


def log_lines(stream: IO[bytes]) -> None:
    """The relay's output (its own lines, GStreamer's and any traceback, which may name a
    camera's source) reaches the log only through the one redaction."""
    for raw in stream:
        log.info("rtsps relay: %s", redact(raw.decode(errors="replace").rstrip()))


def self_signed(cert: Path, key: Path, host: str) -> None:
    """A self-signed certificate for `host` (demo and tests; Alexa needs a trusted one)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    try:
        alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        alt = x509.DNSName(host)
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName([alt, x509.DNSName("localhost")]), False)
        .sign(private, hashes.SHA256())
    )
    cert.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key.touch(mode=0o600)
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert.touch(mode=0o600)
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
