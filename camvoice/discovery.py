"""Discovery answers per owner (Alexa Discover's endpoints, Google SYNC's devices), cached
against the owner's registry version.

Such an answer is built from two things: the owner's cameras, and what this process advertises
(its manufacturer name, RTSPS and WebRTC, whether events flow). The cameras are named by
`Account.registry_version`, which every change to them bumps in its own transaction
(camvoice.models); the rest by the key the adapter gives. The version is read from the database
on every request, before the cameras would be, so a change committed by any instance is seen by
the very next request on every other one: a kept answer is served only under the version it was
built at.

Kept per process, newest version only, in a least-recently-used table bounded by the number of
endpoints and devices it holds (CAMVOICE_DISCOVERY_CACHE_ITEMS). The lists handed out are shared:
callers serialise them and never change them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from camvoice.models import Account

DEFAULT_MAX_ITEMS = 3000  # 300-camera owners: ~9 MiB (endpoint ~3 KiB, device ~1.5 KiB)


def registry_version(session: Session, account_id: str) -> int | None:
    """The owner's registry version (None when the account is gone): one primary-key read."""
    stmt = select(Account.registry_version).where(Account.id == account_id)
    return session.scalars(stmt).one_or_none()


class AnswerCache:
    """Lists built per (key, version), the newest version of each key only."""

    def __init__(self, max_items: int = DEFAULT_MAX_ITEMS) -> None:
        self.max_items = max_items
        self.items = 0
        self.entries: OrderedDict[Hashable, tuple[int, list[Any]]] = OrderedDict()
        self.lock = threading.Lock()

    def answer(
        self, key: Hashable, version: int | None, build: Callable[[], list[Any]]
    ) -> list[Any]:
        """The list kept for `key` at `version`, or `build()`'s, kept unless a newer version
        already is. A version of None (no account) is never kept."""
        if version is None:
            return build()
        with self.lock:
            kept = self.entries.get(key)
            if kept is not None and kept[0] == version:
                self.entries.move_to_end(key)
                return kept[1]
        built = build()
        self._keep(key, version, built)
        return built

    def _keep(self, key: Hashable, version: int, built: list[Any]) -> None:
        if size(built) > self.max_items:
            return
        with self.lock:
            kept = self.entries.get(key)
            if kept is not None and kept[0] > version:
                return  # a slower request built an older list: the newer one stays
            if kept is not None:
                self.items -= size(self.entries.pop(key)[1])
            self.entries[key] = (version, built)
            self.items += size(built)
            while self.items > self.max_items:
                _, (_, dropped) = self.entries.popitem(last=False)
                self.items -= size(dropped)


def size(kept: list[Any]) -> int:
    """What an entry counts against the bound: its items, and at least 1 (an owner with no
    cameras still takes a slot)."""
    return max(1, len(kept))
