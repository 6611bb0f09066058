"""An owner leaving with their data (issue 18): `camvoice accounts delete|export` through the
installed console script, the console's "Delete my account" and download over real HTTP, the
farewell events checked at the fake Amazon and Google after a worker's drain, and the activity
page's views-per-day chart. SQLite and PostgreSQL alike."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import stat
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from pydantic import SecretStr
from sqlalchemy import select, update

from backends.ezviz.models import EzvizLink
from camvoice import outbox
from camvoice.db import Database
from camvoice.models import Account, AuditEvent, Camera, OutboxEvent, utcnow
from camvoice.owner_data import tombstone_ref
from camvoice.sessions import SignInSession
from camvoice.settings import Settings
from console import charts
from oauth.models import Grant, Token, digest
from service.app import create_app
from skills.events import AlexaLink, accept_grant
from tests.conftest import LiveServer, run_cli, statements, wiring
from tests.fake_amazon import CLIENT_ID, CLIENT_SECRET, FakeAmazon
from tests.fake_google import FakeGoogle
from tests.oauth_support import (
    ALEXA_URIS,
    GOOGLE_URIS,
    PASSWORD,
    Browser,
    csrf_of,
    link,
    make_owner,
    register,
    token_request,
)

EMAIL = "leaving@example.com"
RTSP_SECRET = "cam-pass-Zq81"
EZVIZ_SECRET = "ezviz-app-secret-Kx"
FORWARDER_SECRET = "forwarder-secret-for-owner-data-tests"
ROOT = Path(__file__).resolve().parents[1]
# The console's CSP as it was before the chart: it must not change for it.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self' blob:; connect-src 'self'; worker-src 'self' blob:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def load_forwarder() -> Any:
    """The Lambda forwarder Alexa's directives really come through (deploy/lambda)."""
    spec = importlib.util.spec_from_file_location(
        "owner_data_forwarder", ROOT / "deploy/lambda/lambda_function.py"
    )
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


forwarder = load_forwarder()


@pytest.fixture
def amazon() -> Iterator[FakeAmazon]:
    fake = FakeAmazon()
    yield fake
    fake.close()


@pytest.fixture
def google() -> Iterator[FakeGoogle]:
    fake = FakeGoogle()
    yield fake
    fake.close()


@pytest.fixture
def configured(
    settings: Settings, tmp_path: Path, amazon: FakeAmazon, google: FakeGoogle
) -> Settings:
    """Alexa events and HomeGraph pointed at the fakes; the forwarder's secret set."""
    return settings.model_copy(update={
        "alexa_client_id": CLIENT_ID, "alexa_client_secret": SecretStr(CLIENT_SECRET),
        "alexa_lwa_token_url": amazon.url + "/auth/o2/token",
        "alexa_event_gateway_url": amazon.url + "/v3/events",
        "alexa_forwarder_secret": SecretStr(FORWARDER_SECRET),
        "google_homegraph_key": google.key_file(tmp_path), "google_homegraph_url": google.url,
        "media_dir": tmp_path / "media",
    })  # fmt: skip


@pytest.fixture
def env(cli_env: dict[str, str], configured: Settings) -> dict[str, str]:
    """The CLI configured as the app and its worker are (the same subscribers)."""
    return {
        **cli_env,
        "CAMVOICE_ALEXA_CLIENT_ID": CLIENT_ID,
        "CAMVOICE_ALEXA_CLIENT_SECRET": CLIENT_SECRET,
        "CAMVOICE_ALEXA_LWA_TOKEN_URL": configured.alexa_lwa_token_url,
        "CAMVOICE_ALEXA_EVENT_GATEWAY_URL": configured.alexa_event_gateway_url,
        "CAMVOICE_GOOGLE_HOMEGRAPH_KEY": str(configured.google_homegraph_key),
        "CAMVOICE_GOOGLE_HOMEGRAPH_URL": configured.google_homegraph_url,
    }


@pytest.fixture
def live(configured: Settings, db: Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    app = create_app(configured, db)
    with LiveServer(app) as server:
        monkeypatch.setenv("CAMVOICE_ENDPOINT", server.url + "/alexa/smart-home")
        monkeypatch.setenv("CAMVOICE_FORWARDER_SECRET", FORWARDER_SECRET)
        yield server
    app.extensions["camvoice.relays"].shutdown()


class Owner:
    """An owner with everything there is to erase: two cameras (one with RTSP credentials),
    an EZVIZ link, Alexa and Google links with their tokens, AcceptGrant, a console session."""

    def __init__(self, live: LiveServer, db: Database, amazon: FakeAmazon) -> None:
        services = wiring(live.app)
        self.id = make_owner(db, EMAIL, {
            "Front Door": {"source": f"rtsp://admin:{RTSP_SECRET}@127.0.0.1:8554/front"},
            "Garage": {"source": "demo"},
        }, services.registry)  # fmt: skip
        with db.session() as session:
            self.cameras = sorted(session.scalars(select(Camera.id)))
            sealed = services.settings.sealer().encrypt(EZVIZ_SECRET.encode()).decode()
            session.add(EzvizLink(account_id=self.id, app_key="ezviz-app-key-1",
                                  app_secret=sealed, failures=0))  # fmt: skip
        self.alexa_client = register(db, "Amazon Alexa", ALEXA_URIS, "alexa")
        self.google_client = register(db, "Google Home", GOOGLE_URIS, "google")
        _, self.alexa = link(live, self.alexa_client, EMAIL, "client_secret_post")
        _, self.google = link(live, self.google_client, EMAIL, "client_secret_post")
        accept_grant(services, self.id, amazon.new_code())
        self.browser = Browser(live)
        self.browser.sign_in(self.browser.open(live.url + "/oauth/login?next=/console"), EMAIL)
        assert self.browser.open(live.url + "/console").status_code == 200
        drain(live)  # the cameras' own events: the fakes start empty below
        amazon.events.clear()
        self.tokens = [self.alexa["access_token"], self.alexa["refresh_token"],
                       self.google["access_token"], self.google["refresh_token"]]  # fmt: skip


@pytest.fixture
def owner(live: LiveServer, db: Database, amazon: FakeAmazon, google: FakeGoogle) -> Owner:
    made = Owner(live, db, amazon)
    google.calls.clear()
    return made


def drain(live: LiveServer) -> None:
    """What `camvoice worker` does, until nothing is due."""
    services = wiring(live.app)
    while outbox.drain_once(services.db, services.outbox, max_attempts=3):
        pass


def discover(token: str) -> dict[str, Any]:
    directive = {"directive": {
        "header": {"namespace": "Alexa.Discovery", "name": "Discover", "payloadVersion": "3",
                   "messageId": str(uuid.uuid4())},
        "payload": {"scope": {"type": "BearerToken", "token": token}},
    }}  # fmt: skip
    return forwarder.lambda_handler(directive, None)  # type: ignore[no-any-return]


def report_state(token: str, endpoint_id: str) -> dict[str, Any]:
    directive = {"directive": {
        "header": {"namespace": "Alexa", "name": "ReportState", "payloadVersion": "3",
                   "messageId": str(uuid.uuid4()), "correlationToken": "corr-1"},
        "endpoint": {"scope": {"type": "BearerToken", "token": token},
                     "endpointId": endpoint_id, "cookie": {}},
        "payload": {},
    }}  # fmt: skip
    return forwarder.lambda_handler(directive, None)  # type: ignore[no-any-return]


def sync(live: LiveServer, token: str) -> requests.Response:
    body = {"requestId": str(uuid.uuid4()), "inputs": [{"intent": "action.devices.SYNC"}]}
    return live.post("/google/fulfillment", json=body,
                     headers={"Authorization": f"Bearer {token}"})  # fmt: skip


def everything_of(db: Database, account_id: str) -> dict[str, int]:
    """Rows left anywhere that belong to the account."""
    with db.reading() as session:
        return {
            "accounts": len(session.scalars(select(Account.id).where(Account.id == account_id)).all()),
            "cameras": len(session.scalars(select(Camera.id)).all()),
            "grants": len(session.scalars(select(Grant.id)).all()),
            "tokens": len(session.scalars(select(Token.id)).all()),
            "sessions": len(session.scalars(select(SignInSession.id)).all()),
            "alexa_links": len(session.scalars(select(AlexaLink.account_id)).all()),
            "ezviz_links": len(session.scalars(select(EzvizLink.account_id)).all()),
            "audit": len(session.scalars(
                select(AuditEvent.id).where(AuditEvent.account_id == account_id)).all()),
        }  # fmt: skip


def dump(db: Database) -> str:
    """Every audit row and outbox payload as text, to look for what must not be there."""
    with db.reading() as session:
        audit_rows = [(e.action, e.actor, e.account_id, e.detail)
                      for e in session.scalars(select(AuditEvent))]  # fmt: skip
        payloads = [e.payload for e in session.scalars(select(OutboxEvent))]
    return json.dumps([audit_rows, payloads], default=str)


# --- deletion ---------------------------------------------------------------------------------


def test_cli_delete_revokes_everything_tells_the_assistants_and_erases(
    live: LiveServer, db: Database, env: dict[str, str], owner: Owner, amazon: FakeAmazon,
    google: FakeGoogle, configured: Settings,
) -> None:  # fmt: skip
    assert len(discover(owner.alexa["access_token"])["event"]["payload"]["endpoints"]) == 2
    assert report_state(owner.alexa["access_token"], owner.cameras[0])["event"]["header"][
        "name"] == "StateReport"  # fmt: skip
    assert sync(live, owner.google["access_token"]).status_code == 200
    with db.reading() as session:
        sealed_alexa = session.get(AlexaLink, owner.id).refresh_token  # type: ignore[union-attr]

    result = run_cli("accounts", "delete", EMAIL, "--yes", env=env)
    assert "deleted leaving@example.com: 2 cameras, 2 links" in result.stdout

    # At once, before any worker ran: every credential is dead on the very next request.
    answer = report_state(owner.alexa["access_token"], owner.cameras[0])["event"]
    assert (answer["header"]["name"], answer["payload"]["type"]) == (
        "ErrorResponse", "INVALID_AUTHORIZATION_CREDENTIAL")  # fmt: skip
    assert discover(owner.alexa["access_token"])["event"]["payload"]["endpoints"] == []
    refused = sync(live, owner.google["access_token"])
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
    refresh = token_request(live, owner.google_client, grant_type="refresh_token",
                            refresh_token=owner.google["refresh_token"])  # fmt: skip
    assert (refresh.status_code, refresh.json()["error"]) == (400, "invalid_grant")
    assert owner.browser.open(live.url + "/console").status_code in (302, 303)
    gone = {"accounts": 0, "cameras": 0, "grants": 0, "tokens": 0, "sessions": 0,
            "alexa_links": 0, "ezviz_links": 0, "audit": 0}  # fmt: skip
    assert everything_of(db, owner.id) == gone
    assert json.loads(run_cli("cameras", "list", "--json", env=env).stdout) == []
    assert json.loads(run_cli("accounts", "list", "--json", env=env).stdout) == []

    # The tombstone: no email, no account id, a reference only the secret key reproduces.
    with db.reading() as session:
        (stone,) = session.scalars(select(AuditEvent)).all()
    assert (stone.action, stone.account_id, stone.actor) == ("account.deleted", None, "operator")
    assert stone.detail["ref"] == tombstone_ref(configured.key(), EMAIL)
    assert EMAIL not in dump(db) and "leaving" not in dump(db)

    # The farewell events wait in the outbox; Alexa's alone carries its sealed tokens.
    with db.reading() as session:
        rows = {e.subscriber: e.payload for e in session.scalars(
            select(OutboxEvent).where(OutboxEvent.topic == "account.deleted"))}  # fmt: skip
    assert set(rows) == {"alexa.events", "google.homegraph"}
    assert rows["alexa.events"]["sealed"]["refresh_token"] == sealed_alexa
    assert "sealed" not in rows["google.homegraph"]

    drain(live)  # the worker, after the account is gone
    reports = [m["event"] for m in amazon.events]
    assert [(r["header"]["namespace"], r["header"]["name"]) for r in reports] == [
        ("Alexa.Discovery", "DeleteReport")]  # fmt: skip
    assert sorted(e["endpointId"] for e in reports[0]["payload"]["endpoints"]) == owner.cameras
    assert amazon.problems == []
    assert google.calls == [("/v1/devices:requestSync", {"agentUserId": owner.id, "async": False})]
    with db.reading() as session:
        delivered = session.scalars(select(OutboxEvent).where(
            OutboxEvent.topic == "account.deleted")).all()  # fmt: skip
    assert {e.status for e in delivered} == {"delivered"}
    assert all("sealed" not in e.payload for e in delivered)  # no copy outlives the delivery
    assert sealed_alexa not in dump(db)


def test_cli_delete_needs_yes_and_a_known_email(env: dict[str, str], db: Database) -> None:
    make_owner(db, EMAIL, {"Porch": {"source": "demo"}})
    refused = run_cli("accounts", "delete", EMAIL, env=env, check=False)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert len(json.loads(run_cli("cameras", "list", "--json", env=env).stdout)) == 1
    unknown = run_cli("accounts", "delete", "ghost@example.com", "--yes", env=env, check=False)
    assert (unknown.returncode, unknown.stderr.strip()) == (
        2,
        "error: no account ghost@example.com",
    )
    assert "Traceback" not in refused.stderr + unknown.stderr


def test_console_delete_asks_the_password_again_and_works_with_expired_alexa_tokens(
    live: LiveServer, db: Database, owner: Owner, amazon: FakeAmazon, google: FakeGoogle
) -> None:
    browser = owner.browser
    page = browser.open(live.url + "/console/account")
    assert page.status_code == 200 and "Delete my account" in page.text
    assert page.headers["Content-Security-Policy"] == CSP
    form = {"csrf_token": csrf_of(page.text), "password": PASSWORD}
    # Without the form's token, or with a wrong password: refused, nothing deleted.
    no_csrf = browser.http.post(live.url + "/console/account/delete",
                                data={"password": PASSWORD}, timeout=10)  # fmt: skip
    assert no_csrf.status_code == 400
    wrong = browser.http.post(live.url + "/console/account/delete",
                              data={**form, "password": "not the password"}, timeout=10)  # fmt: skip
    assert wrong.status_code == 400 and "nothing was deleted" in wrong.text
    assert everything_of(db, owner.id)["cameras"] == 2
    # The Alexa tokens have run out by the time the worker sends: it refreshes them at LWA.
    with db.session() as session:
        session.execute(update(AlexaLink).values(expires_at=utcnow() - timedelta(hours=1)))
    amazon.expire_all_access_tokens()

    done = browser.http.post(live.url + "/console/account/delete", data=form, timeout=10,
                             allow_redirects=False)  # fmt: skip
    assert done.status_code == 200 and 'id="deleted"' in done.text
    assert "camvoice_session=;" in done.headers["Set-Cookie"]
    assert everything_of(db, owner.id)["accounts"] == 0
    again = Browser(live)
    assert (
        again.sign_in(again.open(live.url + "/oauth/login?next=/console"), EMAIL).status_code == 401
    )
    with db.reading() as session:
        (stone,) = session.scalars(select(AuditEvent)).all()
    assert (stone.action, stone.actor) == ("account.deleted", "owner")

    lwa_before = len(amazon.lwa_calls)
    drain(live)
    assert [c["grant_type"] for c in amazon.lwa_calls[lwa_before:]] == ["refresh_token"]
    assert [m["event"]["header"]["name"] for m in amazon.events] == ["DeleteReport"]
    assert [path for path, _ in google.calls] == ["/v1/devices:requestSync"]


def test_no_farewell_for_assistants_never_linked(
    live: LiveServer, db: Database, env: dict[str, str], amazon: FakeAmazon, google: FakeGoogle
) -> None:
    """An owner without AcceptGrant or a Google link: nothing is queued, nothing is sent."""
    make_owner(db, EMAIL, {"Porch": {"source": "demo"}}, wiring(live.app).registry)
    drain(live)
    run_cli("accounts", "delete", EMAIL, "--yes", env=env)
    with db.reading() as session:
        topics = session.scalars(select(OutboxEvent.topic)).all()
    assert "account.deleted" not in topics
    drain(live)
    assert amazon.events == [] and google.calls == []


# --- export -----------------------------------------------------------------------------------


def use_both_links(live: LiveServer, owner: Owner) -> None:
    """A first use of each link's token, so each has a "last used" to export."""
    discover(owner.alexa["access_token"])
    assert sync(live, owner.google["access_token"]).status_code == 200


def secrets_of(db: Database, owner: Owner) -> list[str]:
    """Every secret, token, hash and sealed value the export must not hold."""
    with db.reading() as session:
        account = session.get(Account, owner.id)
        cameras = session.scalars(select(Camera)).all()
        alexa = session.get(AlexaLink, owner.id)
        ezviz = session.get(EzvizLink, owner.id)
        hashes = session.scalars(select(Token.token_hash)).all()
        assert account is not None and alexa is not None and ezviz is not None
        sealed = [c.source_secret for c in cameras if c.source_secret]
        assert sealed, "the RTSP credentials should be sealed"
        return [
            PASSWORD, RTSP_SECRET, EZVIZ_SECRET, account.password_hash, *owner.tokens,
            *[digest(t) for t in owner.tokens], *hashes, *sealed, alexa.access_token,
            alexa.refresh_token, ezviz.app_secret, FORWARDER_SECRET, CLIENT_SECRET,
        ]  # fmt: skip


def check_export(data: dict[str, Any], text: str, owner: Owner, secrets: list[str]) -> None:
    assert data["account"]["email"] == EMAIL and "password_hash" not in data["account"]
    assert sorted(c["id"] for c in data["cameras"]) == owner.cameras
    front = next(c for c in data["cameras"] if c["name"] == "Front Door")
    assert front["source"] == "rtsp://***@127.0.0.1:8554/front"
    assert {(g["client"], g["assistant"]) for g in data["links"]} == {
        ("Amazon Alexa", "alexa"), ("Google Home", "google")}  # fmt: skip
    assert all(g["created_at"] and g["last_used_at"] for g in data["links"])
    assert data["camera_cloud"]["app_key"] == "ezviz-app-key-1"
    assert {"camera.added", "account.linked"} <= {e["action"] for e in data["audit"]}
    leaked = [s for s in secrets if s in text]
    assert leaked == []
    assert not re.search(r"gAAAAA|\$argon2|Atz[ar]\|", text)  # Fernet, argon2, LWA token shapes


def test_cli_export_to_stdout_and_to_a_new_0600_file(
    live: LiveServer, db: Database, env: dict[str, str], owner: Owner, tmp_path: Path
) -> None:
    use_both_links(live, owner)
    secrets = secrets_of(db, owner)
    shown = run_cli("accounts", "export", EMAIL, env=env).stdout
    check_export(json.loads(shown), shown, owner, secrets)

    target = tmp_path / "export.json"
    run_cli("accounts", "export", EMAIL, "--output", str(target), env=env)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert json.loads(target.read_text())["account"]["id"] == owner.id
    again = run_cli("accounts", "export", EMAIL, "--output", str(target), env=env, check=False)
    assert again.returncode == 2 and "cannot create" in again.stderr  # never overwritten
    unknown = run_cli("accounts", "export", "ghost@example.com", env=env, check=False)
    assert unknown.returncode == 2 and "no account" in unknown.stderr


def test_console_download_needs_sign_in_and_holds_no_secret(
    live: LiveServer, db: Database, owner: Owner
) -> None:
    use_both_links(live, owner)
    assert requests.get(live.url + "/console/account/export", timeout=10,
                        allow_redirects=False).status_code in (302, 303)  # fmt: skip
    download = owner.browser.open(live.url + "/console/account/export")
    assert download.status_code == 200
    assert download.headers["Content-Type"].startswith("application/json")
    assert download.headers["Content-Disposition"] == 'attachment; filename="camvoice-export.json"'
    assert download.headers["Cache-Control"] == "no-store"
    check_export(download.json(), download.text, owner, secrets_of(db, owner))


# --- the activity chart -----------------------------------------------------------------------


def test_activity_chart_draws_views_per_day_from_one_query(live: LiveServer, db: Database) -> None:
    registry = wiring(live.app).registry
    owner_id = make_owner(db, EMAIL, {"Porch": {"source": "demo"}, "Attic": {"source": "demo"},
                                      "Shed": {"source": "demo"}}, registry)  # fmt: skip
    other = make_owner(db, "other@example.com", {"Elsewhere": {"source": "demo"}}, registry)
    with db.session() as session:
        ids = {c.name: c.id for c in session.scalars(select(Camera))}
    now = utcnow().replace(hour=12, minute=0)  # midday: a day ago is yesterday in UTC too
    views = [("Porch", 0)] * 6 + [("Porch", 4)] * 2 + [("Attic", 1)] * 3 + [("Attic", 29)]
    with db.session() as session:
        for name, days_ago in views:
            session.add(AuditEvent(action="stream.requested", actor="alexa", account_id=owner_id,
                                   camera_id=ids[name], at=now - timedelta(days=days_ago)))  # fmt: skip
        # Not views of this owner's cameras in the last 30 days: never counted.
        session.add(AuditEvent(action="stream.requested", actor="alexa", account_id=owner_id,
                               camera_id=ids["Porch"], at=now - timedelta(days=31)))  # fmt: skip
        session.add(AuditEvent(action="stream.denied", actor="alexa", account_id=owner_id,
                               camera_id=ids["Porch"], at=now))  # fmt: skip
        session.add(AuditEvent(action="stream.requested", actor="google", account_id=other,
                               camera_id=ids["Elsewhere"], at=now))  # fmt: skip
    browser = Browser(live)
    browser.sign_in(browser.open(live.url + "/oauth/login?next=/console/activity"), EMAIL)
    page = browser.open(live.url + "/console/activity")
    assert page.status_code == 200
    assert page.headers["Content-Security-Policy"] == CSP
    assert " style=" not in page.text and "<script>" not in page.text.replace(" ", "")

    drawn = chart_of(page.text)
    assert list(drawn) == [ids["Attic"], ids["Porch"], ids["Shed"]]  # by name, with no views too
    assert all(len(days) == charts.DAYS for days in drawn.values())
    today = now.date()

    def expected(counts: dict[int, int]) -> list[tuple[str, int, float]]:
        peak = 6  # the busiest day of any camera: Porch today
        days = [today - timedelta(days=charts.DAYS - 1 - i) for i in range(charts.DAYS)]
        rows = []
        for day in days:
            n = counts.get((today - day).days, 0)
            rows.append((day.isoformat(), n, round(charts.HEIGHT * n / peak, 1)))
        return rows

    assert [(d, n, h) for d, n, h, _ in drawn[ids["Porch"]]] == expected({0: 6, 4: 2})
    assert [(d, n, h) for d, n, h, _ in drawn[ids["Attic"]]] == expected({1: 3, 29: 1})
    assert [(d, n, h) for d, n, h, _ in drawn[ids["Shed"]]] == expected({})
    assert all(title == f"{d}: {n} views" for d, n, _, title in drawn[ids["Porch"]])
    assert ">Porch: 8 in 30 days<" in page.text

    # One aggregated query however many cameras: GROUP BY camera and day.
    with statements(db) as seen, db.reading() as session:
        charts.view_charts(session, owner_id, {ids["Porch"]: "Porch", ids["Attic"]: "Attic",
                                               ids["Shed"]: "Shed"}, today)  # fmt: skip
    selects = [s for s in seen if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 1 and "GROUP BY" in selects[0].upper()


DAY = re.compile(
    r'<g class="day" data-day="([0-9-]+)" data-views="(\d+)">\s*<title>([^<]*)</title>\s*'
    r'<rect class="slot"[^>]*/>\s*<rect class="bar" x="\d+" y="([0-9.]+)" width="\d+" '
    r'height="([0-9.]+)"/>'
)


def chart_of(html: str) -> dict[str, list[tuple[str, int, float, str]]]:
    """Each figure's bars as drawn: (day, views, bar height, title), checked against y."""
    figures = re.findall(r'<figure class="views" data-camera="([^"]+)">(.*?)</figure>', html, re.S)
    drawn = {}
    for camera, svg in figures:
        bars = []
        for day, views, title, y, height in DAY.findall(svg):
            assert float(y) == pytest.approx(charts.HEIGHT - float(height), abs=0.11)
            bars.append((day, int(views), float(height), title))
        drawn[camera] = bars
    return drawn


# --- the outbox's part in it ------------------------------------------------------------------


def test_a_subscribers_sealed_part_reaches_it_alone_and_goes_when_dead(db: Database) -> None:
    """publish_to: one row per named subscriber, none for a name not subscribed; a sealed part
    is dropped from the row once the event is dead, as once delivered (the deletion test)."""
    box = outbox.Outbox()
    seen: list[dict[str, Any]] = []

    def refused(topic: str, payload: dict[str, Any]) -> None:
        seen.append(payload)
        raise RuntimeError("gateway answered 400")

    box.subscribe("account.deleted", "alexa.events", refused)
    box.subscribe("account.deleted", "google.homegraph", lambda t, p: seen.append(p))
    with db.session() as session:
        written = box.publish_to(session, "account.deleted", {
            "alexa.events": {"account_id": "acc_1", "sealed": {"refresh_token": "gAAAAsealed"}},
            "google.homegraph": {"account_id": "acc_1"},
            "not.subscribed": {"account_id": "acc_1"},
        })  # fmt: skip
    assert written == 2
    while outbox.drain_once(db, box, max_attempts=1):
        pass
    assert {"account_id": "acc_1", "sealed": {"refresh_token": "gAAAAsealed"}} in seen
    with db.reading() as session:
        rows = {e.subscriber: (e.status, e.payload) for e in session.scalars(select(OutboxEvent))}
    assert rows == {"alexa.events": ("dead", {"account_id": "acc_1"}),
                    "google.homegraph": ("delivered", {"account_id": "acc_1"})}  # fmt: skip


def test_console_delete_counts_against_the_sign_in_limits(settings: Settings, db: Database) -> None:
    """Guessing the password on the delete form is no way around the sign-in throttle: after
    CAMVOICE_LOGIN_MAX_FAILURES_ACCOUNT_ADDRESS wrong tries, even the right one waits (429)."""
    app = create_app(settings.model_copy(update={"login_max_failures_account_address": 2}), db)
    make_owner(db, EMAIL, {"Porch": {"source": "demo"}})
    with LiveServer(app) as live:
        browser = Browser(live)
        browser.sign_in(browser.open(live.url + "/oauth/login?next=/console"), EMAIL)
        form = {"csrf_token": csrf_of(browser.open(live.url + "/console/account").text)}
        url = live.url + "/console/account/delete"
        for _ in range(2):
            wrong = browser.http.post(url, data={**form, "password": "guess"}, timeout=10)
            assert wrong.status_code == 400
        held = browser.http.post(url, data={**form, "password": PASSWORD}, timeout=10)
        assert held.status_code == 429 and int(held.headers["Retry-After"]) > 0
        assert "Too many attempts" in held.text
    with db.reading() as session:
        assert session.scalars(select(Account.email)).all() == [EMAIL]
