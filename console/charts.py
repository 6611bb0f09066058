"""The activity page's pictures: each camera's views per day over the last DAYS days, drawn as
small server-rendered SVG bar charts: no script, no CDN and no style attribute, so the console's
CSP (script-src and style-src 'self') stays as it is. Colours come from console.css."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy.orm import Session

from camvoice import audit

DAYS = 30
BAR = 8  # px per bar
GAP = 2  # px between bars
HEIGHT = 48  # px of the tallest bar
WIDTH = DAYS * (BAR + GAP) - GAP


@dataclass(frozen=True)
class Bar:
    day: date
    views: int
    x: int
    y: float
    height: float


@dataclass(frozen=True)
class Chart:
    camera_id: str
    name: str
    total: int
    bars: list[Bar]


def view_charts(
    session: Session, account_id: str, cameras: dict[str, str], today: date
) -> list[Chart]:
    """One chart per camera (id -> name, in that order) for the DAYS days ending `today` (UTC),
    from one aggregated query. Every chart has the same scale, the busiest day of any camera,
    so two cameras' bars compare; a day without a view is a bar of height 0."""
    first = today - timedelta(days=DAYS - 1)
    counts = audit.views_per_day(session, account_id, datetime.combine(first, time(), UTC))
    days = [first + timedelta(days=i) for i in range(DAYS)]
    peak = max((n for (camera, _), n in counts.items() if camera in cameras), default=0)
    charts = []
    for camera_id, name in cameras.items():
        bars = []
        for i, day in enumerate(days):
            views = counts.get((camera_id, day), 0)
            height = round(HEIGHT * views / peak, 1) if peak else 0.0
            bars.append(Bar(day, views, i * (BAR + GAP), round(HEIGHT - height, 1), height))
        charts.append(Chart(camera_id, name, sum(b.views for b in bars), bars))
    return charts
