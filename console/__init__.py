"""The owner's web console and the voice simulator."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from camvoice.services import Services


def init_app(app: Flask, services: Services) -> None:
    from console.views import bp

    app.register_blueprint(bp)
