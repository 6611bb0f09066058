"""GET /metrics (Prometheus) and the multiprocess directory gunicorn's workers share.

/metrics is for the operator's Prometheus only: it answers 404 until CAMVOICE_METRICS_TOKEN is
set, then 401 to any request without that bearer token. Under gunicorn every worker writes its
values to PROMETHEUS_MULTIPROC_DIR and any worker's scrape adds them all up (camvoice/metrics.py).
"""

from __future__ import annotations

import hmac
import os
import shutil
from pathlib import Path

from flask import Flask, Response, abort, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, values
from prometheus_client.multiprocess import mark_process_dead

from camvoice.metrics import DatabaseState, Scrape
from camvoice.services import Services

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def init_app(app: Flask, services: Services) -> None:
    """Serve /metrics for this app: its metrics (every worker's under gunicorn) and the DB's."""
    scrape = Scrape(services.metrics, DatabaseState(services.db), os.environ.get(MULTIPROC_ENV))
    app.extensions["camvoice.scrape"] = scrape
    app.add_url_rule("/metrics", "metrics", metrics)


def metrics() -> Response:
    token = Services.of(current_app).settings.metrics_token
    if token is None:
        abort(404)
    scheme, _, sent = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        sent.strip().encode(), token.get_secret_value().encode()
    ):
        response = Response('{"error": "unauthorized"}', 401, mimetype="application/json")
        response.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    body = current_app.extensions["camvoice.scrape"].text()
    return Response(body, 200, headers={"Content-Type": CONTENT_TYPE_LATEST,
                                        "Cache-Control": "no-store"})  # fmt: skip


def share_between_workers(folder: Path) -> None:
    """Before gunicorn forks: an empty PROMETHEUS_MULTIPROC_DIR for this run's workers.

    Values left by a previous run would be added to this one's, so the folder is emptied. This
    process has imported prometheus_client already (the CLI builds its wiring first), and the
    library chooses its value class from the environment at import: it is chosen again here, so
    the metrics the forked workers create write to the shared folder.
    """
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, mode=0o700)
    os.environ[MULTIPROC_ENV] = str(folder)
    values.ValueClass = values.get_value_class()


def worker_exited(server: object, worker: object) -> None:
    """gunicorn's child_exit hook: a dead worker's live gauges (relays, sessions) stop counting."""
    if os.environ.get(MULTIPROC_ENV):
        mark_process_dead(worker.pid)  # type: ignore[attr-defined]
