"""Console sign-in sessions end (issue 15, section 3): server-side, revocable, with an idle and
an absolute lifetime, and the console's stream tickets end with them.

Real HTTP through the real app on SQLite and PostgreSQL. Lifetimes are tested by moving the
session store's clock (the wiring's time source), never by waiting.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner
from sqlalchemy import select

from camvoice.db import Database
from camvoice.models import Account, utcnow
from camvoice.services import Services
from camvoice.sessions import COOKIE, SignInSession, token_hash
from camvoice.settings import Settings
from camvoice.tickets import Audience, Protocol
from service.app import create_app
from service.cli import main
from tests.conftest import LiveServer
from tests.media_support import bare_registry, ffmpeg_pids, mint, play
from tests.oauth_support import (
    GOOGLE_URIS,
    Browser,
    csrf_of,
    link,
    make_owner,
    register,
    token_request,
)

OWNER = "owner@example.com"
NEW_PASSWORD = "a brand new password"
CUT_WITHIN = 10.0  # seconds from sign-out to the end of the owner's web streams


def sign_in(live: LiveServer, password: str | None = None) -> Browser:
    """A browser signed in to the console (the password form, as a person fills it)."""
    browser = Browser(live)
    page = browser.open(live.url + "/oauth/login?next=/console")
    console = browser.sign_in(page, OWNER, *([password] if password else []))
    assert console.status_code == 200, console.status_code
    assert console.url.endswith("/console")
    return browser


def console_of(http: requests.Session, live: LiveServer) -> int:
    """200 when the cookies open the console; 302 (to sign-in) when they do not."""
    answer = http.get(live.url + "/console", timeout=10, allow_redirects=False)
    if answer.status_code == 302:
        assert "/oauth/login" in answer.headers["Location"]
    return answer.status_code


def copy_of(browser: Browser) -> requests.Session:
    """Another machine holding a copy of every cookie the browser has now."""
    thief = requests.Session()
    for cookie in browser.http.cookies:
        thief.cookies.set(cookie.name, cookie.value)
    return thief


def sign_out(browser: Browser, live: LiveServer) -> None:
    page = browser.open(live.url + "/console")
    answer = browser.http.post(live.url + "/oauth/logout", data={"csrf_token": csrf_of(page.text)},
                               timeout=10, allow_redirects=False)  # fmt: skip
    assert answer.status_code == 303


@pytest.fixture
def owner(db: Database) -> str:
    return make_owner(db, OWNER)


def test_a_cookie_copied_before_sign_out_is_refused_after_on_every_instance(
    settings: Settings, db: Database, owner: str
) -> None:
    """Two instances share one database: a session begun on one is used and ended on the
    other, and a copy of its cookie taken before sign-out opens neither afterwards."""
    with LiveServer(create_app(settings, db)) as a, LiveServer(create_app(settings, db)) as b:
        browser = sign_in(a)
        thief = copy_of(browser)
        assert console_of(thief, b) == 200
        sign_out(browser, b)
        assert console_of(thief, a) == 302
        assert console_of(thief, b) == 302
        assert console_of(browser.http, a) == 302


def test_the_cookie_holds_a_random_token_whose_hash_alone_is_stored(
    settings: Settings, db: Database, owner: str
) -> None:
    https = settings.model_copy(update={"public_url": "https://cams.example.com"})
    with LiveServer(create_app(https, db)) as live:
        page = requests.get(live.url + "/oauth/login?next=/console", timeout=10)
        form = {"csrf_token": csrf_of(page.text), "email": OWNER, "password": "owner password 1",
                "next": "/console"}  # fmt: skip
        # The form token's cookie is Secure too: a client sends it over http only when told to.
        answer = requests.post(live.url + "/oauth/login", data=form, timeout=10,
                               cookies={"session": page.cookies["session"]},
                               allow_redirects=False)  # fmt: skip
    assert answer.status_code == 303
    cookie = next(c for c in answer.raw.headers.getlist("Set-Cookie") if c.startswith(COOKIE))
    attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "secure", "samesite"} <= attributes
    assert "SameSite=Lax" in cookie
    token = cookie.split(";")[0].split("=", 1)[1]
    assert len(token) >= 43  # 256 random bits
    with db.reading() as session:
        rows = session.scalars(select(SignInSession)).all()
    assert [r.token_hash for r in rows] == [token_hash(token)]
    assert token not in {rows[0].id, rows[0].token_hash}


def test_signing_in_starts_a_new_session(live: LiveServer, db: Database, owner: str) -> None:
    """Session fixation: a token planted in the browser before sign-in is never adopted, and
    signing in again ends the browser's previous session."""
    browser = Browser(live)
    browser.http.cookies.set(COOKIE, "planted-by-an-attacker-0123456789abcdef0123456",
                             domain="127.0.0.1", path="/")  # fmt: skip
    page = browser.open(live.url + "/oauth/login?next=/console")
    assert browser.sign_in(page, OWNER).status_code == 200
    first = browser.http.cookies.get(COOKIE)
    assert first and not first.startswith("planted")
    before = copy_of(browser)
    page = browser.open(live.url + "/oauth/login?next=/console")
    assert browser.sign_in(page, OWNER).status_code == 200
    assert browser.http.cookies.get(COOKIE) != first
    assert console_of(before, live) == 302
    assert console_of(browser.http, live) == 200


@pytest.mark.parametrize("change", ["password", "disable"])
def test_password_change_and_disable_end_every_session(
    live: LiveServer, db: Database, owner: str, cli_env: dict[str, str], change: str
) -> None:
    phone, laptop = sign_in(live), sign_in(live)
    google = register(db, "Google", GOOGLE_URIS, "google")
    _, token = link(live, google, OWNER)
    # The operator's command, run in this process (the installed script is tested elsewhere).
    args = ["password", OWNER, "--password-stdin"] if change == "password" else ["disable", OWNER]
    done = CliRunner().invoke(main, ["accounts", *args], env=cli_env, input=NEW_PASSWORD + "\n")
    assert done.exit_code == 0, done.output
    assert "3 sessions signed out" in done.output  # the linking browser signed in too
    assert console_of(phone.http, live) == 302
    assert console_of(laptop.http, live) == 302
    browser = Browser(live)
    page = browser.open(live.url + "/oauth/login?next=/console")
    assert browser.sign_in(page, OWNER).status_code == 401  # the old password, or disabled
    if change == "password":
        sign_in(live, NEW_PASSWORD)
    else:
        page = browser.open(live.url + "/oauth/login?next=/console")
        assert browser.sign_in(page, OWNER, NEW_PASSWORD).status_code == 401
        with db.reading() as session:
            assert session.get(Account, owner).disabled_at is not None  # type: ignore[union-attr]
        # A disabled account speaks for nobody: its links are revoked with it.
        assert "1 links revoked" in done.output
        sync = {"requestId": "1", "inputs": [{"intent": "action.devices.SYNC"}]}
        bearer = {"Authorization": f"Bearer {token['access_token']}"}
        answer = requests.post(
            live.url + "/google/fulfillment", json=sync, headers=bearer, timeout=10
        )
        assert answer.status_code == 401
        refresh = token_request(live, google, grant_type="refresh_token",
                                refresh_token=token["refresh_token"])  # fmt: skip
        assert refresh.status_code == 400 and refresh.json()["error"] == "invalid_grant"


class Clock:
    """The session store's time, moved by the test."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clocked(settings: Settings, db: Database, owner: str) -> Iterator[tuple[LiveServer, Clock]]:
    app = create_app(settings, db)
    clock = Clock()
    Services.of(app).sessions.clock = clock
    with LiveServer(app) as live:
        yield live, clock


def test_a_session_ends_when_idle_and_at_its_absolute_lifetime(
    clocked: tuple[LiveServer, Clock], settings: Settings
) -> None:
    live, clock = clocked
    idle = timedelta(minutes=settings.session_idle_minutes)
    lifetime = timedelta(hours=settings.session_max_hours)
    step = idle - timedelta(minutes=1)

    browser = sign_in(live)
    for _ in range(3):  # in use: each request keeps it on, past the idle limit in total
        clock.advance(seconds=step.total_seconds())
        assert console_of(browser.http, live) == 200
    clock.advance(seconds=idle.total_seconds())
    assert console_of(browser.http, live) == 302

    browser = sign_in(live)
    elapsed = timedelta()
    while elapsed + step < lifetime:  # however busy, it ends at the absolute lifetime
        clock.advance(seconds=step.total_seconds())
        elapsed += step
        assert console_of(browser.http, live) == 200, elapsed
    clock.advance(seconds=(lifetime - elapsed).total_seconds())
    assert console_of(browser.http, live) == 302


# --- the console's streams end with its session ---------------------------------------------


@pytest.fixture
def streaming(settings: Settings, db: Database, owner: str, tmp_path: Path) -> Iterator[LiveServer]:
    app = create_app(settings.model_copy(update={"media_dir": tmp_path / "media"}), db)
    with LiveServer(app) as live:
        yield live
    app.extensions["camvoice.relays"].shutdown()


def playing(url: str) -> str:
    """The playlist and one segment are admitted (200); the segment's URL."""
    playlist = play(url)  # again while the relay is starting (503), as a player does
    assert playlist.status_code == 200, playlist.text
    name = next(line for line in playlist.text.splitlines() if line.endswith(".ts"))
    segment = url.rsplit("/", 1)[0] + "/" + name
    assert requests.get(segment, timeout=10).status_code == 200
    return segment


def test_signing_out_ends_the_owners_web_streams(
    streaming: LiveServer, settings: Settings, db: Database, owner: str
) -> None:
    with db.session() as session:
        camera = bare_registry().add(session, session.get(Account, owner), "Front Door",
                                     actor="test")  # fmt: skip
    browser = sign_in(streaming)
    page = browser.open(streaming.url + f"/console/cameras/{camera.id}/live")
    found = re.search(r'data-hls="([^"]+)"', page.text)
    assert found, "no stream on the live page"
    web = streaming.url + found.group(1).replace("&amp;", "&")
    segment = playing(web)
    google = mint(settings, camera, Protocol.HLS, Audience.GOOGLE)  # no sign-in session
    google = google.replace(settings.public_url, streaming.url)
    relay = streaming.app.extensions["camvoice.relays"].folder(camera.id)
    assert len(ffmpeg_pids(relay)) == 1
    sign_out(browser, streaming)
    start = time.monotonic()
    answer = requests.get(web, timeout=10)
    assert answer.status_code == 403  # the next fetch already
    assert answer.json()["message"].endswith("signed_out")
    assert requests.get(segment, timeout=10).status_code == 403
    # Its only viewer gone, the relay stops at its next re-check, not after its idle timeout.
    while ffmpeg_pids(relay):
        assert time.monotonic() - start < CUT_WITHIN, "the relay still pulls the camera"
        time.sleep(0.1)
    print(f"relay stopped {time.monotonic() - start:.1f} s after signing out")
    playing(google)  # a stream not tied to the console session plays
