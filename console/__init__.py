"""The owner's web console and the voice simulator."""

from __future__ import annotations

from flask import Flask

from camvoice.services import Services


def init_app(app: Flask, services: Services) -> None:
    from console.views import bp

    app.register_blueprint(bp)
