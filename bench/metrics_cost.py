"""What the operations instrumentation adds to one directive, in microseconds.

What a stream directive records, timed alone: the dispatch's counter and histogram and the
stream start (`Metrics.answered` + `Metrics.stream_opened`), in one process and in gunicorn's
multiprocess mode (values in mmap files); and the request-id middleware (service/logs.py)
around an empty WSGI app, minus that app alone, in text mode and in JSON mode (one access line,
through the redacting record factory and the JSON formatter, to a handler that drops it).
Each figure is the median over batches of `--runs` calls.

    .venv/bin/python bench/metrics_cost.py [--runs 20000]
"""

from __future__ import annotations

import argparse
import io
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from camvoice.metrics import Metrics  # noqa: E402
from camvoice.redact import RedactingFactory  # noqa: E402
from service.logs import JSONFormatter, RequestIds  # noqa: E402
from service.metrics import share_between_workers  # noqa: E402

BATCHES = 7
NAME = "Alexa.CameraStreamController.InitializeCameraStreams"


def per_call(func: Callable[[], Any], runs: int) -> float:
    """Median microseconds per call over BATCHES batches of `runs` calls."""
    medians = []
    for _ in range(BATCHES):
        started = time.perf_counter()
        for _ in range(runs):
            func()
        medians.append((time.perf_counter() - started) / runs * 1e6)
    return statistics.median(medians)


def recorded(metrics: Metrics) -> Callable[[], None]:
    def record() -> None:
        metrics.answered("alexa", NAME, "ok", 0.004, "cam_0123456789abcdef")
        metrics.stream_opened("alexa", "rtsps", [])

    return record


def empty_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "application/json")])
    return [b"{}"]


def through(app: Callable[..., Any]) -> Callable[[], None]:
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/alexa/smart-home"}
    return lambda: app(dict(environ), lambda *a: None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20000, help="calls per batch (10: smoke)")
    runs = parser.parse_args().runs
    RedactingFactory.install()
    access = logging.getLogger("camvoice.access")
    access.propagate = False
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(JSONFormatter())
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    print(f"instrumentation per directive, median of {BATCHES} batches of {runs} calls")
    local = per_call(recorded(Metrics()), runs)
    print(f"  metrics, one process            {local:8.2f} us")
    bare = per_call(through(empty_app), runs)
    text = per_call(through(RequestIds(empty_app, access=False)), runs) - bare
    print(f"  request id, text logs           {text:8.2f} us")
    json_mode = per_call(through(RequestIds(empty_app, access=True)), runs) - bare
    print(f"  request id + JSON access line   {json_mode:8.2f} us")
    with tempfile.TemporaryDirectory() as folder:
        share_between_workers(Path(folder) / "prometheus")
        shared = per_call(recorded(Metrics()), runs)
    print(f"  metrics, multiprocess (mmap)    {shared:8.2f} us")


if __name__ == "__main__":
    main()
