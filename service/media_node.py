"""The media node role (`camvoice media`): one process holding WebRTC sessions for web processes.

A media node is a small WSGI app with the internal, signed WebRTC endpoints (media/node_views.py)
and the WebRTC engine of this process. It must run as exactly one process per node (gunicorn with
one worker, several threads): sessions and the cameras' upstream pulls live in its memory.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, jsonify

from camvoice.db import Database
from camvoice.services import Services
from camvoice.settings import Settings, load_settings
from camvoice.webrtc import WebRTC
from media import node_views
from media.nodes import node_secret
from media.remote import RemoteWebRTC
from service import metrics, private_files
from service.wiring import build_services, redis_client


def create_media_app(
    settings: Settings | None = None, db: Database | None = None, webrtc: WebRTC | None = None
) -> Flask:
    """The media node's app; `webrtc` is its engine (this process's own by default)."""
    from service.app import configure_logging, http_error, unexpected_error

    private_files()
    settings = settings or load_settings()
    configure_logging(settings.log_level, settings.log_format)
    db = db or Database(settings.sqlalchemy_url)
    app = Flask("camvoice-media")
    app.config.update(MAX_CONTENT_LENGTH=256 * 1024)  # an SDP offer is a few kilobytes
    services = build_services(settings, db, redis_client(settings))
    services.webrtc = webrtc if webrtc is not None else local_engine(services)
    services.install(app)
    app.extensions["camvoice.node_secret"] = node_secret(settings.key())
    app.register_blueprint(node_views.bp)
    metrics.init_app(app, services)  # its live WebRTC sessions (bearer token, like the web's)
    app.add_url_rule("/healthz", "healthz", lambda: jsonify(status="ok"))
    app.register_error_handler(
        Exception, lambda exc: media_error(exc, http_error, unexpected_error)
    )
    return app


def media_error(exc: Exception, http_error: Any, unexpected_error: Any) -> Response | Any:
    from werkzeug.exceptions import HTTPException

    return http_error(exc) if isinstance(exc, HTTPException) else unexpected_error(exc)


def local_engine(services: Services) -> WebRTC:
    """This process's own aiortc engine (media/webrtc.py), fed by its own camera feeds."""
    from media.feeds import Feeds
    from media.relay import find_ffmpeg
    from media.webrtc import WebRTCEngine

    settings = services.settings
    feeds = Feeds(find_ffmpeg(settings.ffmpeg), settings.address_policy())
    return WebRTCEngine(
        settings, services.db, services.streams, services.registry, feeds, services.metrics
    )


def remote_engine(settings: Settings) -> RemoteWebRTC:
    """What a web process uses when CAMVOICE_MEDIA_URLS lists media nodes."""
    from camvoice.settings import parse_media_urls

    return RemoteWebRTC(parse_media_urls(settings.media_urls), node_secret(settings.key()))
