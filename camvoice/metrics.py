"""What an operator watches: Prometheus metrics of one process, and the database's state.

`Metrics` holds the counters, histograms and gauges, created against the registry it is given
(each app in a test builds its own: no "Duplicated timeseries"), and the composition root puts
one in `Services`. Adapters record at their central points: the Alexa and Google dispatch, stream
opening, the relay manager, the WebRTC engine, the camera-cloud sync and the sign-in throttle.

Under gunicorn each worker writes its values to PROMETHEUS_MULTIPROC_DIR (prometheus_client's
multiprocess mode) and a scrape, served by any worker, adds them up. What lives in the database
(outbox depth, its oldest due event's age, dead letters) is read at scrape time by
`DatabaseState` in one query, so every instance reports the same figures.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import func, select

from camvoice.db import Database
from camvoice.models import OutboxEvent, utcnow

# What the request being answered was, for its access line (service/logs.py sets a dict here
# per request when logging JSON; None otherwise, and then nothing is kept).
request_fields: ContextVar[dict[str, object] | None] = ContextVar(
    "camvoice_request_fields", default=None
)

# Seconds: directives are answered in milliseconds; Alexa gives up at 8 s, its target is 1 s.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 8.0)
# Camera ids as the registry makes them; anything else (a forged endpointId) is not logged.
CAMERA_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")


class Metrics:
    """The metrics of one process (or one app in a test), against `registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "camvoice_assistant_requests", "Directives and intents answered, by outcome",
            ["assistant", "name", "outcome"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "camvoice_assistant_request_seconds", "Time to answer a directive or an intent",
            ["assistant", "name"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.stream_starts = Counter(
            "camvoice_stream_starts", "Stream URLs handed out", ["assistant", "protocol"],
            registry=r,
        )  # fmt: skip
        self.stream_denials = Counter(
            "camvoice_stream_denials", "Streams refused, by the first blocker",
            ["assistant", "protocol", "blocker"], registry=r,
        )  # fmt: skip
        self.relays = Gauge(
            "camvoice_relays_running", "HLS relays (ffmpeg) running", registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.relay_failures = Counter(
            "camvoice_relay_failures", "HLS relays that failed to start or died", ["reason"],
            registry=r,
        )  # fmt: skip
        self.webrtc_sessions = Gauge(
            "camvoice_webrtc_sessions_live", "Live WebRTC sessions", registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.syncs = Counter(
            "camvoice_camera_cloud_syncs", "Camera-cloud account syncs, by outcome",
            ["backend", "outcome"], registry=r,
        )  # fmt: skip
        self.signin_throttled = Counter(
            "camvoice_signin_throttled", "Sign-ins refused by the failure limits", registry=r
        )

    def answered(
        self,
        assistant: str,
        name: str,
        outcome: str,
        seconds: float,
        camera_id: object = None,
    ) -> None:
        """One directive or intent answered: counted, timed, and kept for the request's access
        line (no log line of its own: records cost their redaction, tens of microseconds).

        `name` and `outcome` must come from a closed set (the dispatch table's keys, the
        protocol's error types), never from the request as sent: label values are kept forever.
        """
        self.requests.labels(assistant, name, outcome).inc()
        self.latency.labels(assistant, name).observe(seconds)
        fields = request_fields.get()
        if fields is not None:
            fields.update(assistant=assistant, directive=name, outcome=outcome)
            if isinstance(camera_id, str) and CAMERA_ID.fullmatch(camera_id):
                fields["camera_id"] = camera_id

    def stream_opened(self, assistant: str, protocol: str, blockers: list[str]) -> None:
        """A stream asked for: handed out, or refused for its first blocker."""
        if blockers:
            self.stream_denied(assistant, protocol, blockers[0])
        else:
            self.stream_starts.labels(assistant, protocol).inc()

    def stream_denied(self, assistant: str, protocol: str, blocker: str) -> None:
        """A stream refused: by the readiness rules, or a fetch whose ticket is refused
        (`blocker` then names the ticket's reason: expired, link_revoked...)."""
        first = blocker.removeprefix("blocked:").split(",")[0].lower()  # a ticket's "blocked:a,b"
        self.stream_denials.labels(assistant, protocol, first).inc()


@dataclass
class DatabaseState:
    """A collector of what the database holds, read at scrape time (a cheap query each)."""

    db: Database

    def collect(self) -> Iterator[Metric]:
        now = utcnow()
        with self.db.reading() as session:
            rows = session.execute(
                select(OutboxEvent.status, func.count(), func.min(OutboxEvent.next_attempt_at))
                .where(OutboxEvent.status.in_(("pending", "dead")))
                .group_by(OutboxEvent.status)
            ).all()
        found = {status: (count, oldest) for status, count, oldest in rows}
        pending, oldest = found.get("pending", (0, None))
        due = max(timedelta(0), now - oldest) if oldest is not None else timedelta(0)
        yield GaugeMetricFamily("camvoice_outbox_depth", "Outbox events not yet delivered",
                                value=pending)  # fmt: skip
        yield GaugeMetricFamily(
            "camvoice_outbox_oldest_due_age_seconds",
            "How long the oldest undelivered event has been due", value=due.total_seconds(),
        )  # fmt: skip
        yield GaugeMetricFamily("camvoice_outbox_dead_letters", "Events given up on",
                                value=found.get("dead", (0, None))[0])  # fmt: skip


@dataclass
class Scrape:
    """What one scrape shows: this process's metrics (or every worker's, in multiprocess mode)
    and the database's state."""

    metrics: Metrics
    state: DatabaseState
    multiprocess_dir: str | None = None

    def collect(self) -> Iterable[Metric]:
        if self.multiprocess_dir:
            merged = CollectorRegistry()
            MultiProcessCollector(merged, self.multiprocess_dir)
            yield from merged.collect()
        else:
            yield from self.metrics.registry.collect()
        yield from self.state.collect()

    def text(self) -> bytes:
        return generate_latest(self)  # type: ignore[arg-type]
