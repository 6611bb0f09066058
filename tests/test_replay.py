"""A signed forward from the Lambda is accepted once, by whichever instance gets it first.

Two instances of the app share one database (SQLite file or PostgreSQL), and Redis when it is
configured: a forward delivered to one and then replayed, within the signature's window, to
either is refused with 409 (the Lambda would turn it into BRIDGE_UNREACHABLE; never a credential
error, which makes Alexa drop the link), and of two simultaneous deliveries exactly one passes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import pytest
import redis
import requests
from pydantic import SecretStr

from camvoice.db import Database
from camvoice.settings import Settings
from service.app import create_app
from tests.conftest import LiveServer

FORWARDER = "forwarder-secret-" + "r" * 24
REDIS_URL = os.environ.get("CAMVOICE_TEST_REDIS", "redis://127.0.0.1:6379/0")


def redis_or_skip() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError:
        if os.environ.get("CAMVOICE_REQUIRE_REDIS") == "1":
            pytest.fail(f"Redis unreachable at {REDIS_URL} and CAMVOICE_REQUIRE_REDIS=1")
        pytest.skip(f"Redis unreachable at {REDIS_URL}")
    return REDIS_URL


@pytest.fixture(params=["database", "redis"])
def instances(
    request: pytest.FixtureRequest, settings: Settings, db_url: str
) -> Iterator[tuple[LiveServer, LiveServer]]:
    """Two app instances, each with its own engine, on one database (and one Redis)."""
    update: dict[str, object] = {"alexa_forwarder_secret": SecretStr(FORWARDER)}
    if request.param == "redis":
        update["redis_url"] = SecretStr(redis_or_skip())
    shared = settings.model_copy(update=update)
    with ExitStack() as stack:
        servers = []
        for _ in range(2):
            db = Database(db_url)
            stack.callback(db.dispose)
            servers.append(stack.enter_context(LiveServer(create_app(shared, db))))
        yield servers[0], servers[1]


def forward() -> tuple[bytes, dict[str, str]]:
    """A directive as the Lambda forwards it: body, timestamp and signature."""
    body = json.dumps({"directive": {"header": {
        "namespace": "Alexa.Discovery", "name": "Discover", "payloadVersion": "3",
        "messageId": str(uuid.uuid4())}, "payload": {"scope": {"type": "BearerToken",
        "token": "not-a-token"}}}}, separators=(",", ":")).encode()  # fmt: skip
    stamp = str(int(time.time()))
    signature = hmac.new(FORWARDER.encode(), stamp.encode() + b"." + body, hashlib.sha256)
    return body, {"X-Camvoice-Timestamp": stamp, "X-Camvoice-Signature": signature.hexdigest()}


def deliver(server: LiveServer, body: bytes, headers: dict[str, str]) -> requests.Response:
    return server.post("/alexa/smart-home", data=body, headers=headers)


def test_a_replayed_forward_is_refused_by_every_instance(
    instances: tuple[LiveServer, LiveServer],
) -> None:
    a, b = instances
    body, headers = forward()
    first = deliver(a, body, headers)
    assert first.status_code == 200 and "event" in first.json()
    for again in (b, a):
        replay = deliver(again, body, headers)
        assert replay.status_code == 409
        assert replay.json()["error"] == "replayed"
    other_body, other_headers = forward()  # a new directive (new messageId) still passes
    assert deliver(b, other_body, other_headers).status_code == 200
    # Of simultaneous deliveries of one forward, to both instances, exactly one passes.
    body, headers = forward()
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda s: deliver(s, body, headers).status_code, (a, b) * 2))
    assert sorted(answers) == [200, 409, 409, 409]
