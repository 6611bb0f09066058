"""The console and the voice simulator in a real browser: Debian's headless Chromium, driven by
Playwright for Python with that executable (no browser download).

Skips without /usr/bin/chromium unless CAMVOICE_REQUIRE_BROWSER=1 (set by .ci/run).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from camvoice.cameras import Registry
from camvoice.db import Database
from camvoice.outbox import Outbox
from camvoice.settings import Settings
from service.app import create_app
from service.demo import DEMO_EMAIL, DEMO_PASSWORD, seed
from tests.conftest import LiveServer, with_relay
from tests.oauth_support import streams_requested

CHROMIUM = "/usr/bin/chromium"
DOCS = Path(__file__).resolve().parents[1] / "docs"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--autoplay-policy=no-user-gesture-required"]  # fmt: skip


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
    with LiveServer(app) as live:
        yield live
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


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_console_in_a_real_browser(server: LiveServer, db: Database, browser: Any) -> None:
    page = browser.new_page(locale="en-US")
    sign_in(page, server)
    assert row(page, "Garage").locator("td.alexa li[data-code=ENCRYPTION_ON]").count() == 1
    assert row(page, "Nursery").locator("td.alexa .ready").count() == 1
    assert row(page, "Nursery").locator("td.google li[data-code=AUDIO_OFF]").count() == 1
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / "console.png"), full_page=True)

    # Fix Garage: the confirmation is required, then it turns ready.
    form = page.locator("form.confirm", has_text="Garage")
    form.locator("input[name=confirm]").check()
    form.locator("button").click()
    page.wait_for_selector("#matrix")
    assert row(page, "Garage").locator("td.alexa .ready").count() == 1

    # Live view of Front Door: the video really advances.
    row(page, "Front Door").locator("a").click()
    assert video_advances(page, "#live")
    assert streams_requested(db) == [("web", "hls")]

    # Activity shows the fix.
    page.goto(server.url + "/console/activity")
    assert page.locator("#activity", has_text="camera.changed").count() == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_simulator_in_a_real_browser(server: LiveServer, db: Database, browser: Any) -> None:
    page = browser.new_page(locale="en-US")
    sign_in(page, server)

    def simulate(assistant: str, utterance: str, on: Any = page) -> None:
        on.goto(server.url + "/simulator")
        on.select_option("select[name=assistant]", assistant)
        on.fill("input[name=utterance]", utterance)
        on.click("#simulate button")
        on.wait_for_selector("#result")

    simulate("google", "show the front door camera on the living room TV")
    assert "action.devices.EXECUTE" in page.inner_text("#request")
    assert '"status": "SUCCESS"' in page.inner_text("#response")
    assert video_advances(page, "#stream")
    page.screenshot(path=str(DOCS / "simulator.png"), full_page=True)

    simulate("google", "show the nursery")
    assert "deviceNotReady" in page.inner_text("#error")
    assert "Audio is off" in page.inner_text("#speech")

    simulate("alexa_smart_home", "Alexa, show the garage camera")
    assert "NOT_SUPPORTED_IN_CURRENT_MODE" in page.inner_text("#error")
    assert "Image Encryption is on" in page.inner_text("#speech")
    assert '"token": "***"' in page.inner_text("#request")  # tokens are never shown

    simulate("alexa_smart_home", "Alexa, show the front door")
    assert '"name": "Response"' in page.inner_text("#response")
    assert eventually(page, "document.querySelector('#snapshot').naturalWidth > 0")

    simulate("alexa_custom", "Alexa, ask camera voice to show the front door")
    assert "Here is the Front Door" in page.inner_text("#speech")
    assert video_advances(page, "#stream")
    # Each path got its URL through the core's Streams.open, which audits every one.
    assert streams_requested(db) == [
        ("google", "hls"), ("alexa", "rtsps"), ("web", "hls"), ("alexa", "hls"),
    ]  # fmt: skip

    spanish = browser.new_page(locale="es-ES", extra_http_headers={"Accept-Language": "es-ES"})
    sign_in(spanish, server)
    assert "Cámaras" in spanish.inner_text("h1")
    simulate("alexa_custom", "muestra la cámara del garaje", on=spanish)
    assert "cifrado de imagen" in spanish.inner_text("#speech")
