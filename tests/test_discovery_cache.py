"""Discover and SYNC answers kept per owner against the owner's registry version: byte for byte
what the code before the cache answered, changed by every write path the very next request, on
every instance, and never keeping a revoked token's answer."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select

from camvoice.cameras import Registry
from camvoice.db import Database
from camvoice.discovery import AnswerCache, Encoded, encoded, registry_version
from camvoice.models import Account, Camera
from camvoice.outbox import Outbox
from camvoice.settings import Settings
from oauth.tokens import revoke_account
from service.app import create_app
from skills.events import AlexaLink
from tests.conftest import LiveServer, run_cli, statements, until, wiring
from tests.discovery_golden import (
    GOLDEN,
    OWNER,
    TOKENS,
    alexa_discover,
    golden_settings,
    google_sync,
    normalised,
    seed,
)
from tests.oauth_support import PASSWORD, Browser, csrf_of, make_owner

ANSWERS: dict[str, Callable[[Any], bytes]] = {
    "alexa_discover": alexa_discover,
    "google_sync": google_sync,
}


@pytest.fixture
def golden(db: Database, db_url: str, tmp_path: Path) -> Settings:
    settings = golden_settings(tmp_path, db_url)
    seed(db, settings)
    return settings


@contextmanager
def camera_reads(db: Database) -> Iterator[list[str]]:
    """The statements that read the cameras table while the block runs."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM cameras" in statement:
            seen.append(statement)

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(db.engine, "before_cursor_execute", record)


def version(db: Database, owner: str = OWNER) -> int:
    with db.reading() as session:
        found = registry_version(session, owner)
    assert found is not None
    return found


def names(answer: bytes) -> set[str]:
    """friendlyName (Alexa) or name.name (Google) of every endpoint or device."""
    import json

    data = json.loads(answer)
    if "event" in data:
        return {e["friendlyName"] for e in data["event"]["payload"]["endpoints"]}
    return {d["name"]["name"] for d in data["payload"]["devices"]}


# --- byte for byte -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(ANSWERS))
def test_cached_answer_is_byte_for_byte_the_fresh_one_and_268dd16s(
    kind: str, golden: Settings, db: Database
) -> None:
    cached = create_app(golden, db).test_client()
    uncached = create_app(golden.model_copy(update={"discovery_cache_items": 0}), db)
    expected = (GOLDEN / f"{kind}.json").read_bytes()
    ask = ANSWERS[kind]
    with camera_reads(db) as built:
        first = normalised(ask(cached))
    with camera_reads(db) as kept:
        second = normalised(ask(cached))
    with camera_reads(db) as fresh_reads:
        fresh = normalised(ask(uncached.test_client()))
    assert len(built) == 1 and kept == [] and len(fresh_reads) == 1  # the second was kept
    assert first == expected
    assert second == expected
    assert fresh == expected


TRICKY: list[Any] = [
    {"b": "Cámara del jardín ñ", "a": ["porch", "\u2028", "📷"], "c": {"z": None, "y": True}},
    {"quote": 'say "hi" \\ there', "control": "\x00\x1f\t", "html": "</script><b>&amp;"},
    [],
    {},
    0,
    -1,
    2**40,
    False,
    "",
]


@pytest.mark.parametrize("debug", [False, True])
def test_an_encoded_list_is_written_as_the_app_writes_the_list(debug: bool) -> None:
    """What the JSON provider writes for an `Encoded` is what Flask writes for the list itself,
    whatever surrounds it (a requestId that looks like a marker included); in debug mode (which
    indents) the list stays as it was encoded, still one valid document."""
    import json

    from flask import Flask, jsonify

    from service.app import UntrustedJSONProvider

    app = Flask("splice")
    app.debug = debug
    app.json = UntrustedJSONProvider(app)
    envelope = {"requestId": '"' + "0" * 32 + '"', "payload": {"agentUserId": "ü", "devices": None}}
    with app.app_context():
        plain = jsonify({**envelope, "payload": {**envelope["payload"], "devices": TRICKY}})
        spliced = jsonify(
            {**envelope, "payload": {**envelope["payload"], "devices": encoded(TRICKY)}}
        )
        two = jsonify([encoded(TRICKY), {"k": encoded([])}, encoded(TRICKY)])
    assert json.loads(spliced.data) == json.loads(plain.data)
    assert json.loads(two.data) == [TRICKY, {"k": []}, TRICKY]
    if not debug:
        assert spliced.data == plain.data
        assert spliced.data.endswith(b"}\n") and spliced.mimetype == "application/json"


@pytest.mark.parametrize("kind", sorted(ANSWERS))
def test_a_kept_answer_takes_no_write_lock_to_read_and_commits_its_audit_row(
    kind: str, golden: Settings, db: Database
) -> None:
    """The token, the version (and after a change the cameras) are read in a reading
    transaction: on SQLite no BEGIN IMMEDIATE, whose write lock every writer queues for. The
    audit row is one INSERT committed by itself, there before the answer is sent."""
    from camvoice.models import AuditEvent

    http = create_app(golden, db).test_client()
    ask = ANSWERS[kind]
    ask(http)  # built, and the grant's first use written
    with statements(db) as sent:
        ask(http)
    seen = [" ".join(statement.split())[:40] for statement in sent]
    action = {"alexa_discover": "alexa.discover", "google_sync": "google.sync"}[kind]
    writes = [s for s in seen if s.startswith(("INSERT", "UPDATE", "DELETE"))]
    assert all("audit_events" in s or "used_once" in s for s in writes), seen
    if db.is_sqlite:
        assert "BEGIN IMMEDIATE" not in " ".join(seen), seen
    with db.reading() as session:
        rows = session.scalars(select(AuditEvent).where(AuditEvent.action == action)).all()
    assert len(rows) == 2 and rows[-1].detail == {
        ("endpoints" if "alexa" in kind else "devices"): 6
    }


# --- the version -----------------------------------------------------------------------------


def test_every_camera_change_in_any_session_bumps_its_owners_version(db: Database) -> None:
    registry = Registry(Outbox())
    owner = make_owner(db, "one@example.com")
    other = make_owner(db, "two@example.com")
    with db.session() as session:
        camera = registry.add(session, session.get(Account, owner), "Hall", actor="test")  # type: ignore[arg-type]
    assert (version(db, owner), version(db, other)) == (1, 0)
    with db.session() as session:
        registry.record(session, session.get(Camera, camera.id), {"name": "Hallway"}, actor="t")  # type: ignore[arg-type]
    assert version(db, owner) == 2
    with db.session() as session:  # the same value again is no change
        registry.record(session, session.get(Camera, camera.id), {"name": "Hallway"}, actor="t")  # type: ignore[arg-type]
        session.get(Camera, camera.id).room = None  # type: ignore[union-attr]
    assert version(db, owner) == 2
    with db.session() as session:  # a plain ORM write, no registry: counted all the same
        session.get(Camera, camera.id).firmware = "2.0"  # type: ignore[union-attr]
    assert version(db, owner) == 3
    with db.session() as session:  # moved to another owner: both answers change
        session.get(Camera, camera.id).owner_id = other  # type: ignore[union-attr]
    assert (version(db, owner), version(db, other)) == (4, 1)
    with db.session() as session:
        registry.remove(session, session.get(Camera, camera.id), actor="test")  # type: ignore[arg-type]
    assert (version(db, owner), version(db, other)) == (4, 2)
    with pytest.raises(RuntimeError), db.session() as session:  # rolled back: no bump either
        account = session.get(Account, other)
        assert account is not None
        account.cameras.append(Camera(name="Never"))  # owner_id only at the flush
        session.flush()
        assert registry_version(session, other) == 3  # counted in the flush's own transaction
        raise RuntimeError("abandon")
    assert version(db, other) == 2


def test_cli_and_console_changes_bump_the_version(
    db: Database, settings: Settings, cli_env: dict[str, str]
) -> None:
    owner = make_owner(db, "cli@example.com", {"Garage": {"image_encryption": True}})
    with db.reading() as session:
        garage = session.scalars(select(Camera.id).where(Camera.owner_id == owner)).one()
    before = version(db, owner)
    run_cli("cameras", "set", garage, "--name", "Carport", env=cli_env)
    assert version(db, owner) == before + 1
    run_cli("cameras", "add", "--owner", "cli@example.com", "--name", "Shed", env=cli_env)
    assert version(db, owner) == before + 2

    with LiveServer(create_app(settings, db)) as live:
        browser = Browser(live)
        browser.sign_in(browser.http.get(live.url + "/console", timeout=10), "cli@example.com",
                        PASSWORD)  # fmt: skip
        page = browser.http.get(live.url + "/console", timeout=10)
        fixed = browser.http.post(f"{live.url}/console/cameras/{garage}/fix", timeout=30,
                                  data={"csrf_token": csrf_of(page.text), "fix": "encryption",
                                        "confirm": "yes"}, allow_redirects=False)  # fmt: skip
        assert fixed.status_code == 303
    assert version(db, owner) == before + 3


# --- across instances ---------------------------------------------------------------------


def test_a_change_through_one_instance_is_answered_by_the_next_request_on_another(
    golden: Settings, db: Database
) -> None:
    a, b = create_app(golden, db), create_app(golden, db)
    for ask in ANSWERS.values():
        ask(b.test_client())  # B keeps both answers
    registry = wiring(a).registry
    registry.change(wiring(a).db, "cam_golden00000001", {"name": "Front Porch"}, actor="test")
    for ask in ANSWERS.values():
        assert "Front Porch" in names(ask(b.test_client()))
    with db.session() as session:
        registry.add(session, session.get(Account, OWNER), "Shed", actor="test")  # type: ignore[arg-type]
        registry.remove(session, session.get(Camera, "cam_golden00000002"), actor="test")  # type: ignore[arg-type]
    for ask in ANSWERS.values():
        seen = names(ask(b.test_client()))
        assert "Shed" in seen and not any("jard" in name for name in seen)


def test_events_link_is_read_fresh_though_it_is_not_a_camera(
    golden: Settings, db: Database
) -> None:
    """proactivelyReported follows the owner's AcceptGrant link, which no camera change bumps:
    it is part of the key, read in the same query as the version."""
    http = create_app(golden, db).test_client()
    assert b'"proactivelyReported":true' in alexa_discover(http)
    with db.session() as session:
        link = session.get(AlexaLink, OWNER)
        assert link is not None
        link.dead_at = link.updated_at  # what the worker records when LWA says invalid_grant
    answer = alexa_discover(http)
    assert b'"proactivelyReported":true' not in answer
    assert b'"proactivelyReported":false' in answer


def test_a_revoked_token_gets_nothing_from_a_kept_answer(golden: Settings, db: Database) -> None:
    http = create_app(golden, db).test_client()
    assert len(names(alexa_discover(http))) == 6 and len(names(google_sync(http))) == 6
    with db.session() as session:
        revoke_account(session, OWNER, "test", actor="test")
    assert names(alexa_discover(http)) == set()  # Amazon's rule: no endpoints, not an error
    refused = http.post("/google/fulfillment", headers={"Authorization": f"Bearer {TOKENS['google']}"},
                        json={"requestId": "r", "inputs": [{"intent": "action.devices.SYNC"}]})  # fmt: skip
    assert refused.status_code == 401


def test_stream_directives_read_the_camera_fresh(golden: Settings, db: Database) -> None:
    """Discovery is kept; whether a camera may stream is not: blocked after a kept Discover,
    InitializeCameraStreams is refused at once."""
    import json

    http = create_app(golden, db).test_client()
    alexa_discover(http)
    with db.session() as session:
        session.get(Camera, "cam_golden00000001").image_encryption = True  # type: ignore[union-attr]
    answer = json.loads(stream_request(http, "cam_golden00000001"))
    assert answer["event"]["header"]["name"] == "ErrorResponse"
    assert answer["event"]["payload"]["currentDeviceMode"] == "OTHER"


def stream_request(http: Any, camera_id: str) -> bytes:
    import hashlib
    import hmac
    import json
    import time
    import uuid

    from tests.discovery_golden import FORWARDER, TOKENS

    body = json.dumps({"directive": {
        "header": {"namespace": "Alexa.CameraStreamController", "name": "InitializeCameraStreams",
                   "payloadVersion": "3", "messageId": str(uuid.uuid4()), "correlationToken": "c"},
        "endpoint": {"scope": {"type": "BearerToken", "token": TOKENS["alexa"]},
                     "endpointId": camera_id},
        "payload": {"cameraStreams": [{"protocol": "RTSP", "videoCodec": "H264"}]}}}).encode()  # fmt: skip
    stamp = str(int(time.time()))
    mac = hmac.new(FORWARDER.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    answer = http.post("/alexa/smart-home", data=body,
                       headers={"X-Camvoice-Timestamp": stamp, "X-Camvoice-Signature": mac})  # fmt: skip
    assert answer.status_code == 200
    return bytes(answer.data)


# --- the table itself ------------------------------------------------------------------------


def listed(label: str, size: int) -> Encoded:
    return encoded([label] * size)


def test_answer_cache_keeps_the_newest_version_within_its_bound() -> None:
    cache = AnswerCache(max_items=5)
    built: list[str] = []

    def build(label: str, size: int) -> Callable[[], Encoded]:
        return lambda: built.append(label) or listed(label, size)  # type: ignore[func-returns-value]

    assert cache.answer("a", 1, build("a1", 2)).text == '["a1","a1"]'
    assert cache.answer("a", 1, build("again", 2)).text == '["a1","a1"]'  # kept
    assert cache.answer("a", 2, build("a2", 2)).text == '["a2","a2"]'  # a new version: built
    cache.answer("a", 1, build("late a1", 2))  # a slow request's older list
    assert cache.answer("a", 2, build("again", 2)).text == '["a2","a2"]'  # the newer one stayed
    cache.answer("b", 1, build("b1", 3))
    cache.answer("c", 1, build("c1", 1))  # 2 + 3 + 1 > 5: the least recently used goes
    assert "a" not in cache.entries and set(cache.entries) == {"b", "c"} and cache.items == 4
    cache.answer("big", 1, build("big", 6))  # larger than the bound: never kept
    cache.answer("gone", None, build("none", 1))  # no account: never kept
    assert set(cache.entries) == {"b", "c"}
    assert built == ["a1", "a2", "late a1", "b1", "c1", "big", "none"]


def test_no_cache_when_the_bound_is_zero() -> None:
    cache = AnswerCache(max_items=0)
    built: list[str] = []
    for _ in range(2):
        cache.answer("a", 1, lambda: built.append("a") or listed("a", 1))  # type: ignore[func-returns-value]
    assert cache.entries == {} and built == ["a", "a"]


def test_requests_for_one_answer_while_it_is_built_wait_for_that_build() -> None:
    """Threads that ask for a key and version being built get that build's answer: one build
    in memory at a time, not one per thread."""
    cache = AnswerCache(max_items=100)
    building, release = threading.Event(), threading.Event()
    builds: list[str] = []

    def build() -> Encoded:
        builds.append("built")
        building.set()
        assert release.wait(30), "never released"
        return listed("x", 3)

    answers: list[Encoded] = []
    first = threading.Thread(target=lambda: answers.append(cache.answer("k", 1, build)))
    first.start()
    assert building.wait(30)
    waiters = [threading.Thread(target=lambda: answers.append(cache.answer("k", 1, build)))
               for _ in range(3)]  # fmt: skip
    for waiter in waiters:
        waiter.start()
    assert until(lambda: all(waiting(waiter) for waiter in waiters), 30), (
        "the waiters never reached the flight"  # each is in Event.wait
    )
    release.set()
    for thread in (first, *waiters):
        thread.join(30)
    assert builds == ["built"] and len(answers) == 4
    assert all(answer is answers[0] for answer in answers)
    assert cache.flights == {}


def test_a_failed_build_is_tried_again_by_a_waiting_request() -> None:
    cache = AnswerCache(max_items=100)
    building, release = threading.Event(), threading.Event()

    def failing() -> Encoded:
        building.set()
        assert release.wait(30), "never released"
        raise RuntimeError("database gone")

    failed: list[BaseException] = []

    def first() -> None:
        try:
            cache.answer("k", 1, failing)
        except RuntimeError as exc:
            failed.append(exc)

    builder = threading.Thread(target=first)
    builder.start()
    assert building.wait(30)
    answers: list[Encoded] = []
    waiter = threading.Thread(
        target=lambda: answers.append(cache.answer("k", 1, lambda: listed("y", 1)))
    )
    waiter.start()
    assert until(lambda: waiting(waiter), 30), "the waiter never reached the flight"
    release.set()
    builder.join(30)
    waiter.join(30)
    assert len(failed) == 1 and [a.text for a in answers] == ['["y"]']
    assert cache.flights == {} and cache.entries["k"][0] == 1


def waiting(thread: threading.Thread) -> bool:
    """Whether `thread` is blocked in threading.Event.wait (its innermost frame is in
    threading.py's Condition.wait)."""
    frame = sys._current_frames().get(thread.ident or -1)
    return (
        frame is not None
        and frame.f_code.co_name == "wait"
        and "threading" in frame.f_code.co_filename
    )
