"""A fixed owner whose Discover and SYNC answers are kept byte for byte in tests/golden/.

The cameras cover every branch of an endpoint and a device: names with marks and accents, no
model, a probed RTSP source, the demo source, a camera cloud's HLS, no source; nicknames and a
room or none. Ids, the owner and the event link are fixed; the one thing that varies by design
(Alexa's messageId, a uuid4) is replaced by `normalised`.

The golden files were written by the code at 268dd16 (before answers were cached):

    git worktree add /tmp/base 268dd16 && cd /tmp/base && \\
        PYTHONPATH=. /work/wt/discovery/.venv/bin/python <this file> <folder>
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from camvoice.db import Database
from camvoice.models import Account, Camera
from camvoice.settings import Settings, load_settings
from oauth.models import Grant
from oauth.tokens import store_tokens
from tests.oauth_support import ALEXA_URIS, GOOGLE_URIS, register

GOLDEN = Path(__file__).parent / "golden"
FORWARDER = "golden-forwarder-secret-0123456789"
OWNER = "acc_golden0000000001"
TOKENS = {"alexa": "golden-alexa-token-" + "a" * 24, "google": "golden-google-token-" + "g" * 24}
CAMERAS: list[dict[str, Any]] = [
    {"id": "cam_golden00000001", "name": "Front Door", "room": "Entrance", "model": "C6N",
     "firmware": "5.3.0", "serial": "SN0001", "nicknames": ["porch", "door"], "source": "demo"},
    {"id": "cam_golden00000002", "name": "Cámara del jardín ñ", "room": "Jardín",
     "model": "H8c 2K+", "firmware": "V5.3.8 build 230912", "source": "rtsp://192.0.2.10/h264",
     "width": 1920, "height": 1080},
    {"id": "cam_golden00000003", "name": "Mary's front-door cam! <b>", "model": None,
     "firmware": None, "source": "rtsp://192.0.2.11/live", "nicknames": []},
    {"id": "cam_golden00000004", "name": "Garage", "backend": "ezviz", "source": "ezviz",
     "model": "CS-C6N", "serial": "E12345678", "room": "Garage", "online": False},
    {"id": "cam_golden00000005", "name": "Attic (no source)", "source": None, "model": "DIY",
     "image_encryption": True, "sleep_mode": True},
    {"id": "cam_golden00000006", "name": "x" * 128, "model": "M" * 128, "firmware": "1",
     "source": "demo", "audio": False},
]  # fmt: skip


def golden_settings(folder: Path, database_url: str, **more: Any) -> Settings:
    """Settings that advertise RTSPS (a relay on 443) and let Alexa events flow."""
    return load_settings(
        data_dir=folder, database_url=database_url, secret_key="golden-secret-key-" + "x" * 32,
        public_url="http://127.0.0.1:8080", alexa_forwarder_secret=FORWARDER,
        media_dir=folder / "media", manufacturer="Acme Cams",
        rtsps_url_template="rtsps://cameras.example:443/cam/{camera_id}/{ticket}",
        alexa_client_id="golden-alexa-client", alexa_client_secret="golden-alexa-secret",
        **more,
    )  # fmt: skip


def seed(db: Database, settings: Settings) -> None:
    """The owner, their cameras, a live Alexa events link, and a token for each assistant."""
    from skills.events import store_tokens as store_event_tokens

    with db.session() as session:
        session.add(Account(id=OWNER, email="golden@example.com", password_hash="unused"))
        session.flush()
        for fields in CAMERAS:
            session.add(Camera(owner_id=OWNER, **fields))
        store_event_tokens(session, settings, OWNER,
                           {"access_token": "lwa-a", "refresh_token": "lwa-r"})  # fmt: skip
    for assistant, uris in (("alexa", ALEXA_URIS), ("google", GOOGLE_URIS)):
        client = register(db, assistant, uris, assistant)
        with db.session() as session:
            grant = Grant(account_id=OWNER, client_id=client.client_id, scope="cameras")
            session.add(grant)
            session.flush()
            store_tokens(session, grant, TOKENS[assistant], None, 3600)


def alexa_discover(http: Any) -> bytes:
    """Discover as the Lambda forwards it; the raw bytes of the answer."""
    body = json.dumps({"directive": {
        "header": {"namespace": "Alexa.Discovery", "name": "Discover", "payloadVersion": "3",
                   "messageId": f"golden-{time.monotonic_ns()}"},
        "payload": {"scope": {"type": "BearerToken", "token": TOKENS["alexa"]}}}}).encode()  # fmt: skip
    stamp = str(int(time.time()))
    mac = hmac.new(FORWARDER.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    answer = http.post("/alexa/smart-home", data=body,
                       headers={"X-Camvoice-Timestamp": stamp, "X-Camvoice-Signature": mac})  # fmt: skip
    assert answer.status_code == 200, answer.data[:300]
    return bytes(answer.data)


def google_sync(http: Any) -> bytes:
    body = {"requestId": "golden-request-1", "inputs": [{"intent": "action.devices.SYNC"}]}
    answer = http.post("/google/fulfillment", json=body,
                       headers={"Authorization": f"Bearer {TOKENS['google']}"})  # fmt: skip
    assert answer.status_code == 200, answer.data[:300]
    return bytes(answer.data)


def normalised(answer: bytes) -> bytes:
    """The answer with Alexa's messageId (a fresh uuid4 in every message) fixed."""
    return re.sub(rb'"messageId":"[0-9a-f-]{36}"', b'"messageId":"<uuid4>"', answer)


def write(folder: Path) -> None:
    """Run the scenario with the code on sys.path and keep its two answers."""
    from service.app import create_app

    scratch = Path(tempfile.mkdtemp(prefix="camvoice-golden-"))
    settings = golden_settings(scratch, f"sqlite:///{scratch / 'golden.db'}")
    db = Database(settings.sqlalchemy_url)
    db.upgrade()
    seed(db, settings)
    http = create_app(settings, db).test_client()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "alexa_discover.json").write_bytes(normalised(alexa_discover(http)))
    (folder / "google_sync.json").write_bytes(normalised(google_sync(http)))
    db.dispose()


if __name__ == "__main__":
    write(Path(sys.argv[1]))
