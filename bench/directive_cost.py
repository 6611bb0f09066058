"""What one stream directive costs the database: statements, transactions, and time in-process.

Alexa InitializeCameraStreams (signed as the Lambda forwarder signs it) and Google EXECUTE
GetCameraStream go through the real app with Flask's test client, on SQLite (and with
--postgres on a scratch PostgreSQL database too), for an owner with one local camera. Each case is first checked to answer its success shape (a stream URL). The
counts are exact (BEGIN counts as a statement; a transaction is a BEGIN, so a statement that
commits by itself is none); the times are in-process, without HTTP: the median wall time, and
the CPU time of this process per directive (total over the runs), which a machine shared with
other work disturbs less.

    .venv/bin/python bench/directive_cost.py [--runs 300] [--postgres]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import event

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.discovery import database, drop  # noqa: E402
from camvoice.accounts import create_account  # noqa: E402
from camvoice.cameras import Registry  # noqa: E402
from camvoice.db import Database  # noqa: E402
from camvoice.outbox import Outbox  # noqa: E402
from camvoice.settings import load_settings  # noqa: E402
from oauth.models import Grant  # noqa: E402
from oauth.tokens import new_secret, store_tokens  # noqa: E402
from service.app import create_app  # noqa: E402
from tests.oauth_support import ALEXA_URIS, GOOGLE_URIS, register  # noqa: E402

SECRET = "bench-forwarder-secret-0123456789"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=300, help="timed runs per case (1: smoke)")
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL after SQLite")
    args = parser.parse_args()
    for kind in ("sqlite", "postgresql") if args.postgres else ("sqlite",):
        folder = Path(tempfile.mkdtemp(prefix="camvoice-bench-"))
        url = database(kind, "directive", folder)
        try:
            measure(kind, url, folder, args.runs)
        finally:
            drop(url)


def measure(kind: str, url: str, folder: Path, runs: int) -> None:
    """Set up one database, check each case answers a stream URL, then count and time it."""
    settings = load_settings(
        data_dir=folder, database_url=url,
        secret_key="bench-secret-key-" + "x" * 32, public_url="http://127.0.0.1:8080",
        alexa_forwarder_secret=SECRET, media_dir=folder / "media",
        rtsps_url_template="rtsps://cameras.example:443/cam/{camera_id}/{ticket}",
    )  # fmt: skip
    db = Database(settings.sqlalchemy_url)
    db.upgrade()
    with db.session() as session:
        owner = create_account(session, "bench@example.com", "bench-password")
        camera_id = Registry(Outbox()).add(session, owner, "Front Door", actor="bench").id
        owner_id = owner.id
    tokens: dict[str, str] = {}
    for assistant, uris in (("alexa", ALEXA_URIS), ("google", GOOGLE_URIS)):
        client = register(db, assistant, uris, assistant)
        with db.session() as session:
            grant = Grant(account_id=owner_id, client_id=client.client_id, scope="cameras")
            session.add(grant)
            session.flush()
            tokens[assistant] = new_secret()
            store_tokens(session, grant, tokens[assistant], None, 3600)
    http = create_app(settings, db).test_client()

    def alexa() -> None:
        body = json.dumps({"directive": {
            "header": {"namespace": "Alexa.CameraStreamController",
                       "name": "InitializeCameraStreams", "payloadVersion": "3",
                       "messageId": str(uuid.uuid4()), "correlationToken": "bench"},
            "endpoint": {"scope": {"type": "BearerToken", "token": tokens["alexa"]},
                         "endpointId": camera_id},
            "payload": {"cameraStreams": [{"protocol": "RTSP", "videoCodec": "H264",
                                           "resolution": {"width": 640, "height": 360},
                                           "authorizationType": "NONE", "audioCodec": "AAC"}]},
        }}).encode()  # fmt: skip
        stamp = str(int(time.time()))
        mac = hmac.new(SECRET.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        answer = http.post("/alexa/smart-home", data=body,
                           headers={"X-Camvoice-Timestamp": stamp, "X-Camvoice-Signature": mac})  # fmt: skip
        event_ = (answer.get_json() or {}).get("event", {})
        assert event_["payload"]["cameraStreams"][0]["uri"].startswith("rtsps://"), event_

    def google() -> None:
        execution = {"command": "action.devices.commands.GetCameraStream",
                     "params": {"StreamToChromecast": True, "SupportedStreamProtocols": ["hls"]}}  # fmt: skip
        body = {"requestId": "bench", "inputs": [{"intent": "action.devices.EXECUTE", "payload": {
            "commands": [{"devices": [{"id": camera_id}], "execution": [execution]}]}}]}  # fmt: skip
        answer = http.post("/google/fulfillment", json=body,
                           headers={"Authorization": f"Bearer {tokens['google']}"})  # fmt: skip
        result = (answer.get_json() or {})["payload"]["commands"][0]
        assert result["status"] == "SUCCESS" and result["states"]["cameraStreamAccessUrl"], result

    counted = {"statements": 0, "transactions": 0}

    def count(key: str) -> Callable[..., None]:
        return lambda *_: counted.__setitem__(key, counted[key] + 1)

    def counted_statement(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        count("statements")()
        if statement.startswith("BEGIN"):
            count("transactions")()

    event.listen(db.engine, "before_cursor_execute", counted_statement)
    label = "SQLite" if kind == "sqlite" else "PostgreSQL"
    print(f"one stream directive, {label}, one local camera, {runs} timed runs each")
    for name, case in (("Alexa InitializeCameraStreams", alexa), ("Google EXECUTE", google)):
        case()  # warm: the first grant use writes last_used_at
        counted.update(statements=0, transactions=0)
        case()
        once = dict(counted)
        times = []
        cpu = time.process_time()
        for _ in range(runs):
            started = time.perf_counter()
            case()
            times.append(time.perf_counter() - started)
        cpu = (time.process_time() - cpu) / runs
        print(f"  {name:30} statements {once['statements']}  transactions "
              f"{once['transactions']}  median {statistics.median(times) * 1000:.2f} ms  "
              f"cpu {cpu * 1000:.2f} ms")  # fmt: skip
    db.dispose()


if __name__ == "__main__":
    main()
