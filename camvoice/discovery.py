"""Discovery answers per owner (Alexa Discover's endpoints, Google SYNC's devices), kept as JSON
text against the owner's registry version.

Such an answer is built from two things: the owner's cameras, and what this process advertises
(its manufacturer name, RTSPS and WebRTC, whether events flow). The cameras are named by
`Account.registry_version`, which every change to them bumps in its own transaction
(camvoice.models); the rest by the key the adapter gives. The version is read from the database
on every request, before the cameras would be, so a change committed by any instance is seen by
the very next request on every other one: a kept answer is served only under the version it was
built at.

What is kept is the list already encoded (`Encoded`): a 300-camera Discover is ~260 kB of JSON
whose encoding cost 2-4 ms on every request when the Python lists were kept; the web app's JSON
provider writes an `Encoded` into the envelope as it is (service/app.py). Built once per key
and version: requests that ask while it is being built wait for that build instead of making
their own (a worker's threads would otherwise build the same answer at once, each with its
cameras, its dicts and its text in memory).

Kept per process, newest version only, in a least-recently-used table bounded by the number of
endpoints and devices it holds (CAMVOICE_DISCOVERY_CACHE_ITEMS).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from camvoice.db import Driver, connection_of
from camvoice.models import Account

# Encoded, an endpoint is ~0.9 KiB and a device ~0.4 KiB (a 300-camera owner's: 261 and 121
# KiB): 3000 items keep ~1-3 MiB, where the Python lists kept before took ~9 MiB.
DEFAULT_MAX_ITEMS = 3000


@dataclass(frozen=True, eq=False)
class Encoded:
    """A list as JSON text, written into an answer as it is, and how many items it holds."""

    text: str
    count: int


def encoded(items: list[Any]) -> Encoded:
    """`items` as the web app's JSON provider writes them in an answer (Flask's defaults: keys
    sorted, non-ASCII escaped, no spaces). Items hold JSON types only: anything else is a
    TypeError here, at build time, not a different encoding."""
    text = json.dumps(items, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return Encoded(text, len(items))


def registry_version(session: Session | Driver, account_id: str) -> int | None:
    """The owner's registry version (None when the account is gone): one primary-key read, in
    Core (read on every Discover and SYNC, where the ORM's statement handling cost ~5 times the
    query), or through the driver."""
    row = connection_of(session).execute(VERSION, {"account_id": account_id}).one_or_none()
    return None if row is None else int(row[0])


ACCOUNTS = Account.__table__
VERSION = select(ACCOUNTS.c.registry_version).where(ACCOUNTS.c.id == bindparam("account_id"))


class Flight:
    """One build under way; the requests that wait for it read `built` once `done` is set
    (None when the build failed: they then try again)."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.built: Encoded | None = None


class AnswerCache:
    """Encoded lists per (key, version), the newest version of each key only, each built once."""

    def __init__(self, max_items: int = DEFAULT_MAX_ITEMS) -> None:
        self.max_items = max_items
        self.items = 0
        self.entries: OrderedDict[Hashable, tuple[int, Encoded]] = OrderedDict()
        self.flights: dict[tuple[Hashable, int], Flight] = {}
        self.lock = threading.Lock()

    def answer(self, key: Hashable, version: int | None, build: Callable[[], Encoded]) -> Encoded:
        """The list kept for `key` at `version`; else the one being built for them, once built;
        else `build()`'s, kept unless a newer version already is. A version of None (no account)
        is never kept, and nothing is kept or shared with a bound of 0."""
        if version is None or self.max_items == 0:
            return build()
        while True:
            with self.lock:
                kept = self.entries.get(key)
                if kept is not None and kept[0] == version:
                    self.entries.move_to_end(key)
                    return kept[1]
                flight = self.flights.get((key, version))
                if flight is None:
                    flight = self.flights[(key, version)] = Flight()
                    break  # this request builds it
            flight.done.wait()
            if flight.built is not None:
                return flight.built
        try:
            flight.built = build()
        finally:
            with self.lock:
                del self.flights[(key, version)]
                if flight.built is not None:
                    self._keep(key, version, flight.built)
            flight.done.set()
        return flight.built

    def _keep(self, key: Hashable, version: int, built: Encoded) -> None:
        """Keep `built` (the lock held), unless it is over the bound or a newer one is kept."""
        if size(built) > self.max_items:
            return
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


def size(kept: Encoded) -> int:
    """What an entry counts against the bound: its items, and at least 1 (an owner with no
    cameras still takes a slot)."""
    return max(1, kept.count)
