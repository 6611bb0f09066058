"""Players' protocols: ticketed HLS and snapshots, the HLS relay (ffmpeg), the RTSPS relay
(GStreamer) and its auth hook, the proxy for a camera cloud's HLS, and the WebRTC engine (built by
the composition root only where sessions run: service/media_node.py's local_engine)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from camvoice.services import Services


def init_app(app: Flask, services: Services) -> None:
    """Register the media endpoints and this process's relay manager."""
    from media import signaling
    from media.relay import RelayManager, find_ffmpeg
    from media.snapshots import Snapshots
    from media.views import bp

    settings = services.settings
    relays = RelayManager(
        settings.media_path,
        find_ffmpeg(settings.ffmpeg),
        settings.relay_idle_timeout,
        settings.max_relays,
        settings.max_relays_per_owner,
        addresses=settings.address_policy(),
        metrics=services.metrics,
    )

    def may_relay(camera_id: str) -> bool:
        with services.db.reading() as session:
            return services.streams.may_relay(session, camera_id)

    # A camera that becomes blocked loses its relay within one re-check, not its idle timeout.
    relays.watch(may_relay, settings.stream_recheck_interval)
    app.extensions["camvoice.relays"] = relays
    app.extensions["camvoice.snapshots"] = Snapshots(relays)
    app.register_blueprint(bp)
    app.register_blueprint(signaling.bp)
