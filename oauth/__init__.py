"""The OAuth 2.0 account-linking server (Authlib): Alexa and Google act for a camera owner."""

from __future__ import annotations

from flask import Flask

from camvoice.settings import Settings


def init_app(app: Flask, settings: Settings) -> None:
    """Register the authorization server and its endpoints on the app."""
    from camvoice import streams
    from oauth.server import create_server
    from oauth.tokens import grant_is_live
    from oauth.views import bp

    app.extensions["camvoice.oauth_server"] = create_server(app, settings.access_token_ttl)
    app.register_blueprint(bp)
    streams.grant_is_live = grant_is_live
