"""Google Home cloud-to-cloud fulfillment: the smart-home intents and HomeGraph."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from camvoice.services import Services

log = logging.getLogger(__name__)
TOPICS = ("camera.added", "camera.removed", "camera.changed", "account.deleted")


def subscribe(services: Services) -> bool:
    """Route camera events to HomeGraph through the outbox; False when no key is configured."""
    settings = services.settings
    if settings.google_homegraph_key is None:
        return False
    from fulfillment.homegraph import HomeGraph, make_handler

    handler = make_handler(
        services.db, HomeGraph(settings.google_homegraph_key, settings.google_homegraph_url)
    )
    for topic in TOPICS:
        services.outbox.subscribe(topic, "google.homegraph", handler)
    return True


def add_owner_data(services: Services) -> None:
    """Google hears of a deleted owner (requestSync); their HomeGraph stop row goes."""
    from fulfillment.homegraph import erase, farewell

    services.owner_data.add_farewell("google.homegraph", farewell)
    services.owner_data.add_eraser("homegraph_stops", erase)


def init_app(app: Flask, services: Services) -> None:
    from fulfillment.views import bp

    app.register_blueprint(bp)
    if services.settings.google_homegraph_key is None:
        log.warning(
            "CAMVOICE_GOOGLE_HOMEGRAPH_KEY is not set: Google will not hear of camera changes "
            "(requestSync, reportState) until the owner asks it to sync"
        )
