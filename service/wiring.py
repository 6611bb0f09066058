"""Building the Services object: the one place that knows every adapter and backend."""

from __future__ import annotations

from typing import TYPE_CHECKING

import fulfillment
import oauth
import skills
from backends.ezviz import models as ezviz_models
from backends.ezviz.backend import EzvizBackend
from backends.local import LocalBackend
from camvoice.cameras import Registry
from camvoice.db import Database
from camvoice.discovery import AnswerCache
from camvoice.metrics import Metrics
from camvoice.once import DatabaseOnce, RedisOnce
from camvoice.outbox import Outbox
from camvoice.purge import add_core
from camvoice.ratelimit import DatabaseLimiter, FallbackLimiter, Limiter, RedisLimiter
from camvoice.services import Services
from camvoice.sessions import SessionStore, SignInSession
from camvoice.settings import Settings
from camvoice.streams import Streams
from media.rtsps import relay_problem
from oauth.tokens import grant_is_live

if TYPE_CHECKING:  # imported by redis_client: a process without Redis never loads it (6 MB)
    import redis


def build_services(
    settings: Settings, db: Database, redis_client: redis.Redis | None = None
) -> Services:
    """The wiring for one process: backends, outbox subscribers, the grant check, the limiter.

    The app factory, the CLI and the worker all build it here, so a change made from any of them
    emits the same outbox events and reads cameras through the same backends.
    """
    outbox = Outbox()
    metrics = Metrics()
    registry = Registry(outbox, settings.address_policy(), settings.sealer())
    sessions = SessionStore.from_settings(settings)
    services = Services(
        settings=settings,
        db=db,
        outbox=outbox,
        registry=registry,
        streams=Streams(settings, registry, grant_is_live, sessions.is_live, metrics),
        limiter=limiter(db, redis_client),
        once=DatabaseOnce(db)
        if redis_client is None
        else RedisOnce(redis_client, DatabaseOnce(db)),
        sessions=sessions,
        rtsps_available=lambda: bool(settings.rtsps_url_template) or not relay_problem(settings),
        discovery=AnswerCache(settings.discovery_cache_items),
        metrics=metrics,
    )
    registry.register(LocalBackend())
    registry.register(EzvizBackend(services))
    skills.subscribe(services)
    fulfillment.subscribe(services)
    add_core(services.purger, settings)
    services.purger.add("signin_sessions", SignInSession.id, sessions.over)
    oauth.add_purge_rules(services.purger)
    add_owner_data(services)
    return services


def add_owner_data(services: Services) -> None:
    """What each adapter adds to an owner's export and deletion (camvoice/owner_data.py)."""
    oauth.add_owner_data(services)
    skills.add_owner_data(services)
    fulfillment.add_owner_data(services)
    services.owner_data.add_eraser("ezviz_links", ezviz_models.erase)
    services.owner_data.add_exporter("camera_cloud", ezviz_models.export)


def limiter(db: Database, client: redis.Redis | None) -> Limiter:
    """Rate limits in Redis when configured, falling back to the database while it is away."""
    if client is None:
        return DatabaseLimiter(db)
    return FallbackLimiter(RedisLimiter(client), DatabaseLimiter(db))


def redis_client(settings: Settings) -> redis.Redis | None:
    if settings.redis_url is None:
        return None
    import redis

    return redis.Redis.from_url(
        settings.redis_url.get_secret_value(), socket_timeout=2, socket_connect_timeout=2
    )
