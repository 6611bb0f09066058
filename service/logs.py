"""Log lines for operators: text (the default) or one JSON object per line, with request ids.

CAMVOICE_LOG_FORMAT=json makes every line of the app, gunicorn, the worker and the media node
one JSON object (`JSONFormatter`, a standard logging.Formatter). `RequestIds` gives each request
an id (a sane X-Request-ID as sent, else a new one), echoes it in the response, stamps it on
every line logged while the request runs and, in JSON mode, ends the request with one access
line: method, route (never the path: stream paths carry tickets), status and duration, and for
a directive or an intent its assistant, name, outcome and camera (camvoice/metrics.py).
Messages are redacted when their records are made (camvoice/redact.py); the fields added here
are ids, names and numbers only.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from flask import Flask, request

from camvoice.metrics import request_fields
from camvoice.redact import redact

REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# Fields a record may carry (logging's `extra`) that a JSON line shows.
FIELDS = ("assistant", "directive", "camera_id", "outcome", "duration_ms", "method", "route",
          "status", "protocol")  # fmt: skip
ROUTE_KEY = "camvoice.route"

_request_id: ContextVar[str | None] = ContextVar("camvoice_request_id", default=None)
access_log = logging.getLogger("camvoice.access")


class JSONFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the request id when there is
    one, the known fields it carries, and the traceback (redacted) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = _request_id.get()
        if request_id is not None:
            entry["request_id"] = request_id
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(self.formatException(record.exc_info))
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False, default=str)


def gunicorn_logconfig(log_format: str) -> dict[str, Any] | None:
    """gunicorn's logconfig_dict: its error log (and the root logger it sets up) in JSON."""
    if log_format != "json":
        return None
    return {"formatters": {"generic": {"()": "service.logs.JSONFormatter"}}}


class RequestIds:
    """WSGI middleware: the request id, its echo, and (JSON mode) the access line."""

    def __init__(self, app: Callable[..., Iterable[bytes]], access: bool) -> None:
        self.app = app
        self.access = access

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        sent = environ.get("HTTP_X_REQUEST_ID", "")
        request_id = sent if REQUEST_ID.fullmatch(sent) else uuid.uuid4().hex
        token = _request_id.set(request_id)
        fields: dict[str, object] = {}
        fields_token = request_fields.set(fields if self.access else None)
        started = time.perf_counter()
        status: list[str] = []

        def start(code: str, headers: list[tuple[str, str]], *exc: Any) -> Any:
            status.append(code)
            headers.append(("X-Request-ID", request_id))
            return start_response(code, headers, *exc)

        try:
            return self.app(environ, start)
        finally:
            if self.access:
                access_log.info("request", extra={
                    **fields,
                    "method": environ.get("REQUEST_METHOD"),
                    "route": environ.get(ROUTE_KEY, "(no route)"),
                    "status": int(status[0].split()[0]) if status else None,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                })  # fmt: skip
            request_fields.reset(fields_token)
            _request_id.reset(token)


def init_app(app: Flask, log_format: str) -> None:
    """Request ids for every request of this app; access lines when logging JSON."""
    app.wsgi_app = RequestIds(app.wsgi_app, access=log_format == "json")  # type: ignore[method-assign]

    @app.before_request
    def remember_route() -> None:
        """The route (never the path) for the access line."""
        if request.url_rule is not None:
            request.environ[ROUTE_KEY] = request.url_rule.rule
