"""Nothing the hot paths do for speed lets a revoked credential or a blocked camera through.

Two instances of the app (each with its own engine and pool) share one database and Redis, as
two web nodes behind a load balancer do. Each directive first succeeds on instance B; then a
token is revoked, a link unlinked or a camera turned blocked through instance A, and the very
next request on B is refused: Alexa gets its credential or readiness error, Google 401 or the
blocker's errorCode, Discover lists nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
import requests
from pydantic import SecretStr

from camvoice.db import Database
from camvoice.readiness import BLOCKERS, Blocker
from camvoice.services import Services
from camvoice.settings import Settings
from service.app import create_app
from tests.conftest import LiveServer
from tests.oauth_support import ALEXA_URIS, GOOGLE_URIS, Client, link, make_owner, register
from tests.test_replay import redis_or_skip

SECRET = "fresh-forwarder-secret-" + "f" * 16
EMAIL = "fresh@example.com"


@pytest.fixture
def cluster(settings: Settings, db_url: str) -> Iterator[tuple[LiveServer, LiveServer]]:
    """Instances A and B on one database and one Redis."""
    shared = settings.model_copy(update={
        "alexa_forwarder_secret": SecretStr(SECRET), "redis_url": SecretStr(redis_or_skip()),
        "rtsps_url_template": "rtsps://cameras.example:443/cam/{camera_id}/{ticket}"})  # fmt: skip
    with ExitStack() as stack:
        servers = []
        for _ in range(2):
            db = Database(db_url)
            stack.callback(db.dispose)
            servers.append(stack.enter_context(LiveServer(create_app(shared, db))))
        yield servers[0], servers[1]


def alexa(server: LiveServer, namespace: str, name: str, token: str,
          endpoint: str | None = None) -> dict[str, Any]:  # fmt: skip
    """A signed forward of one directive (each with its own messageId)."""
    header = {"namespace": namespace, "name": name, "payloadVersion": "3",
              "messageId": str(uuid.uuid4()), "correlationToken": "c"}  # fmt: skip
    scope = {"type": "BearerToken", "token": token}
    directive: dict[str, Any] = {"header": header, "payload": {"scope": scope}}
    if endpoint is not None:
        directive["endpoint"] = {"scope": scope, "endpointId": endpoint}
        directive["payload"] = {"cameraStreams": [{"protocol": "RTSP", "videoCodec": "H264",
                                "authorizationType": "NONE", "audioCodec": "AAC",
                                "resolution": {"width": 640, "height": 360}}]}  # fmt: skip
    body = json.dumps({"directive": directive}).encode()
    stamp = str(int(time.time()))
    mac = hmac.new(SECRET.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    answer = server.post("/alexa/smart-home", data=body,
                         headers={"X-Camvoice-Timestamp": stamp, "X-Camvoice-Signature": mac})  # fmt: skip
    assert answer.status_code == 200, answer.text
    return answer.json()["event"]


def stream(server: LiveServer, token: str, camera: str) -> dict[str, Any]:
    return alexa(server, "Alexa.CameraStreamController", "InitializeCameraStreams", token, camera)


def execute(server: LiveServer, token: str, camera: str) -> requests.Response:
    """Google EXECUTE GetCameraStream for one camera."""
    command = {"devices": [{"id": camera}], "execution": [{
        "command": "action.devices.commands.GetCameraStream",
        "params": {"StreamToChromecast": True, "SupportedStreamProtocols": ["hls"]}}]}  # fmt: skip
    body = {"requestId": "r", "inputs": [{"intent": "action.devices.EXECUTE",
                                          "payload": {"commands": [command]}}]}  # fmt: skip
    return server.post("/google/fulfillment", json=body,
                       headers={"Authorization": f"Bearer {token}"})  # fmt: skip


def executed(server: LiveServer, token: str, camera: str) -> dict[str, Any]:
    answer = execute(server, token, camera)
    assert answer.status_code == 200, answer.text
    return answer.json()["payload"]["commands"][0]


def streamed(server: LiveServer, alexa_token: str, google_token: str, camera: str) -> None:
    """Both assistants get a stream URL from this server."""
    assert stream(server, alexa_token, camera)["payload"]["cameraStreams"][0]["uri"]
    assert executed(server, google_token, camera)["status"] == "SUCCESS"


def revoke(server: LiveServer, client: Client, token: str) -> None:
    """RFC 7009 revocation, with the client's own credentials (HTTP Basic)."""
    answer = requests.post(server.url + "/oauth/revoke", data={"token": token},
                           auth=(client.client_id, client.secret or ""), timeout=10)  # fmt: skip
    assert answer.status_code == 200, answer.text


def setup_owner(a: LiveServer) -> tuple[str, Client, Client]:
    """The owner's camera and the two assistants' clients (registered through A's database)."""
    db = Services.of(a.app).db
    make_owner(db, EMAIL, {"Front Door": {}})
    with db.reading() as session:
        camera = Services.of(a.app).registry.owned_cameras(session, account_of(db))[0].id
    alexa_client = register(db, "Alexa", ALEXA_URIS, "alexa")
    google_client = register(db, "Google", GOOGLE_URIS, "google")
    return camera, alexa_client, google_client


def account_of(db: Database) -> str:
    from camvoice.accounts import find_account

    with db.reading() as session:
        return find_account(session, EMAIL).id  # type: ignore[union-attr]


def test_a_revoked_token_is_refused_at_once_on_the_other_instance(
    cluster: tuple[LiveServer, LiveServer],
) -> None:
    a, b = cluster
    camera, alexa_client, google_client = setup_owner(a)
    _, alexa_tokens = link(a, alexa_client, EMAIL)
    _, google_tokens = link(a, google_client, EMAIL, "client_secret_post")
    alexa_token, google_token = alexa_tokens["access_token"], google_tokens["access_token"]
    streamed(b, alexa_token, google_token, camera)
    revoke(a, alexa_client, alexa_token)
    revoke(a, google_client, google_token)
    refused = stream(b, alexa_token, camera)
    assert refused["header"]["name"] == "ErrorResponse"
    assert refused["payload"]["type"] == "INVALID_AUTHORIZATION_CREDENTIAL"
    assert execute(b, google_token, camera).status_code == 401


def test_an_unlinked_grant_is_refused_at_once_on_the_other_instance(
    cluster: tuple[LiveServer, LiveServer],
) -> None:
    a, b = cluster
    camera, alexa_client, google_client = setup_owner(a)
    _, alexa_tokens = link(a, alexa_client, EMAIL)
    _, google_tokens = link(a, google_client, EMAIL, "client_secret_post")
    alexa_token, google_token = alexa_tokens["access_token"], google_tokens["access_token"]
    streamed(b, alexa_token, google_token, camera)
    discovered = alexa(b, "Alexa.Discovery", "Discover", alexa_token)
    assert [e["endpointId"] for e in discovered["payload"]["endpoints"]] == [camera]
    # Unlinking: Alexa's by revoking the refresh token (the whole grant), Google's by its
    # DISCONNECT intent, both through A.
    revoke(a, alexa_client, alexa_tokens["refresh_token"])
    disconnect = {"requestId": "d", "inputs": [{"intent": "action.devices.DISCONNECT"}]}
    answer = a.post("/google/fulfillment", json=disconnect,
                    headers={"Authorization": f"Bearer {google_token}"})  # fmt: skip
    assert answer.status_code == 200, answer.text
    refused = stream(b, alexa_token, camera)
    assert refused["payload"]["type"] == "INVALID_AUTHORIZATION_CREDENTIAL"
    assert alexa(b, "Alexa.Discovery", "Discover", alexa_token)["payload"]["endpoints"] == []
    assert execute(b, google_token, camera).status_code == 401


def test_a_camera_turned_blocked_is_refused_at_once_on_the_other_instance(
    cluster: tuple[LiveServer, LiveServer],
) -> None:
    a, b = cluster
    camera, alexa_client, google_client = setup_owner(a)
    _, alexa_tokens = link(a, alexa_client, EMAIL)
    _, google_tokens = link(a, google_client, EMAIL, "client_secret_post")
    alexa_token, google_token = alexa_tokens["access_token"], google_tokens["access_token"]
    streamed(b, alexa_token, google_token, camera)
    wired = Services.of(a.app)  # the owner turns Image Encryption on; A records it
    wired.registry.change(wired.db, camera, {"image_encryption": True}, actor="owner")
    refused = stream(b, alexa_token, camera)
    assert (
        refused["header"]["name"] == "ErrorResponse" and "cameraStreams" not in refused["payload"]
    )
    assert refused["payload"]["type"] == BLOCKERS[Blocker.ENCRYPTION_ON].alexa_error
    command = executed(b, google_token, camera)
    assert command["status"] == "ERROR"
    assert command["errorCode"] == BLOCKERS[Blocker.ENCRYPTION_ON].google_error
