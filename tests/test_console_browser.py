"""The console and the voice simulator in a real browser: Debian's headless Chromium, driven by
Playwright for Python with that executable (no browser download).

WebRTC plays between Chromium and camvoice's engine on this machine. Chromium hides its host
addresses behind mDNS names (.local) unless told not to, and the engine cannot resolve those on a
machine without multicast DNS: the flag below makes Chromium offer its host addresses, as an Echo
Show's or Nest Hub's offers do. What "plays" means is measured in the page: frames handed to the
compositor (requestVideoFrameCallback) and frames decoded (getStats), polled with a deadline.

Skips without /usr/bin/chromium unless CAMVOICE_REQUIRE_BROWSER=1 (set by .ci/run).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from camvoice.cameras import Registry
from camvoice.db import Database
from camvoice.models import Camera
from camvoice.outbox import Outbox
from camvoice.services import Services
from camvoice.settings import Settings
from camvoice.webrtc import NoWebRTC
from service.app import create_app
from service.demo import DEMO_EMAIL, DEMO_PASSWORD, seed
from skills.smarthome import engine_session
from tests.conftest import LiveServer, wait_for, with_relay
from tests.oauth_support import streams_requested

CHROMIUM = "/usr/bin/chromium"
DOCS = Path(__file__).resolve().parents[1] / "docs"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--autoplay-policy=no-user-gesture-required",
         "--disable-features=WebRtcHideLocalIpsWithMdns"]  # fmt: skip


@pytest.fixture
def server(settings: Settings, db: Database, tmp_path: Path) -> Iterator[LiveServer]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CAMVOICE_REQUIRE_BROWSER") == "1":
            pytest.fail("Chromium missing and CAMVOICE_REQUIRE_BROWSER=1")
        pytest.skip("Debian's chromium is not installed")
    configured = with_relay(
        settings, tmp_path, alexa_forwarder_secret=SecretStr("sim-secret-0123456789")
    )
    with db.session() as session:
        seed(session, Registry(Outbox()))
    app = create_app(configured, db)
    engine = Services.of(app).webrtc
    with LiveServer(app) as live:
        yield live
    engine.shutdown()  # type: ignore[attr-defined]
    app.extensions["camvoice.relays"].shutdown()


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield chromium
        chromium.close()


def sign_in(page: Any, live: LiveServer) -> None:
    page.goto(live.url + "/console")
    page.fill("input[name=email]", DEMO_EMAIL)
    page.fill("input[name=password]", DEMO_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("#matrix")


def row(page: Any, name: str) -> Any:
    return page.locator(f"tr[data-camera='{name}']")


def eventually(page: Any, expression: str, timeout: float = 30) -> bool:
    """Poll an expression from Python (wait_for_function would eval inside our strict CSP)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if page.evaluate(expression):
            return True
        time.sleep(0.25)
    return False


def video_advances(page: Any, selector: str) -> bool:
    page.wait_for_selector(selector)
    return eventually(page, f"document.querySelector('{selector}').currentTime > 1.5")


DECODED = """el => el.camvoicePeer.getStats().then(stats => {
  let decoded = 0;
  stats.forEach(s => { if (s.type === "inbound-rtp" && s.kind === "video") decoded += s.framesDecoded; });
  return decoded;
})"""


def webrtc_renders(page: Any, selector: str, frames: int = 30) -> bool:
    """The video plays over WebRTC: `frames` frames rendered and decoded, within a deadline."""
    video = page.wait_for_selector(selector)
    return eventually(page, f"(document.querySelector('{selector}').camvoiceFrames || 0) > {frames}"
                      ) and video.evaluate(DECODED) > frames  # fmt: skip


def path_label(page: Any) -> str:
    return str(page.locator("#path").get_attribute("data-path") or "")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_console_in_a_real_browser(server: LiveServer, db: Database, browser: Any) -> None:
    page = browser.new_page(locale="en-US")
    sign_in(page, server)
    assert row(page, "Garage").locator("td.alexa li[data-code=ENCRYPTION_ON]").count() == 1
    assert row(page, "Nursery").locator("td.alexa .ready").count() == 1
    assert row(page, "Nursery").locator("td.google li[data-code=AUDIO_OFF]").count() == 1
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / "console.png"), full_page=True)

    # Garage cannot be watched yet: its live view says why, and plays nothing.
    with db.reading() as session:
        garage = session.scalars(select(Camera).where(Camera.name == "Garage")).one()
    page.goto(server.url + f"/console/cameras/{garage.id}/live")
    assert "Image Encryption is on" in page.inner_text("#reasons")
    assert page.locator("video").count() == 0
    page.goto(server.url + "/console")

    # Fix Garage: the confirmation is required, then it turns ready.
    form = page.locator("form.confirm", has_text="Garage")
    form.locator("input[name=confirm]").check()
    form.locator("button").click()
    page.wait_for_selector("#matrix")
    assert row(page, "Garage").locator("td.alexa .ready").count() == 1

    # Live view of Front Door: over WebRTC, and the frames render.
    row(page, "Front Door").locator("a").click()
    assert webrtc_renders(page, "#live")
    assert path_label(page) == "webrtc" and page.inner_text("#path") == "Live (WebRTC)"
    assert streams_requested(db) == [("web", "webrtc")]
    engine = Services.of(server.app).webrtc
    assert len(engine.sessions) == 1  # type: ignore[attr-defined]

    # Activity shows the fix; leaving the live view ended its session (the page said "end").
    page.goto(server.url + "/console/activity")
    wait_for(lambda: not engine.sessions, "the left live view's session to end", 15)  # type: ignore[attr-defined]
    assert page.locator("#activity", has_text="camera.changed").count() == 1


class EndsHeard:
    """The engine, with every end() it is asked for heard (which session, why)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.ended: list[tuple[str, str]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def end(self, session_id: str, camera_id: str, reason: str) -> bool:
        self.ended.append((session_id, reason))
        return bool(self.engine.end(session_id, camera_id, reason))


def simulate(page: Any, live: LiveServer, assistant: str, utterance: str) -> None:
    page.goto(live.url + "/simulator")
    page.select_option("select[name=assistant]", assistant)
    page.fill("input[name=utterance]", utterance)
    page.click("#simulate button")
    page.wait_for_selector("#result")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_live_view_falls_back_to_hls_when_webrtc_fails(server: LiveServer, browser: Any) -> None:
    """WebRTC refused (no engine answers this process's offers): the page plays HLS and says
    so."""
    page = browser.new_page(locale="en-US")
    sign_in(page, server)
    services = Services.of(server.app)
    services.webrtc = NoWebRTC()
    row(page, "Front Door").locator("a").click()
    assert video_advances(page, "#live")
    assert path_label(page) == "hls" and page.inner_text("#path") == "Live (HLS)"
    assert "HTTP 503" in page.eval_on_selector("#live", "el => el.dataset.webrtcError")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_live_view_falls_back_to_hls_when_no_packet_gets_through(
    server: LiveServer, browser: Any
) -> None:
    """WebRTC answered, but neither side learns an address of the other (as behind a firewall
    that drops UDP): no frame comes, and the page plays HLS instead."""
    page = browser.new_page(locale="en-US")
    sign_in(page, server)

    def hidden(sdp: str) -> str:
        return "\r\n".join(line for line in sdp.split("\r\n") if "a=candidate" not in line)

    def unreachable(route: Any) -> None:
        """Neither side learns an address of the other: no check, no packet, gets through."""
        sent = json.loads(route.request.post_data or "{}")
        if sent.get("action") != "offer":
            route.continue_()
            return
        answer = route.fetch(post_data=json.dumps(sent | {"sdp": hidden(sent["sdp"])}))
        body = answer.json()
        route.fulfill(response=answer, json=body | {"sdp": hidden(body.get("sdp", ""))})

    page.route("**/webrtc/signal", unreachable)
    row(page, "Front Door").locator("a").click()
    assert video_advances(page, "#live")
    assert path_label(page) == "hls"
    assert page.eval_on_selector("#live", "el => el.dataset.webrtcError") == "no frame"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_signing_out_ends_the_webrtc_live_view(server: LiveServer, browser: Any) -> None:
    """The engine re-checks the sign-in session a console ticket names: signing out (here in a
    second tab) ends the WebRTC session the first tab plays, and that tab says so."""
    context = browser.new_context(locale="en-US")
    watching = context.new_page()
    sign_in(watching, server)
    row(watching, "Front Door").locator("a").click()
    assert webrtc_renders(watching, "#live", frames=10)
    other = context.new_page()
    other.goto(server.url + "/console")
    other.click("header button.link")
    other.wait_for_selector("input[name=email]")
    assert eventually(watching, "document.querySelector('#path').dataset.path === 'ended'", 20)
    assert watching.eval_on_selector("#live", "el => el.camvoicePeer.connectionState") != (
        "connected"
    )


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_simulator_in_a_real_browser(server: LiveServer, db: Database, browser: Any) -> None:
    page = browser.new_page(locale="en-US")
    sign_in(page, server)

    # "On the TV": a Chromecast, which plays HLS.
    simulate(page, server, "google", "show the front door camera on the living room TV")
    assert "action.devices.EXECUTE" in page.inner_text("#request")
    assert '"StreamToChromecast": true' in page.inner_text("#request")
    assert '"status": "SUCCESS"' in page.inner_text("#response")
    assert video_advances(page, "#stream")

    simulate(page, server, "google", "show the nursery")
    assert "deviceNotReady" in page.inner_text("#error")
    assert "Audio is off" in page.inner_text("#speech")
    assert page.locator("video").count() == 0

    simulate(page, server, "alexa_smart_home", "Alexa, show the garage camera")
    assert "InitiateSessionWithOffer" in page.inner_text("#request")
    assert "NOT_SUPPORTED_IN_CURRENT_MODE" in page.inner_text("#error")
    assert "Image Encryption is on" in page.inner_text("#speech")
    assert '"token": "***"' in page.inner_text("#request")  # tokens are never shown
    assert page.locator("video").count() == 0

    simulate(page, server, "alexa_custom", "Alexa, ask camera voice to show the front door")
    assert "Here is the Front Door" in page.inner_text("#speech")
    assert video_advances(page, "#stream")
    # Each path got its URL through the core's Streams.open, which audits every one.
    assert streams_requested(db) == [("google", "hls"), ("alexa", "hls")]

    spanish = browser.new_page(locale="es-ES", extra_http_headers={"Accept-Language": "es-ES"})
    sign_in(spanish, server)
    assert "Cámaras" in spanish.inner_text("h1")
    simulate(spanish, server, "alexa_custom", "muestra la cámara del garaje")
    assert "cifrado de imagen" in spanish.inner_text("#speech")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_simulator_plays_webrtc_as_echo_show_and_nest_hub(
    server: LiveServer, db: Database, browser: Any
) -> None:
    """An Echo Show's offer goes out in InitiateSessionWithOffer through the smart-home
    handler and the page plays the answer; a Nest Hub's GetCameraStream asks for WebRTC and the
    page signals with the token Google got. Both render frames; no credential is shown. Leaving
    the Echo Show's page sends SessionDisconnected, which ends its session."""
    services = Services.of(server.app)
    engine = services.webrtc
    services.webrtc = spy = EndsHeard(engine)
    page = browser.new_page(locale="en-US")
    told: list[tuple[str, int]] = []  # what the page said of the Echo Show's session, answered

    def heard(response: Any) -> None:
        if response.url.endswith("/simulator/session"):
            told.append((parse_qs(response.request.post_data or "")["event"][0], response.status))

    page.on("response", heard)
    sign_in(page, server)

    simulate(page, server, "alexa_smart_home", "Alexa, show the front door")
    assert "InitiateSessionWithOffer" in page.inner_text("#request")
    assert "AnswerGeneratedForSession" in page.inner_text("#response")
    assert webrtc_renders(page, "#stream")
    assert path_label(page) == "webrtc"
    shown = page.inner_text("#request") + page.inner_text("#response")
    assert "a=ice-pwd:***" in shown and "a=ice-pwd:" not in shown.replace("a=ice-pwd:***", "")
    # The engine knows Alexa's session by the name the smart-home handler gives it.
    session = engine_session(page.eval_on_selector("#stream", "el => el.dataset.camera"),
                             page.eval_on_selector("#stream", "el => el.dataset.session"))  # fmt: skip
    assert session in engine.sessions  # type: ignore[attr-defined]
    wait_for(lambda: ("connected", 204) in told, "SessionConnected once frames render", 15)

    simulate(page, server, "google", "show the front door camera")
    wait_for(lambda: (session, "alexa_disconnected") in spy.ended,
             "SessionDisconnected from the left page", 15)  # fmt: skip
    wait_for(lambda: session not in engine.sessions, "the Echo Show's session to end", 15)  # type: ignore[attr-defined]
    assert '"StreamToChromecast": false' in page.inner_text("#request")
    assert '"cameraStreamProtocol": "webrtc"' in page.inner_text("#response")
    assert '"cameraStreamAuthToken": "***"' in page.inner_text("#response")
    assert webrtc_renders(page, "#stream")
    assert path_label(page) == "webrtc"
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / "simulator.png"), full_page=True)
    assert streams_requested(db) == [("alexa", "webrtc"), ("google", "webrtc")]
