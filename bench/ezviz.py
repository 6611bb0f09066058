"""What the EZVIZ backend costs camvoice itself: sync time per device, and a cloud stream's start.

Runs against the fake Open Platform of the tests (two HTTP hosts on 127.0.0.1, a real ffmpeg-made
HLS stream), so the figures are camvoice's own overhead plus loopback round trips; the real
platform adds its network latency to every call (about 4 calls per device per sync, 1 per
stream request).

    .venv/bin/python bench/ezviz.py [--runs 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

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


class Quiet(WSGIRequestHandler):
    """No request lines: they carry stream tickets."""

    def log_request(self, *args: object, **kwargs: object) -> None:
        pass


def scratch(folder: Path, api_url: str) -> tuple[Services, Account]:
    """A migrated SQLite database with one owner, and the wiring the CLI and worker build."""
    settings = load_settings(data_dir=folder / "data", ezviz_api_url=api_url,
                             secret_key="bench-" + "x" * 40)  # fmt: skip
    db = Database(settings.sqlalchemy_url)
    db.upgrade()
    with db.session() as session:
        owner = create_account(session, "bench@example.com", "bench password 1")
    return build_services(settings, db), owner


def link_and_import(services: Services, owner: Account) -> None:
    """Link the keys (one token call), then run the first import as the worker would."""
    link_account(services, owner, KEY, SECRET, actor="bench")
    sync_now(services, owner.id)


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
            assert playlist.status_code == 200, playlist.text
            listed = time.perf_counter()
            first = next(x for x in playlist.text.splitlines() if x and not x.startswith("#"))
            segment = requests.get(local.rsplit("/", 1)[0] + "/" + first, timeout=10)
            assert segment.status_code == 200 and segment.content[:1] == b"\x47"
            return minted - began, listed - minted, time.perf_counter() - listed

        start("Front Door")  # warm imports and connections
        start("Demo")  # and the demo camera's relay (ffmpeg keeps running between runs)
        results: dict[str, list[tuple[float, float, float]]] = {"Front Door": [], "Demo": []}
        for _ in range(runs):
            for name in results:  # side by side, interleaved
                calls = len(fake.calls)
                results[name].append(start(name))
                if name == "Front Door":
                    assert len(fake.calls) == calls + 1  # one bounded call per stream request
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
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 300])
    args = parser.parse_args()
    bench_sync(args.sizes)
    bench_stream(args.runs)


if __name__ == "__main__":
    main()
