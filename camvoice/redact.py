"""One redaction for every log line: no password, token, ticket or stream URL secret reaches a log.

Log lines come from camvoice's own messages and from what other programs print (ffmpeg echoes
its input URL in its errors, GStreamer its pipeline). Those programs parse URLs loosely, so this
does too: any scheme in any case, a password holding spaces, `@` or percent-escapes. Where a
line is ambiguous it hides too much rather than too little.

`redact` is the function; `RedactingFactory` applies it to every log record the process makes
(message, arguments, traceback), installed by the composition root.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

MASK = "***"

SCHEME = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://")
# What may follow the `@` that ends a URL's userinfo: the start of a host name or an IPv6 literal.
HOST_START = re.compile(r"[A-Za-z0-9\[]")
# Names of parameters whose values are secrets.
HIDDEN_PARAMS = (
    r"[A-Za-z_\-]*(?:token|secret|signature|password|passwd|ticket|credential)"
    r"|sig|pwd|pass|code|key|apikey|api_key|auth"
)
# name=value in a query string or form body; "name": "value" in JSON.
QUERY_SECRET = re.compile(rf"(?i)(?<![A-Za-z0-9_\-])({HIDDEN_PARAMS})=[^&\s#;,\"'<>]+")
JSON_SECRET = re.compile(rf"(?i)(\"(?:{HIDDEN_PARAMS})\"\s*:\s*)\"[^\"]*\"")
AUTH_SCHEME = re.compile(r"(?i)\b(bearer|basic|digest)\s+[A-Za-z0-9._~+/=\-]+")
# /streams/<camera>/<ticket>/..., /snapshots/<camera>/<ticket>.jpg, rtsps /cam/<camera>/<ticket>
TICKET_PATH = re.compile(r"(?i)(/(?:streams|snapshots|cam)/[^/\s]+/)[^/\s?#]+")
# A stream ticket or a JWT on its own: base64url JSON ("eyJ...") with a signature after a dot.
SIGNED_TOKEN = re.compile(r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-.]{8,}")
# An SDP's ICE password (aiortc logs whole offers and answers at DEBUG): it authenticates the
# connectivity checks of a live session.
ICE_PWD = re.compile(r"(?i)(a=ice-pwd:)[^\s]+")


def redact(text: str) -> str:
    """The text with URL credentials, secret parameters, auth headers and tickets masked."""
    text = _userinfo(text)
    text = QUERY_SECRET.sub(lambda m: f"{m.group(1)}={MASK}", text)
    text = JSON_SECRET.sub(lambda m: f'{m.group(1)}"{MASK}"', text)
    text = AUTH_SCHEME.sub(lambda m: f"{m.group(1)} {MASK}", text)
    text = TICKET_PATH.sub(lambda m: f"{m.group(1)}{MASK}", text)
    text = ICE_PWD.sub(lambda m: f"{m.group(1)}{MASK}", text)
    return SIGNED_TOKEN.sub(MASK, text)


def _userinfo(text: str) -> str:
    """Mask everything between `scheme://` and the last `@` that a host follows, up to the next
    URL on the line: a password may hold spaces and `@`, so the userinfo ends at the last one."""
    starts = [m.end() for m in SCHEME.finditer(text)]
    if not starts:
        return text
    out = [text[: starts[0]]]
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(text)
        region = text[start:end]
        cut = userinfo_end(region)
        out.append(region if cut < 0 else MASK + region[cut:])
    return "".join(out)


def userinfo_end(region: str) -> int:
    """Index of the `@` that ends the userinfo in the text after `scheme://`, or -1."""
    for at in range(len(region) - 1, -1, -1):
        if region[at] == "@" and HOST_START.match(region, at + 1):
            return at
    return -1


class RedactingFactory:
    """A log record factory that redacts every record as it is made, before any handler or
    filter (pytest's caplog included) sees it: the catch-all behind the redaction each log
    call makes itself. The composition root installs it (`install`)."""

    def __init__(self, inner: Callable[..., logging.LogRecord]) -> None:
        self.inner = inner

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        return redact_record(self.inner(*args, **kwargs))

    @classmethod
    def install(cls) -> None:
        """Make every record of this process redacted (once, however often it is called)."""
        current = logging.getLogRecordFactory()
        if not isinstance(current, cls):
            logging.setLogRecordFactory(cls(current))


_FORMATTER = logging.Formatter()


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """The record with its message and traceback text redacted in place."""
    try:
        message = record.getMessage()
    except Exception:  # a bad format string is logging's to report
        return record
    record.msg, record.args = redact(message), None
    if record.exc_info and not record.exc_text:
        record.exc_text = _FORMATTER.formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    return record
