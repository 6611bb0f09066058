"""The owner's web console and the voice simulator."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    from console.views import bp

    app.register_blueprint(bp)
