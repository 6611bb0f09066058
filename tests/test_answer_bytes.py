"""The directives answer the very bytes they answered before the speed work (commit 268dd16).

Each directive of the hot paths, and the refusals beside them (a blocked camera, an unknown one,
a bad token), is sent through the real app, on SQLite and PostgreSQL, with fixed messageIds and
requestIds, for an owner whose cameras carry non-ASCII names (Flask's JSON escapes them). What
legitimately differs from one run to the next is replaced explicitly before the comparison: the
generated ids (cameras, account), the owner's access tokens, stream tickets, the response's fresh messageId (a UUID) and
timestamps. Everything else, key order and escaping included, must be byte-for-byte the
fixture's, which was recorded from commit 268dd16's code with CAMVOICE_RECORD_ANSWERS set.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient
from pydantic import SecretStr

from camvoice.accounts import create_account
from camvoice.cameras import Registry
from camvoice.db import Database
from camvoice.outbox import Outbox
from camvoice.settings import Settings
from oauth.models import Grant
from oauth.tokens import new_secret, store_tokens
from service.app import create_app
from tests.oauth_support import ALEXA_URIS, GOOGLE_URIS, register

FIXTURE = Path(__file__).with_name("answers_268dd16.json")
SECRET = "answer-bytes-forwarder-" + "s" * 16
CAMERAS = {  # name -> fields; the keys name the placeholders the ids become
    "Front Door": {"room": "Hall", "model": "C6N", "firmware": "5.3.0", "nicknames": ["porch"]},
    "Café Küche 門": {"room": "Küche", "nicknames": ["Kaffee — Ecke"]},
    "Garage": {"image_encryption": True, "model": "C3W"},
}
TICKET = re.compile(r"[A-Za-z0-9_-]{40,}\.[A-Za-z0-9_-]{43}")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


def owner(db: Database) -> tuple[dict[str, str], str, dict[str, str]]:
    """An owner with the three cameras and an Alexa and a Google token: (ids, owner, tokens)."""
    with db.session() as session:
        account = create_account(session, "bytes@example.com", "bytes-password-1")
        registry = Registry(Outbox())
        ids = {name: registry.add(session, account, name, actor="test", **fields).id
               for name, fields in CAMERAS.items()}  # fmt: skip
        account_id = account.id
    tokens = {}
    for assistant, uris in (("alexa", ALEXA_URIS), ("google", GOOGLE_URIS)):
        client = register(db, assistant, uris, assistant)
        with db.session() as session:
            grant = Grant(account_id=account_id, client_id=client.client_id, scope="cameras")
            session.add(grant)
            session.flush()
            tokens[assistant] = new_secret()
            store_tokens(session, grant, tokens[assistant], None, 3600)
    return ids, account_id, tokens


def alexa(http: FlaskClient, number: int, namespace: str, name: str, token: str,
          endpoint: str | None = None, payload: dict[str, Any] | None = None) -> bytes:  # fmt: skip
    """One directive as the Lambda forwards it (signed), with a fixed messageId."""
    header = {"namespace": namespace, "name": name, "payloadVersion": "3",
              "messageId": f"message-{number}", "correlationToken": f"corr-{number}"}  # fmt: skip
    scope = {"type": "BearerToken", "token": token}
    directive: dict[str, Any] = {"header": header, "payload": payload or {}}
    if endpoint is None:
        directive["payload"] = {**(payload or {}), "scope": scope}
    else:
        directive["endpoint"] = {"scope": scope, "endpointId": endpoint}
    body = json.dumps({"directive": directive}).encode()
    stamp = str(int(time.time()))
    mac = hmac.new(SECRET.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    answer = http.post("/alexa/smart-home", data=body,
                       headers={"X-Camvoice-Timestamp": stamp, "X-Camvoice-Signature": mac})  # fmt: skip
    return f"{answer.status_code} ".encode() + answer.get_data()


def google(http: FlaskClient, number: int, token: str, intent: str, payload: Any = None) -> bytes:
    item: dict[str, Any] = {"intent": intent}
    if payload is not None:
        item["payload"] = payload
    answer = http.post("/google/fulfillment", json={"requestId": f"request-{number}",
                       "inputs": [item]}, headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    return f"{answer.status_code} ".encode() + answer.get_data()


def stream_command(camera: str, protocols: list[str], chromecast: bool) -> dict[str, Any]:
    return {"commands": [{"devices": [{"id": camera}], "execution": [{
        "command": "action.devices.commands.GetCameraStream",
        "params": {"StreamToChromecast": chromecast, "SupportedStreamProtocols": protocols}}]}]}  # fmt: skip


def answers(http: FlaskClient, ids: dict[str, str], tokens: dict[str, str]) -> dict[str, bytes]:
    """Every answer compared, by a name saying what it is."""
    front, cafe, garage = (ids[name] for name in CAMERAS)
    streams = {"cameraStreams": [{"protocol": "RTSP", "resolution": {"width": 1280, "height": 720},
               "authorizationType": "NONE", "videoCodec": "H264", "audioCodec": "AAC"}]}  # fmt: skip
    init = ("Alexa.CameraStreamController", "InitializeCameraStreams")
    a, g = tokens["alexa"], tokens["google"]
    return {
        "alexa discover": alexa(http, 1, "Alexa.Discovery", "Discover", a),
        "alexa discover, bad token": alexa(http, 2, "Alexa.Discovery", "Discover", "nope"),
        "alexa init streams": alexa(http, 3, *init, a, front, streams),
        "alexa init streams, non-ascii": alexa(http, 4, *init, a, cafe, streams),
        "alexa init streams, blocked": alexa(http, 5, *init, a, garage, streams),
        "alexa init streams, unknown": alexa(http, 6, *init, a, "cam_nope", streams),
        "alexa init streams, bad token": alexa(http, 7, *init, "nope", front, streams),
        "alexa init streams, google token": alexa(http, 8, *init, g, front, streams),
        "alexa init streams, no rtsp": alexa(http, 9, *init, a, front, {"cameraStreams": []}),
        "alexa init streams, bad payload": alexa(http, 10, *init, a, front, {"cameraStreams": 1}),
        "alexa report state": alexa(http, 11, "Alexa", "ReportState", a, cafe),
        "google sync": google(http, 12, g, "action.devices.SYNC"),
        "google query": google(http, 13, g, "action.devices.QUERY",
                               {"devices": [{"id": cafe}, {"id": "cam_nope"}]}),
        "google execute hls": google(http, 14, g, "action.devices.EXECUTE",
                                     stream_command(front, ["hls"], True)),
        "google execute non-ascii": google(http, 15, g, "action.devices.EXECUTE",
                                           stream_command(cafe, ["hls", "dash"], False)),
        "google execute blocked": google(http, 16, g, "action.devices.EXECUTE",
                                         stream_command(garage, ["hls"], True)),
        "google execute unknown": google(http, 17, g, "action.devices.EXECUTE",
                                         stream_command("cam_nope", ["hls"], True)),
        "google execute no protocol": google(http, 18, g, "action.devices.EXECUTE",
                                             stream_command(front, ["dash"], True)),
        "google execute bad token": google(http, 19, "nope", "action.devices.EXECUTE",
                                           stream_command(front, ["hls"], True)),
        "google execute alexa token": google(http, 20, a, "action.devices.EXECUTE",
                                             stream_command(front, ["hls"], True)),
        "google execute bad payload": google(http, 21, g, "action.devices.EXECUTE", {"x": 1}),
    }  # fmt: skip


def normalised(answer: bytes, ids: dict[str, str], account_id: str, tokens: dict[str, str]) -> str:
    """The answer with what varies between runs replaced by names; bytes otherwise kept."""
    text = answer.decode("ascii")  # Flask's JSON is ASCII: a non-ASCII byte is a change
    for assistant, token in tokens.items():  # an Alexa response echoes the endpoint's scope
        text = text.replace(token, f"<{assistant} token>")
    for number, camera_id in enumerate(ids.values()):
        text = text.replace(camera_id, f"<camera {number}>")
    text = text.replace(account_id, "<owner>")
    text = TICKET.sub("<ticket>", text)
    text = UUID.sub("<uuid>", text)
    return STAMP.sub("<time>", text)


def test_directives_answer_the_bytes_they_answered_before(
    settings: Settings, db: Database, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={
        "alexa_forwarder_secret": SecretStr(SECRET),
        "rtsps_url_template": "rtsps://cameras.example:443/cam/{camera_id}/{ticket}"})  # fmt: skip
    ids, account_id, tokens = owner(db)
    http = create_app(settings, db).test_client()
    got = {name: normalised(answer, ids, account_id, tokens)
           for name, answer in answers(http, ids, tokens).items()}  # fmt: skip
    if os.environ.get("CAMVOICE_RECORD_ANSWERS"):
        FIXTURE.write_text(json.dumps(got, indent=1, ensure_ascii=False) + "\n")
    expected = json.loads(FIXTURE.read_text())
    assert list(got) == list(expected)
    for name, answer in got.items():
        assert answer == expected[name], name
    assert "\\u00e9" in got["google sync"] and "\\u9580" in got["alexa discover"]  # escaped
    assert "<ticket>" in got["alexa init streams"] and "<ticket>" in got["google execute hls"]
