"""Time to the first rendered WebRTC frame of the console's live view, in Debian's Chromium.

Runs the app in-process (werkzeug, SQLite, the demo cameras, the aiortc engine) and drives
/usr/bin/chromium with Playwright: sign in, then for each run open Front Door's live view and
read what the page's script (console/static/webrtc.js) measured with performance.now():

- gather: RTCPeerConnection made -> every ICE candidate gathered (the offer is non-trickle);
- offer -> frame: the offer POSTed to /webrtc/signal -> the first frame handed to the compositor
  (requestVideoFrameCallback), which includes the engine's answer, ICE, DTLS and the first
  keyframe;
- navigation -> frame: the page's navigation start -> that first frame.

A run counts only if the page says it plays over WebRTC. The first view starts the camera's feed
cold; each later one opens the view again once the previous page was left and its session
ended, and joins the camera's feed while the engine still runs it (the warm case).

    .venv/bin/python bench/console_webrtc.py [--runs 7]
    .venv/bin/python bench/console_webrtc.py --runs 1   # smoke
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

from werkzeug.serving import WSGIRequestHandler, make_server

from camvoice.cameras import Registry
from camvoice.db import Database
from camvoice.outbox import Outbox
from camvoice.services import Services
from camvoice.settings import load_settings
from service.app import create_app
from service.demo import DEMO_EMAIL, DEMO_PASSWORD, seed

CHROMIUM = "/usr/bin/chromium"
# Without the last flag Chromium offers mDNS names (.local) for its host candidates, which the
# engine cannot resolve here; Echo and Nest offers carry addresses.
FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--autoplay-policy=no-user-gesture-required",
         "--disable-features=WebRtcHideLocalIpsWithMdns"]  # fmt: skip
MEASURED = """el => ({ path: document.querySelector('#path').dataset.path || '',
  gather: +el.dataset.gatherMs, frame: +el.dataset.firstFrameMs, load: +el.dataset.sinceLoadMs,
  error: el.dataset.webrtcError || '' })"""


class Quiet(WSGIRequestHandler):
    """No request lines: stream URLs carry tickets."""

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


def fail(message: str) -> NoReturn:
    """Stop the run: the time to an error is not a first frame."""
    sys.exit(f"bench/console_webrtc.py FAILED: {message}")


def until(page: Any, expression: str, timeout: float) -> bool:
    """Poll an expression in the page (the console's CSP forbids wait_for_function's eval)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if page.evaluate(expression):
            return True
        time.sleep(0.05)
    return False


def one_view(page: Any, url: str) -> dict[str, Any]:
    page.goto(url)
    if not until(page, "!!document.querySelector('#live').dataset.firstFrameMs", 30):
        fail("no frame rendered within 30 s")
    measured: dict[str, Any] = page.eval_on_selector("#live", MEASURED)
    if measured["path"] != "webrtc" or measured["error"]:
        fail(f"the view plays {measured['path'] or 'nothing'} ({measured['error']})")
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7, help="views after the cold one")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        fail(f"{CHROMIUM} is not installed")
    from playwright.sync_api import sync_playwright

    folder = Path(tempfile.mkdtemp(prefix="camvoice-bench-"))
    url = f"sqlite:///{folder / 'camvoice.db'}"
    db = Database(url)
    db.upgrade()
    with db.session() as session:
        seed(session, Registry(Outbox()))
    settings = load_settings(data_dir=folder / "data", database_url=url,
                             secret_key="bench-secret-key-" + "x" * 32,
                             public_url="http://127.0.0.1:8080", relay_enabled=True,
                             media_dir=folder / "media", source_networks="127.0.0.0/8")  # fmt: skip
    app = create_app(settings, db)
    engine = Services.of(app).webrtc
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    runs: list[dict[str, Any]] = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page(locale="en-US")
            page.goto(base + "/console")
            page.fill("input[name=email]", DEMO_EMAIL)
            page.fill("input[name=password]", DEMO_PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_selector("#matrix")
            live = base + str(page.locator("tr[data-camera='Front Door'] a").get_attribute("href"))
            for _ in range(args.runs + 1):
                runs.append(one_view(page, live))
                page.goto(base + "/console")  # leaving the view ends its session ("end")
                deadline = time.monotonic() + 15
                while engine.sessions and time.monotonic() < deadline:  # type: ignore[attr-defined]
                    time.sleep(0.05)
            browser.close()
    finally:
        server.shutdown()
        engine.shutdown()  # type: ignore[attr-defined]
        app.extensions["camvoice.relays"].shutdown()
    cold, warm = runs[0], runs[1:]
    print(f"cold view: gather {cold['gather']:.0f} ms, offer -> frame {cold['frame']:.0f} ms, "
          f"navigation -> frame {cold['load']:.0f} ms")  # fmt: skip
    for name, key in (("gather", "gather"), ("offer -> frame", "frame"),
                      ("navigation -> frame", "load")):  # fmt: skip
        values = [run[key] for run in warm]
        print(f"{name}: median {statistics.median(values):.0f} ms, max {max(values):.0f} ms "
              f"({len(values)} views)")  # fmt: skip


if __name__ == "__main__":
    main()
