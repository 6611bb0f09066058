"""The OAuth 2.0 account-linking server (Authlib): Alexa and Google act for a camera owner."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from camvoice.purge import Purger
    from camvoice.services import Services


def init_app(app: Flask, services: Services) -> None:
    """Register the authorization server and its endpoints on the app."""
    from oauth.server import create_server
    from oauth.views import bp

    app.extensions["camvoice.oauth_server"] = create_server(app, services.settings.access_token_ttl)
    app.register_blueprint(bp)


def add_purge_rules(purger: Purger) -> None:
    """Expired codes and tokens go with the worker's purge (oauth/purge.py)."""
    from oauth.purge import add_rules

    add_rules(purger)


def add_owner_data(services: Services) -> None:
    """A deleted owner's grants, codes and tokens go; the export lists their links."""
    from oauth.tokens import erase_account, export_links

    services.owner_data.add_eraser("oauth", erase_account)
    services.owner_data.add_exporter("links", export_links)
