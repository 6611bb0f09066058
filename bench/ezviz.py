"""What the EZVIZ backend costs camvoice itself: sync time per device, and a cloud stream's start.

Runs against the fake Open Platform of the tests (two HTTP hosts on 127.0.0.1, a real ffmpeg-made
HLS stream), so the figures are camvoice's own overhead plus loopback round trips; the real
platform adds its network latency to every call. A sync makes 3 calls per online device (info,
microphone, lens cover; 1, info, for an offline one) plus 1 list call per 50 devices; linking
adds 1 token call; a stream request makes 1. The "calls" column counts them on the fake.

Before a figure is printed, the import is checked to have made every device a camera, and each
stream start to have answered a playlist and an MPEG-TS segment; otherwise the run stops with a
non-zero exit.

    .venv/bin/python bench/ezviz.py [--runs 7] [--sizes 10 100 300]
    .venv/bin/python bench/ezviz.py --runs 1 --sizes 10   # smoke
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NoReturn

import requests
from werkzeug.serving import WSGIRequestHandler, make_server

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backends.ezviz.backend import EzvizBackend
from backends.ezviz.sync import link_account, sync_now
from camvoice.accounts import create_account
from camvoice.db import Database
from camvoice.models import Account, Camera
from camvoice.services import Services
from camvoice.settings import load_settings
from camvoice.tickets import Audience, Protocol
from service.app import create_app
from service.wiring import build_services
from tests.fake_ezviz import FakeEzviz, make_hls

KEY, SECRET = "bench-key", "bench-secret"


def fail(message: str) -> NoReturn:
    """Stop the run: a figure for an answer that was not the success shape would be a lie."""
    sys.exit(f"bench/ezviz.py FAILED: {message}")


class Quiet(WSGIRequestHandler):
    """No request lines: they carry stream tickets."""

    def log_request(self, *args: object, **kwargs: object) -> None:
        pass


def scratch(folder: Path, api_url: str) -> tuple[Services, Account]:
    """A migrated SQLite database with one owner, and the wiring the CLI and worker build."""
    # The fake platform streams from loopback, which camvoice pulls from only when listed.
    settings = load_settings(data_dir=folder / "data", ezviz_api_url=api_url,
                             secret_key="bench-" + "x" * 40,
                             source_networks="127.0.0.0/8")  # fmt: skip
    db = Database(settings.sqlalchemy_url)
    db.upgrade()
    with db.session() as session:
        owner = create_account(session, "bench@example.com", "bench password 1")
    return build_services(settings, db), owner


def link_and_import(services: Services, owner: Account) -> None:
    """Link the keys (one token call), then run the first import as the worker would."""
    link_account(services, owner, KEY, SECRET, actor="bench")
    sync_now(services, owner.id)


def expect_cameras(services: Services, owner: Account, size: int) -> None:
    """An import that made fewer cameras than devices is a failure, not a faster import."""
    with services.db.session() as session:
        made = session.query(Camera).filter_by(owner_id=owner.id, backend="ezviz").count()
    if made != size:
        fail(f"import of {size} devices made {made} cameras")


def bench_sync(sizes: list[int]) -> None:
    print("sync (link + first import, then a sync with nothing changed)")
    print(f"{'devices':>8} {'import s':>9} {'calls':>6} {'resync s':>9} {'ms/device':>10}")
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            fake = FakeEzviz(KEY, SECRET)
            for n in range(size):
                fake.add(f"SN{n:05d}", f"Camera {n}")
            services, owner = scratch(Path(tmp), fake.url)
            started = time.perf_counter()
            link_and_import(services, owner)
            imported = time.perf_counter() - started
            calls = len(fake.calls)
            expect_cameras(services, owner, size)
            started = time.perf_counter()
            sync_now(services, owner.id)
            resync = time.perf_counter() - started
            print(f"{size:>8} {imported:>9.2f} {calls:>6} {resync:>9.2f} "
                  f"{resync / size * 1000:>10.1f}")  # fmt: skip
            fake.close()
            services.db.dispose()


def bench_stream(runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        fake = FakeEzviz(KEY, SECRET, make_hls(folder / "hls"))
        fake.add("SN00001", "Front Door")
        services, owner = scratch(folder, fake.url)
        link_and_import(services, owner)
        settings, db = services.settings, services.db
        app = create_app(settings, db)
        wired = Services.of(app)  # the app's own wiring serves the requests
        server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=Quiet)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_port}"
        assert isinstance(wired.registry.backends["ezviz"], EzvizBackend)

        with db.session() as session:
            wired.registry.add(session, session.get(Account, owner.id), "Demo", actor="bench")  # type: ignore[arg-type]

        def start(name: str) -> tuple[float, float, float]:
            """(check + mint, playlist, first segment) seconds for a camera, through camvoice."""
            began = time.perf_counter()
            with db.session() as session:
                camera = session.query(Camera).filter_by(owner_id=owner.id, name=name).one()
            # Readiness, one check with the backend, then the signed URL (StreamRefused if not).
            url = wired.streams.open(db, camera, Audience.WEB, Protocol.HLS).url
            minted = time.perf_counter()
            local = url.replace(settings.public_url, base)
            playlist = requests.get(local, timeout=20)
            if playlist.status_code != 200 or not playlist.text.startswith("#EXTM3U"):
                fail(f"{name}: playlist answered HTTP {playlist.status_code}")
            listed = time.perf_counter()
            first = next(x for x in playlist.text.splitlines() if x and not x.startswith("#"))
            segment = requests.get(local.rsplit("/", 1)[0] + "/" + first, timeout=10)
            if segment.status_code != 200 or segment.content[:1] != b"\x47":
                fail(f"{name}: first segment is not MPEG-TS (HTTP {segment.status_code})")
            return minted - began, listed - minted, time.perf_counter() - listed

        start("Front Door")  # warm imports and connections
        start("Demo")  # and the demo camera's relay (ffmpeg keeps running between runs)
        results: dict[str, list[tuple[float, float, float]]] = {"Front Door": [], "Demo": []}
        for _ in range(runs):
            for name in results:  # side by side, interleaved
                calls = len(fake.calls)
                results[name].append(start(name))
                if name == "Front Door" and len(fake.calls) != calls + 1:
                    fail(
                        f"a cloud stream request made {len(fake.calls) - calls} platform calls, not 1"
                    )
        print(f"\nstream start through camvoice, {runs} runs, medians in ms")
        print(f"  {'camera':<28} {'check+mint':>10} {'playlist':>9} {'segment':>8} {'total':>7}")
        for name, label in (
            ("Front Door", "EZVIZ cloud (proxied)"),
            ("Demo", "local relay (warm)"),
        ):
            parts = [statistics.median(r[i] for r in results[name]) * 1000 for i in range(3)]
            total = statistics.median(sum(r) for r in results[name]) * 1000
            print(
                f"  {label:<28} {parts[0]:>10.1f} {parts[1]:>9.1f} {parts[2]:>8.1f} {total:>7.1f}"
            )
        server.shutdown()
        app.extensions["camvoice.relays"].shutdown()
        fake.close()
        db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=7, help="stream starts per camera (1: smoke)")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[10, 100, 300], help="devices per sync"
    )
    args = parser.parse_args()
    bench_sync(args.sizes)
    bench_stream(args.runs)


if __name__ == "__main__":
    main()
