"""The wiring: one object holding what the composition root built, handed to what needs it.

The app factory, the CLI and the worker each build one (service/wiring.py); adapters receive it
(Flask views read it with `Services.of(current_app)`). Nothing here is a module global, so two
apps in one process (two instances in a test) never share subscribers or backends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from camvoice.cameras import Registry
from camvoice.db import Database
from camvoice.discovery import AnswerCache
from camvoice.metrics import Metrics
from camvoice.once import Once
from camvoice.outbox import Outbox
from camvoice.owner_data import OwnerData
from camvoice.purge import Purger
from camvoice.ratelimit import Limiter
from camvoice.sessions import SessionStore
from camvoice.settings import Settings
from camvoice.streams import Streams
from camvoice.webrtc import NoWebRTC, WebRTC

EXTENSION = "camvoice"  # the key of the Services object in a Flask app's extensions


@dataclass
class Services:
    settings: Settings
    db: Database
    outbox: Outbox
    registry: Registry
    streams: Streams
    limiter: Limiter
    once: Once  # single-use keys shared by every instance (signed forwards)
    sessions: SessionStore
    # Whether Alexa's RTSPS can be served (a relay runs, or a URL template points at one).
    rtsps_available: Callable[[], bool]
    # What the worker purges: the core's rules and those adapters add (camvoice/purge.py).
    purger: Purger = field(default_factory=Purger)
    # What adapters add to an owner's export and deletion (camvoice/owner_data.py).
    owner_data: OwnerData = field(default_factory=OwnerData)
    # Live WebRTC sessions: the engine media/ wires into a web or media process.
    webrtc: WebRTC = field(default_factory=NoWebRTC)
    # Discovery and SYNC answers kept per owner against their registry version.
    discovery: AnswerCache = field(default_factory=AnswerCache)
    # Prometheus metrics of this process (camvoice/metrics.py), against its own registry.
    metrics: Metrics = field(default_factory=Metrics)

    def install(self, app: Any) -> None:
        """Hand this wiring to a web app (anything with Flask's `extensions` dict)."""
        app.extensions[EXTENSION] = self

    @staticmethod
    def of(app: Any) -> Services:
        """The wiring a web app was built with."""
        services: Services = app.extensions[EXTENSION]
        return services
