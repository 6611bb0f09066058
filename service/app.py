"""The Flask app factory: the composition root that wires the core and the adapters together."""

from __future__ import annotations

import logging
import secrets
from typing import Any

from flask import Flask, Response, abort, current_app, jsonify, request
from flask.json.provider import DefaultJSONProvider
from flask_wtf.csrf import CSRFError, CSRFProtect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import BadRequest, HTTPException, ServiceUnavailable
from werkzeug.middleware.proxy_fix import ProxyFix

import console
import fulfillment
import media
import oauth
import skills
from camvoice import untrusted
from camvoice.db import UNAVAILABLE_RETRY_AFTER, Database, unavailable
from camvoice.discovery import Encoded
from camvoice.redact import RedactingFactory
from camvoice.services import Services
from camvoice.settings import Settings, load_settings
from service import languages, logs, metrics, private_files
from service.media_node import local_engine, remote_engine
from service.wiring import build_services, redis_client

log = logging.getLogger(__name__)

# Pages a person looks at get HTML errors; every other path is an API and answers JSON.
HTML_PREFIXES: tuple[str, ...] = (
    "/oauth/authorize", "/oauth/login", "/oauth/logout", "/console", "/simulator",
)  # fmt: skip
# OAuth endpoints whose errors are RFC 6749 5.2 JSON, whatever went wrong.
OAUTH_API_PATHS: tuple[str, ...] = ("/oauth/token", "/oauth/revoke", "/oauth/introspect")
# What create_app imports on its way (the adapters import lazily, so the CLI starts quickly).
# `camvoice serve` imports them in gunicorn's master before it forks: the workers then share
# those pages (copy on write) rather than each loading its own copy, about 17 MB of each
# worker's own memory (USS). A module missing here costs memory, never correctness; the
# WebRTC engine's aiortc and PyAV are not here on purpose (they load only without a media node).
WORKER_IMPORTS: tuple[str, ...] = (
    "oauth.server", "oauth.views", "oauth.purge", "skills.views", "skills.custom",
    "fulfillment.views", "fulfillment.homegraph", "console.views", "media.views",
    "media.signaling",
)  # fmt: skip


class UntrustedJSONProvider(DefaultJSONProvider):
    """Request JSON (`request.get_json`, `flask.json.loads`) parsed by the core's checked
    `untrusted.loads`: too deep or unstorable text is a ValueError, which each adapter already
    answers with its protocol's error."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return untrusted.loads(s)

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        """Flask's encoding, with each `Encoded` value (a kept Discovery list, already in this
        encoding) written as its text rather than encoded again. It goes in first as a random
        marker string, made after the request was read: nothing else in the answer can be it."""
        parts: dict[str, str] = {}
        fallback = kwargs.pop("default", self.default)

        def default(value: Any) -> Any:
            if not isinstance(value, Encoded):
                return fallback(value)
            marker = secrets.token_hex(16)
            parts[f'"{marker}"'] = value.text
            return marker

        text = super().dumps(obj, default=default, **kwargs)
        for marker, part in parts.items():
            text = text.replace(marker, part, 1)
        return text


def create_app(settings: Settings | None = None, db: Database | None = None) -> Flask:
    """Build the WSGI app. Each process (gunicorn worker) calls this once."""
    private_files()
    settings = settings or load_settings()
    configure_logging(settings.log_level, settings.log_format)
    db = db or Database(settings.sqlalchemy_url)
    app = Flask("camvoice")
    app.json = UntrustedJSONProvider(app)
    app.before_request(refuse_unstorable_text)  # first: before any hook reads the database
    app.config.update(
        SECRET_KEY=settings.key(),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.public_url.startswith("https://"),
        MAX_CONTENT_LENGTH=1024 * 1024,
        # CSRF (flask-wtf): checked below for the pages' form posts only, not for the APIs;
        # a token lives as long as the session; no Referer check (our pages send none).
        WTF_CSRF_CHECK_DEFAULT=False,
        WTF_CSRF_TIME_LIMIT=None,
        WTF_CSRF_SSL_STRICT=False,
    )
    csrf = CSRFProtect(app)
    languages.install(app)
    app.extensions["camvoice.redis"] = redis_client(settings)
    services = build_services(settings, db, app.extensions["camvoice.redis"])
    services.install(app)

    if settings.proxy_hops:
        # Trust X-Forwarded-For from our own proxies only, for the client address. The public
        # URL comes from settings, so forged Host or X-Forwarded-Proto headers change nothing.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.proxy_hops, x_proto=0, x_host=0)  # type: ignore[method-assign]

    media.init_app(app, services)
    # WebRTC sessions live on media nodes (`camvoice serve` starts one) or, without any, in this
    # process. Only the latter imports aiortc and PyAV: 26 MB a web worker need not hold.
    services.webrtc = remote_engine(settings) if settings.media_urls else local_engine(services)
    oauth.init_app(app, services)
    fulfillment.init_app(app, services)
    skills.init_app(app, services)
    console.init_app(app, services)
    metrics.init_app(app, services)
    logs.init_app(app, settings.log_format)

    @app.before_request
    def check_csrf() -> None:
        """Every form a person posts (sign-in, consent, console, simulator) carries the
        session's token; APIs (OAuth token endpoints, assistants, media) never do."""
        if request.method == "POST" and wants_html():
            csrf.protect()

    app.register_error_handler(CSRFError, csrf_error)
    app.add_url_rule("/healthz", "healthz", healthz)
    app.add_url_rule("/readyz", "readyz", readyz)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(DBAPIError, database_error)
    app.register_error_handler(PoolTimeout, database_error)
    app.register_error_handler(Exception, unexpected_error)
    return app


def configure_logging(level: str, log_format: str = "text") -> None:
    RedactingFactory.install()  # no secret in any record, whoever logs it (gunicorn included)
    handler = logging.StreamHandler()  # unless the root has one (gunicorn's, pytest's) already
    if log_format == "json":
        handler.setFormatter(logs.JSONFormatter())
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=[handler])  # fmt: skip
    logging.getLogger().setLevel(level)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # /readyz would log on every probe
    # Authlib logs issued tokens at DEBUG ("Issue token ..."): never let that level through.
    logging.getLogger("authlib").setLevel(logging.INFO)
    # urllib3 logs every request line at DEBUG: camera-cloud URLs carry their tokens in the query.
    logging.getLogger("urllib3").setLevel(logging.INFO)


def healthz() -> Response:
    """Liveness: the process answers. Checks nothing else on purpose."""
    return jsonify(status="ok")


def readyz() -> tuple[Response, int]:
    """Readiness: the database answers and its schema is current."""
    db = Services.of(current_app).db
    checks: dict[str, str] = {}
    try:
        db.ping()
        checks["database"] = "ok"
        checks["migrations"] = "pending" if db.pending_migrations() else "current"
    except Exception as exc:
        log.warning("readiness check failed: %s", type(exc).__name__)
        checks["database"] = "unreachable"
    client = current_app.extensions["camvoice.redis"]
    if client is not None:
        import redis  # loaded already (service/wiring.py's redis_client); never without Redis

        try:
            client.ping()
            checks["redis"] = "ok"
        except redis.RedisError as exc:
            # Reported, but still ready: rate limits fall back to the database meanwhile, and
            # failing every instance's probe at once would take the whole service down.
            log.warning("readiness check: redis %s", type(exc).__name__)
            checks["redis"] = "unreachable"
    ok = checks.get("database") == "ok" and checks.get("migrations") == "current"
    return jsonify(status="ok" if ok else "unavailable", **checks), 200 if ok else 503


def refuse_unstorable_text() -> Response | None:
    """400 for a path, query or form field the database could not store (NUL, for one).

    Such text is never a valid camera id, email, client id or code, and PostgreSQL refuses NUL
    where SQLite stores it: refused here, before any adapter looks it up, alike on both. JSON
    bodies are checked by UntrustedJSONProvider, so each protocol answers in its own shape.
    """
    fields = [request.path]
    for data in (request.args, request.form):
        fields += [text for pair in data.items(multi=True) for text in pair]
    if all(untrusted.storable(text) for text in fields):
        return None
    message = "The request carries a NUL character or invalid text."
    if request.path in OAUTH_API_PATHS:  # RFC 6749 5.2
        response = jsonify(error="invalid_request", error_description=message)
        response.status_code = 400
        response.headers["Cache-Control"] = "no-store"
        return response
    abort(400, description=message)


def wants_html() -> bool:
    return request.path.startswith(HTML_PREFIXES)


def csrf_error(exc: CSRFError) -> Response | HTTPException:
    """A missing or foreign form token: 400, said in words a person can act on."""
    return http_error(
        BadRequest("The form expired or was not sent from this site. Reload and retry.")
    )


def http_error(exc: HTTPException) -> Response | HTTPException:
    """Errors on API paths are JSON with a machine-readable code and a message."""
    if wants_html():
        return exc
    code = (exc.name or "error").lower().replace(" ", "_").replace("'", "")
    response = jsonify(error=code, message=exc.description)
    response.status_code = exc.code or 500
    for header in ("Retry-After", "Allow", "WWW-Authenticate"):
        if exc.get_response().headers.get(header):
            response.headers[header] = exc.get_response().headers[header]
    return response


def database_error(exc: Exception) -> Response | HTTPException | tuple[Response, int]:
    """The database away (restarting, failing over, unreachable): 503 with Retry-After in the
    caller's shape, never a 500, since nothing was written and a retry will do. Any other
    database error is a bug, answered as one."""
    if not unavailable(exc):
        return unexpected_error(exc)
    rule = request.url_rule.rule if request.url_rule else "(no route)"
    cause = type(getattr(exc, "orig", None) or exc).__name__
    log.warning("database unavailable on %s %s (%s)", request.method, rule, cause)
    message = "The service is briefly unavailable; retry shortly."
    if request.path in OAUTH_API_PATHS:
        response = jsonify(error="temporarily_unavailable", error_description=message)
        response.status_code = 503
        response.headers["Retry-After"] = str(UNAVAILABLE_RETRY_AFTER)
        return response
    return http_error(ServiceUnavailable(message, retry_after=UNAVAILABLE_RETRY_AFTER))


def unexpected_error(exc: Exception) -> tuple[Response, int]:
    """Never a traceback to the caller; the log keeps it for the operator."""
    if isinstance(exc, HTTPException):
        return http_error(exc), exc.code or 500  # type: ignore[return-value]
    # The route, not the path: stream and snapshot paths carry live tickets.
    rule = request.url_rule.rule if request.url_rule else "(no route)"
    log.exception("unhandled error on %s %s", request.method, rule)
    return jsonify(error="server_error", message="Internal error; it has been logged."), 500
