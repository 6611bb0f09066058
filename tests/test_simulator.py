"""The voice simulator's credentials stay apart from real links: short-lived, never listed as a
link (console, `clients list`, HomeGraph's "is Google linked"), and cleaned up."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import pytest
import requests
from pydantic import SecretStr
from sqlalchemy import select, update

from camvoice.cameras import Registry
from camvoice.db import Database
from camvoice.models import Camera
from camvoice.outbox import Outbox
from camvoice.settings import Settings
from oauth.models import Grant, OAuthClient, Token
from oauth.tokens import SIMULATOR_TOKEN_TTL, linked_since, live_links
from service.app import create_app
from service.demo import DEMO_EMAIL, DEMO_PASSWORD, seed
from tests.conftest import LiveServer, run_cli
from tests.oauth_support import Browser, csrf_of, make_owner


def say(browser: Browser, assistant: str, utterance: str) -> str:
    page = browser.open(browser.live.url + "/simulator")
    answer = browser.http.post(
        browser.live.url + "/simulator",
        data={"csrf_token": csrf_of(page.text), "assistant": assistant, "utterance": utterance},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text[:300]
    return answer.text


def test_simulator_tokens_are_short_lived_unlisted_and_cleaned_up(
    live: LiveServer, db: Database, cli_env: dict[str, str]
) -> None:
    with db.session() as session:
        account_id = seed(session, Registry(Outbox())).id
    browser = Browser(live)
    browser.sign_in(browser.open(live.url + "/oauth/login"), DEMO_EMAIL, DEMO_PASSWORD)
    assert "cameraStreamAccessUrl" in say(browser, "google", "show the front door camera on the TV")

    with db.session() as session:
        [client] = session.scalars(select(OAuthClient)).all()
        [token] = session.scalars(select(Token)).all()
        assert client.simulator and client.assistant == "google"
        lifetime = token.expires_at - token.issued_at
        assert lifetime <= timedelta(seconds=SIMULATOR_TOKEN_TTL)
        # Not a link: no "Linked assistants" row, and no reason to call HomeGraph for the owner.
        assert live_links(session, account_id) == []
        assert linked_since(session, account_id, "google") is None
    links_page = browser.open(live.url + "/console/links")
    assert "camvoice simulator" not in links_page.text
    listed = json.loads(run_cli("clients", "list", "--json", env=cli_env).stdout)
    assert listed == []
    # Nobody can link through the simulator's client: to the OAuth server it does not exist.
    page = browser.http.get(live.url + "/oauth/authorize", params={
        "response_type": "code", "client_id": client.client_id, "scope": "cameras",
        "redirect_uri": client.redirect_uris[0], "state": "s",
    }, timeout=10, allow_redirects=False)  # fmt: skip
    assert page.status_code == 400 and "invalid_client" in page.text

    # An expired simulator token is deleted by the next utterance, not kept forever.
    with db.session() as session:
        session.execute(update(Token).values(expires_at=token.issued_at - timedelta(seconds=1)))
    say(browser, "google", "show the front door camera on the TV")
    with db.session() as session:
        tokens = session.scalars(select(Token)).all()
        assert len(tokens) == 1 and tokens[0].token_hash != token.token_hash
        assert len(session.scalars(select(Grant)).all()) == 1  # one grant, reused


@pytest.fixture
def signed(settings: Settings, db: Database) -> Iterator[LiveServer]:
    """The app with a forwarder secret, so the simulator's directives are signed and heard."""
    configured = settings.model_copy(
        update={"alexa_forwarder_secret": SecretStr("sim-secret-0123456789")}
    )
    with LiveServer(create_app(configured, db)) as server:
        yield server


def test_simulator_without_a_browser_offer(signed: LiveServer, db: Database) -> None:
    """With no script (no offer in the form) the Alexa path is an Echo's RTSP one,
    InitializeCameraStreams; an offer too long to be one is refused, not sent."""
    with db.session() as session:
        seed(session, Registry(Outbox()))
    browser = Browser(signed)
    browser.sign_in(browser.open(signed.url + "/oauth/login"), DEMO_EMAIL, DEMO_PASSWORD)
    page = say(browser, "alexa_smart_home", "Alexa, show the front door")
    assert "InitializeCameraStreams" in page and "InitiateSessionWithOffer" not in page
    assert "HTTP 401" not in page  # signed as the forwarder signs, so the handler answered
    form = browser.open(signed.url + "/simulator")
    answer = browser.http.post(signed.url + "/simulator", data={
        "csrf_token": csrf_of(form.text), "assistant": "alexa_smart_home",
        "utterance": "show the front door", "offer": "v=0\r\n" + "a=x\r\n" * 20_000,
    }, timeout=30)  # fmt: skip
    assert answer.status_code == 400


def test_simulated_echo_session_events_are_checked(signed: LiveServer, db: Database) -> None:
    """POST /simulator/session speaks for the owner's own simulated Echo Show only: another
    owner's camera is refused by Alexa's handler, bad fields and a missing CSRF token are 400,
    and nobody signed out gets past the sign-in page."""
    make_owner(db, "other@example.com", {"Shed": {}})
    with db.session() as session:
        seed(session, Registry(Outbox()))
        shed = session.scalars(select(Camera).where(Camera.name == "Shed")).one().id
        front = session.scalars(select(Camera).where(Camera.name == "Front Door")).one().id
    browser = Browser(signed)
    browser.sign_in(browser.open(signed.url + "/oauth/login"), DEMO_EMAIL, DEMO_PASSWORD)
    token = csrf_of(browser.open(signed.url + "/simulator").text)

    def post(**fields: str) -> int:
        form = {"csrf_token": token, "camera": front, "session": "s-1", "event": "disconnected"}
        return browser.http.post(signed.url + "/simulator/session", data=form | fields,
                                 timeout=30, allow_redirects=False).status_code  # fmt: skip

    assert post() == 204  # a session already gone is acknowledged, as Alexa's handler does
    assert post(camera=shed) == 400
    assert post(event="offer") == 400
    assert post(session="") == 400
    assert post(camera="x" * 100) == 400
    assert post(csrf_token="forged") == 400
    signed_out = requests.post(signed.url + "/simulator/session", timeout=10,
                               allow_redirects=False, data={"event": "connected"})  # fmt: skip
    assert signed_out.status_code in (302, 303, 400)
