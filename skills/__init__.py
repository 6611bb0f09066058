"""Amazon Alexa: the smart-home skill (directives, proactive events) and the custom skill."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from camvoice.services import Services

log = logging.getLogger(__name__)
TOPICS = ("camera.added", "camera.removed", "camera.changed", "account.deleted")


def events_configured(services: Services) -> bool:
    settings = services.settings
    return bool(settings.alexa_client_id and settings.alexa_client_secret)


def subscribe(services: Services) -> bool:
    """Route camera events to the Alexa event gateway; False without the skill's LWA client."""
    if not events_configured(services):
        return False
    from skills.events import make_handler

    handler = make_handler(services)
    for topic in TOPICS:
        services.outbox.subscribe(topic, "alexa.events", handler)
    return True


def add_owner_data(services: Services) -> None:
    """A deleted owner's endpoints go from Alexa (DeleteReport), and their event link with them."""
    from skills.events import erase, farewell

    services.owner_data.add_farewell("alexa.events", farewell)
    services.owner_data.add_eraser("alexa_links", erase)


def init_app(app: Flask, services: Services) -> None:
    from skills import custom
    from skills.views import bp

    app.register_blueprint(bp)
    custom.init_app(app, services.settings)
    if services.settings.alexa_forwarder_secret is None:
        log.warning("CAMVOICE_ALEXA_FORWARDER_SECRET is not set: /alexa/smart-home refuses all")
    if not events_configured(services):
        log.warning(
            "CAMVOICE_ALEXA_CLIENT_ID/SECRET are not set: AcceptGrant fails and Alexa hears of "
            "camera changes only at the next discovery"
        )
