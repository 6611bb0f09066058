"""The local backend: cameras kept in camvoice's own database, managed by the CLI and console.

The database is the camera's truth, so there is nothing to push, ask or relay from elsewhere.
"""

from __future__ import annotations

from typing import Any

from camvoice.models import Camera
from camvoice.tickets import Protocol


class LocalBackend:
    name = "local"

    def push(self, camera: Camera, changes: dict[str, Any], code: str | None) -> None:
        """The registry's own record of the change is the change."""

    def recheck(self, camera: Camera, protocol: Protocol) -> bool:
        """The database is the camera's truth: nothing to ask."""
        return False

    def upstream_hls(self, camera: Camera) -> str | None:
        return None
