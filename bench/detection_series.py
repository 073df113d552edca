"""Generated metric series for the detection benchmark: noisy, growing, weekly, small counts, shifted.

Each family draws its parameters per series from the ranges real businesses show (day-to-day
noise 3-12%, growth -0.5% to +1% a day, weekends up to 45% below weekdays) and produces daily
values with the counts behind them, so sampling noise is real sampling, not a label.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

import numpy as np

from jobs.contracts.spec import Contract

START = datetime(2025, 1, 6, tzinfo=timezone.utc)  # a Monday, so weekday i is day i % 7
WEEK_SHAPE = np.array([1.0, 1.03, 1.0, 0.98, 0.92, 0.64, 0.54])  # Mon..Sun, scaled by the amplitude
NOISE, GROWTH, AMPLITUDE = (0.03, 0.12), (-0.005, 0.01), (0.0, 0.45)
AMOUNT_CV = 1.0  # order amounts: a coefficient of variation of 1 (log-normal-ish baskets)


Draw = Callable[[int, float, np.random.Generator], tuple[float, "int | None"]]


@dataclass(frozen=True)
class Series:
    """One metric's daily values (and the counts behind them), with what makes them noisy."""

    family: str
    contract: Contract
    values: np.ndarray
    counts: np.ndarray | None  # rows (volume, count) or the denominator (ratio); None for a stock
    noise: float  # business noise: relative sd of the day-to-day level
    sampling: np.ndarray  # relative sd of each day's sampling noise (0 for a stock)
    draw: Draw  # (day, factor, rng) -> that day's value and count with its true level times factor
    skip: frozenset[int] = frozenset()  # history-only days (holidays): never scored
    bucket: str = ""  # the size of the sample behind a day, for results by size ("20/day")

    def at(self, day: int) -> datetime:
        return START + timedelta(days=day)

    def combined_noise(self, day: int) -> float:
        return math.hypot(self.noise, float(self.sampling[day]))


def _contract(kind: str, windowed: bool = True, **fields) -> Contract:
    window = {"time_column": "at", "window": "day"} if windowed else {}
    return Contract(id=f"bench.{kind}", kind=kind, model="m", direction="both", **window, **fields)


def _level(rng: np.random.Generator, days: int) -> tuple[np.ndarray, float]:
    noise, growth, amplitude = rng.uniform(*NOISE), rng.uniform(*GROWTH), rng.uniform(*AMPLITUDE)
    t = np.arange(days)
    shape = 1 - amplitude * (1 - WEEK_SHAPE) / (1 - WEEK_SHAPE).max()
    return (1 + growth) ** t * shape[t % 7] * np.exp(rng.normal(0, noise, days)), noise


def _amount(rng: np.random.Generator, rows: int, mean: float) -> float:
    """The sum of `rows` amounts of mean `mean` (gamma: the sum of exponential-ish baskets)."""
    return float(rng.gamma(rows / AMOUNT_CV**2, mean * AMOUNT_CV**2)) if rows else 0.0


def volume(rng: np.random.Generator, days: int) -> Series:
    """A daily revenue sum: rows are Poisson, each a basket of random size."""
    level, noise = _level(rng, days)
    per_day = int(rng.choice([50, 200, 1000, 5000]))
    expected = per_day * level

    def draw(day: int, factor: float, rng: np.random.Generator) -> tuple[float, int]:
        rows = int(rng.poisson(expected[day] * factor))
        return _amount(rng, rows, 40.0), rows

    drawn = [draw(day, 1.0, rng) for day in range(days)]
    values, rows = np.array([v for v, _ in drawn]), np.array([k for _, k in drawn])
    sampling = np.sqrt((1 + AMOUNT_CV**2) / np.maximum(expected, 1))
    return Series("volume", _contract("volume", expr="sum(amount)"), values, rows, noise, sampling, draw,
                  bucket=f"{per_day}/day")


def count(rng: np.random.Generator, days: int) -> Series:
    """A daily row count (orders, signups): Poisson around a noisy level, 20 to 2,000 a day."""
    level, noise = _level(rng, days)
    per_day = int(rng.choice([20, 100, 500, 2000]))
    expected = per_day * level

    def draw(day: int, factor: float, rng: np.random.Generator) -> tuple[float, int]:
        k = int(rng.poisson(expected[day] * factor))
        return float(k), k

    k = rng.poisson(expected)
    return Series("count", _contract("row_count"), k.astype(float), k, noise, 1 / np.sqrt(np.maximum(expected, 1)),
                  draw, bucket=f"{per_day}/day")


def ratio(rng: np.random.Generator, days: int) -> Series:
    """A daily share (coupon orders / orders): binomial over denominators from 20 to 20,000 a day."""
    level, noise = _level(rng, days)
    per_day = int(rng.choice([20, 200, 2000, 20000]))
    den = np.maximum(rng.poisson(per_day * level), 1)
    rate = np.clip(rng.uniform(0.05, 0.5) * np.exp(rng.normal(0, noise, days)), 0, 1)

    def draw(day: int, factor: float, rng: np.random.Generator) -> tuple[float, int]:
        return float(rng.binomial(den[day], min(rate[day] * factor, 1.0))) / den[day], int(den[day])

    values = rng.binomial(den, rate) / den
    sampling = np.sqrt((1 - rate) / np.maximum(rate * den, 1e-9))
    contract = _contract("ratio", numerator="count(coupon)", denominator="count(*)")
    return Series("ratio", contract, values, den, noise, sampling, draw, bucket=f"{per_day}/day")


def cumulative(rng: np.random.Generator, days: int) -> Series:
    """A stock that only grows (customers, lifetime revenue): a whole-table count, no window."""
    level, noise = _level(rng, days)
    adds = rng.poisson(float(rng.choice([20, 60, 300])) * level)
    start = float(rng.uniform(2_000, 200_000))
    values = start + np.cumsum(adds)
    # The level's own day-to-day noise is that of one day's adds, relative to the whole stock.
    relative = np.sqrt(adds.astype(float) + 1) / values

    def draw(day: int, factor: float, rng: np.random.Generator) -> tuple[float, None]:
        return float(values[day] * factor), None  # a join that loses a share of the rows

    return Series("cumulative", _contract("row_count", windowed=False), values.astype(float), None,
                  float(np.median(relative)), np.zeros(days), draw)


def holidays(rng: np.random.Generator, days: int) -> Series:
    """The volume family with a holiday or outage day every 8 to 20 days, kept in the history.

    Two in a row never fall on the same weekday: a weekday that is off two weeks running is a new
    pattern, not a holiday, and no detector could tell the difference.
    """
    series = volume(rng, days)
    values = series.values.copy()
    skip, day = set(), int(rng.integers(0, 10))
    while day < days:
        values[day] *= rng.uniform(0.3, 0.5) if rng.random() < 0.5 else rng.uniform(1.6, 2.2)
        skip.add(day)
        day += int(rng.choice([gap for gap in range(8, 21) if gap % 7]))
    return replace(series, family="holidays", values=values, skip=frozenset(skip))


FAMILIES: dict[str, Callable[[np.random.Generator, int], Series]] = {
    "volume": volume, "count": count, "ratio": ratio, "cumulative": cumulative, "holidays": holidays,
}


def anchor_band(values: np.ndarray, day: int, flagged: np.ndarray, weekday: bool,
                k: float = 3.0) -> tuple[float, float] | None:
    """Elementary-style: mean ± k (3) standard deviations of the last 14 points (of that weekday)."""
    days = np.arange(day)
    keep = ~flagged[:day]
    if weekday:
        keep &= (days % 7) == (day % 7)
    history = values[:day][keep][-14:]
    if len(history) < 14:
        return None
    mean, sd = float(history.mean()), float(history.std(ddof=1))
    return mean - k * sd, mean + k * sd
