"""The overview's chart: handler outcomes per minute over the last hour, as SVG geometry.

Computed here and drawn by the template as inline SVG, so the page needs no script and no
charting library: one stacked bar per minute, scaled to the busiest minute.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = ["OUTCOMES", "Bar", "OutcomeChart", "Segment", "outcome_chart"]

OUTCOMES = ("done", "retry", "dead_letter", "unhandled")
"""Stacked bottom to top, in this order; the template gives each its colour."""

WIDTH, HEIGHT = 720, 160
LEFT, BOTTOM = 36, 20
GAP = 2


@dataclass(frozen=True, slots=True)
class Segment:
    outcome: str
    y: float
    height: float


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    width: float
    label: str
    """For the bar's tooltip: the minute and its counts."""
    segments: list[Segment]


@dataclass(frozen=True, slots=True)
class OutcomeChart:
    width: int
    height: int
    left: int
    plot_height: int
    peak: int
    bars: list[Bar]
    ticks: list[tuple[float, str]]
    """(x, text) under the plot: minutes ago."""
    totals: dict[str, int]


def outcome_chart(per_minute: list[dict[str, int]], now: float | None = None) -> OutcomeChart:
    """``per_minute`` oldest first, the current minute last (``Stats.per_minute``)."""
    now = time.time() if now is None else now
    count = max(1, len(per_minute))
    plot_height = HEIGHT - BOTTOM
    slot = (WIDTH - LEFT) / count
    peak = max([sum(minute.get(o, 0) for o in OUTCOMES) for minute in per_minute] + [1])
    bars = []
    this_minute = int(now // 60) * 60
    for index, minute in enumerate(per_minute):
        started = this_minute - (len(per_minute) - 1 - index) * 60
        stamp = datetime.fromtimestamp(started, tz=UTC).strftime("%H:%M UTC")
        counts = ", ".join(f"{minute[o]} {o}" for o in OUTCOMES if minute.get(o))
        segments = []
        top = float(plot_height)
        for outcome in OUTCOMES:
            value = minute.get(outcome, 0)
            if value:
                height = value / peak * (plot_height - 4)
                top -= height
                segments.append(Segment(outcome, round(top, 2), round(height, 2)))
        bars.append(
            Bar(
                x=round(LEFT + index * slot + GAP / 2, 2),
                width=round(max(1.0, slot - GAP), 2),
                label=f"{stamp}: {counts or 'nothing'}",
                segments=segments,
            )
        )
    ticks = [
        (round(LEFT + (count - minutes_ago) * slot - slot / 2, 2), f"-{minutes_ago}m")
        for minutes_ago in (60, 45, 30, 15)
        if minutes_ago <= count
    ]
    ticks.append((float(WIDTH), "now"))  # drawn right-aligned, so it is not cut off
    totals = {o: sum(minute.get(o, 0) for minute in per_minute) for o in OUTCOMES}
    return OutcomeChart(WIDTH, HEIGHT, LEFT, plot_height, peak, bars, ticks, totals)
