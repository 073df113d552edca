"""A PNG of a metric over time: its observations, each day's band as the baseline saw it, the anomalous
points, the first bad one."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from datetime import datetime

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from bot.messages import short_sha
from jobs.core.formatting import fmt_number
from jobs.core.records import BaselineStats, Observation

SIZE_INCHES, DPI = (8.0, 3.2), 100  # 800 × 320 px: legible in a Slack thread without expanding it
LINE, BAND, BAD = "#3b6ea5", "#9bbf85", "#d0342c"


def metric_chart(contract_id: str, observations: Sequence[Observation], baseline: BaselineStats | None,
                 first_bad_at: datetime | None) -> bytes:
    """The chart posted in the incident's thread; a Figure of its own, so no pyplot state is shared."""
    points = sorted(((_when(o), o) for o in observations if o.value is not None), key=lambda p: p[0])
    figure = Figure(figsize=SIZE_INCHES, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.set_title(_literal(contract_id), loc="left", fontsize=11)
    axes.grid(axis="y", alpha=0.3)
    if not points:
        axes.text(0.5, 0.5, "no observations yet", ha="center", va="center", transform=axes.transAxes)
    else:
        _draw(axes, points, baseline, first_bad_at)
    buffer = io.BytesIO()
    # No Software/date metadata: the same observations give the same bytes.
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _draw(axes, points: list[tuple[datetime, Observation]], baseline: BaselineStats | None,
          first_bad_at: datetime | None) -> None:
    times = [when for when, _ in points]
    values = [obs.value for _, obs in points]
    if any(obs.expected is not None for _, obs in points):
        # Each day against the band its own baseline drew (a Sunday's is not a Monday's), not today's.
        lower, upper, expected = zip(*day_bands([obs for _, obs in points]))
        axes.fill_between(times, lower, upper, color=BAND, alpha=0.3, linewidth=0, step="mid",
                          label="expected band")
        axes.plot(times, expected, color=BAND, linestyle="--", linewidth=1, drawstyle="steps-mid",
                  label="expected")
    elif baseline is not None:
        # Observations from before bands were kept: today's band, across the chart.
        lower = baseline.lower if math.isfinite(baseline.lower) else min(values + [baseline.expected])
        upper = baseline.upper if math.isfinite(baseline.upper) else max(values + [baseline.expected])
        axes.axhspan(lower, upper, color=BAND, alpha=0.3, linewidth=0, label="baseline band")
        axes.axhline(baseline.expected, color=BAND, linestyle="--", linewidth=1, label="expected")
    axes.plot(times, values, color=LINE, marker="o", markersize=3, linewidth=1.5, label="observed")
    bad = [(when, obs.value) for when, obs in points if obs.anomalous]
    if bad:
        axes.scatter(*zip(*bad), color=BAD, s=36, zorder=3, label="anomalous")
    first = _first_bad(points, first_bad_at)
    if first is not None:
        when, obs = first
        label = f"first bad\nat {short_sha(obs.sha)}" if obs.sha else "first bad"
        axes.annotate(label, xy=(when, obs.value), xytext=(-60, 25),
                      textcoords="offset points", color=BAD, fontsize=9,
                      arrowprops={"arrowstyle": "->", "color": BAD})
    locator = AutoDateLocator()
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: fmt_number(value)))
    axes.legend(loc="best", fontsize=8, frameon=False)


def day_bands(observations: Sequence[Observation]) -> list[tuple[float, float, float]]:
    """(lower, upper, expected) of each observation as its baseline saw it; NaN where it was not scored.

    A one-sided band's open edge shades to the edge of the data.
    """
    values = [o.value for o in observations if o.value is not None]
    low, high = min(values, default=0.0), max(values, default=0.0)
    return [(_edge(o.lower, low), _edge(o.upper, high), o.expected) if o.expected is not None
            else (math.nan, math.nan, math.nan) for o in observations]


def _edge(value: float | None, open_side: float) -> float:
    """A one-sided band's open edge (stored as none) shades to the edge of the data instead."""
    return open_side if value is None or not math.isfinite(value) else value


def _first_bad(points: list[tuple[datetime, Observation]], first_bad_at: datetime | None):
    """The observation the incident calls first bad: observed at that time, else the first one after it."""
    if first_bad_at is None:
        return None
    exact = [(when, obs) for when, obs in points if obs.observed_at == first_bad_at]
    return exact[0] if exact else next(((w, o) for w, o in points if o.observed_at >= first_bad_at), None)


def _when(obs: Observation) -> datetime:
    # A window's start is the day it measures; the observation lands an hour or a day later.
    return obs.window_start or obs.observed_at


def _literal(text: str) -> str:
    return text.replace("$", r"\$")  # matplotlib reads $…$ as math
