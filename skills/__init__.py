"""Amazon Alexa: the smart-home skill (directives, proactive events) and the custom skill."""

from __future__ import annotations

import logging

from flask import Flask

from camvoice import outbox
from camvoice.db import Database
from camvoice.settings import Settings

log = logging.getLogger(__name__)
TOPICS = ("camera.added", "camera.removed", "camera.changed")


def subscribe(db: Database, settings: Settings) -> bool:
    """Route camera events to the Alexa event gateway; False without the skill's LWA client."""
    if not settings.alexa_client_id or not settings.alexa_client_secret:
        return False
    from skills.events import make_handler

    handler = make_handler(db, settings)
    for topic in TOPICS:
        outbox.subscribe(topic, "alexa.events", handler)
    return True


def init_app(app: Flask, settings: Settings, db: Database) -> None:
    from skills import custom
    from skills.views import bp

    app.register_blueprint(bp)
    custom.init_app(app, settings)
    if settings.alexa_forwarder_secret is None:
        log.warning("CAMVOICE_ALEXA_FORWARDER_SECRET is not set: /alexa/smart-home refuses all")
    if not subscribe(db, settings):
        log.warning(
            "CAMVOICE_ALEXA_CLIENT_ID/SECRET are not set: AcceptGrant fails and Alexa hears of "
            "camera changes only at the next discovery"
        )
