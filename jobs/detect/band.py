"""The band around a forecast: business noise from the history, sampling noise from today's counts.

Pure: a contract's healthy history (value and count per window) and today's observation in,
a `Band` in the metric's own units out. `jobs.detect.baseline` decides what is history and what alerts.

- Space: amounts (volume, a stock's row count) are fitted on logs, so noise and growth are
  relative and the band stays above 0; a windowed row count on log(k + ½), so an empty window
  stays finite; a rate of counts (a null rate, a ratio of counts) on its empirical logit
  log((k + ½) / (n − k + ½)), where relative noise is symmetric and the band stays inside
  [0, 1]; a whole-table share as it is, clipped to [0, 1]; anything else (a ratio that can be
  negative) as it is.
- Count-aware noise, for windowed contracts (flows): a day's value is a sample, and its counts
  say how noisy that sample is. The history's residuals hold business noise plus each day's
  sampling noise; the latter is subtracted (Poisson on a count or a sum's rows, binomial on a
  rate) to leave the business noise, and today's own sampling noise is added back at today's
  counts. So a ratio over 40 orders a day gets a wide band and one over 40,000 a narrow one,
  with no threshold tuned by hand. Whole-table contracts (stocks) have no sampling noise.
- A sum's rows are not always Poisson (invoices fall due on schedule): where the history is
  quieter than its rows imply, the sampling term shrinks to what the history shows.
- Small counts are discrete and skewed, so their band comes from exact distributions rather
  than a normal approximation: a negative binomial for a windowed row count (Poisson sampling,
  gamma business noise), a beta-binomial for a rate with few events (binomial sampling, beta
  business noise).
- Honest with few points: continuous bands use the t quantile with the fit's degrees of freedom
  at the normal tail of `z`; discrete ones widen their business variance by the same ratio.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

import numpy as np

from jobs.contracts.spec import Kind
from jobs.detect.forecast import Forecast, Seasonality, fit

HALF = 0.5  # the half event that keeps an empty window's log and logit finite
FEW_EVENTS = 30  # below this many expected events (or non-events) a rate's band is exactly discrete


class Space(str, Enum):
    log = "log"  # amounts and stocks: log(value)
    count = "count"  # a windowed row count: log(k + ½)
    rate = "rate"  # a windowed rate of counts: empirical logit
    share = "share"  # a whole-table rate: as it is, inside [0, 1]
    raw = "raw"


@dataclass(frozen=True)
class Point:
    """One window of history as the band sees it."""

    at: datetime
    value: float
    count: int | None = None  # rows in the window, or a rate's denominator


@dataclass(frozen=True)
class Band:
    """Where today's value should be, and how far from it is still noise, in the metric's units."""

    expected: float
    lower: float
    upper: float
    z: float  # today's distance from the forecast in predictive standard deviations
    n: int
    df: int
    seasonal: bool
    trend: float  # per day: relative (log spaces) or absolute
    space: Space


def space_for(kind: Kind, history: Sequence[Point], counted: bool) -> Space:
    """Which transform the history is fitted on (see the module docstring)."""
    values = [p.value for p in history]
    if kind is Kind.row_count and counted and all(v >= 0 for v in values):
        return Space.count
    if kind in (Kind.volume, Kind.row_count) and all(v > 0 for v in values):
        return Space.log
    if kind in (Kind.ratio, Kind.null_rate) and all(0 <= v <= 1 for v in values):
        return Space.rate if counted and all(p.count for p in history) else Space.share
    return Space.raw


def judge(kind: Kind, history: Sequence[Point], today: Point, *, counted: bool, seasonality: Seasonality,
          z: float) -> Band:
    """The band for `today` from `history` (healthy points, oldest first).

    `counted`: the contract measures a window (a flow), so its counts carry sampling noise.
    """
    counted = counted and all(p.count is not None for p in history) and today.count is not None
    space = space_for(kind, history, counted)
    origin = history[0].at
    days = np.array([(p.at - origin).total_seconds() / 86400 for p in history])
    weekdays = np.array([p.at.weekday() for p in history])
    values = np.array([p.value for p in history], dtype=float)
    counts = np.array([p.count or 0 for p in history], dtype=float)
    forecast = fit(days, _transform(space, values, counts), weekdays,
                   (today.at - origin).total_seconds() / 86400, today.at.weekday(), seasonality)
    sampling = _sampling_var(space, kind, values, counts) if counted else 0.0
    if space is Space.count:
        return _count_band(forecast, max(forecast.resid_var - sampling, 0.0), today, z)
    if space is Space.rate:
        return _rate_band(forecast, max(forecast.resid_var - sampling, 0.0), today, z)
    share = min(1.0, forecast.resid_var / sampling) if sampling > 0 else 0.0
    today_sampling = share * _sum_sampling(forecast, values, counts) if counted and kind is Kind.volume else 0.0
    business = forecast.resid_var - share * sampling
    return _continuous_band(forecast, business + today_sampling, today, z, space)


def tail(z: float) -> float:
    """The one-sided tail probability a band edge stands for."""
    from scipy import stats

    return float(stats.norm.sf(z))


def _quantile(z: float, df: int) -> float:
    """The t quantile at the normal tail of `z`: wider than z when the fit has few degrees of freedom."""
    from scipy import stats

    return float(stats.t.isf(tail(z), df))


def _inflation(z: float, df: int) -> float:
    """How much wider few degrees of freedom make the band, as a variance ratio (t against normal)."""
    return (_quantile(z, df) / z) ** 2


def _transform(space: Space, values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    if space is Space.log:
        return np.log(values)
    if space is Space.count:
        return np.log(values + HALF)
    if space is Space.rate:
        events = np.round(values * counts)
        return np.log((events + HALF) / (counts - events + HALF))
    return values


def _sampling_var(space: Space, kind: Kind, values: np.ndarray, counts: np.ndarray) -> float:
    """The history's mean sampling variance, in the fitted space."""
    if space is Space.count:
        return float(np.mean(1.0 / (values + HALF)))
    if space is Space.rate:
        events = np.round(values * counts)
        return float(np.mean(1.0 / (events + HALF) + 1.0 / (counts - events + HALF)))
    if space is Space.log and kind is Kind.volume:
        return float(np.mean(1.0 / np.maximum(counts, 1.0)))
    return 0.0


def _sum_sampling(forecast: Forecast, values: np.ndarray, counts: np.ndarray) -> float:
    """Today's sampling variance of a sum, at the rows the forecast implies (rows per unit of value)."""
    rows_per_unit = float(np.median(counts / values))
    return 1.0 / max(math.exp(forecast.mean) * rows_per_unit, 1.0)


def _continuous_band(forecast: Forecast, noise_var: float, today: Point, z: float, space: Space) -> Band:
    sd = math.sqrt(max(noise_var, 0.0) + forecast.param_var)
    half = _quantile(z, forecast.df) * sd
    mean = forecast.mean
    if space is Space.log:
        expected, lower, upper = math.exp(mean), math.exp(mean - half), math.exp(mean + half)
        distance = (math.log(today.value) - mean) if today.value > 0 else -math.inf
    else:
        expected, lower, upper = mean, mean - half, mean + half
        distance = today.value - mean
        if space is Space.share:
            lower, upper = max(lower, 0.0), min(upper, 1.0)
    trend = math.expm1(forecast.slope) if space is Space.log else forecast.slope
    return Band(expected, lower, upper, _z(distance, sd), forecast.n, forecast.df, forecast.seasonal, trend, space)


def _count_band(forecast: Forecast, business: float, today: Point, z: float) -> Band:
    """Negative binomial: Poisson sampling of a count whose rate varies with the business noise."""
    from scipy import stats

    mean = max(math.exp(forecast.mean) - HALF, 1e-9)
    relative = (business + forecast.param_var) * _inflation(z, forecast.df)
    alpha = tail(z)
    if relative <= 1e-12:
        lower, upper = stats.poisson.ppf(alpha, mean), stats.poisson.isf(alpha, mean)
    else:
        size = 1.0 / relative
        lower, upper = (stats.nbinom.ppf(alpha, size, size / (size + mean)),
                        stats.nbinom.isf(alpha, size, size / (size + mean)))
    sd = math.sqrt(mean + relative * mean**2)
    return Band(mean, float(lower), float(upper), _z(today.value - mean, sd), forecast.n, forecast.df,
                forecast.seasonal, math.expm1(forecast.slope), Space.count)


def _rate_band(forecast: Forecast, business: float, today: Point, z: float) -> Band:
    """Today's events out of today's denominator, around the rate the logit forecast expects."""
    from scipy import stats

    rate = 1.0 / (1.0 + math.exp(-forecast.mean))
    n = int(today.count or 0)
    logit_var = business + forecast.param_var
    trend = forecast.slope * rate * (1 - rate)  # d rate / d day at the forecast
    if n <= 0:
        return Band(rate, 0.0, 1.0, 0.0, forecast.n, forecast.df, forecast.seasonal, trend, Space.rate)
    sampling = 1.0 / (n * rate * (1 - rate))
    sd = math.sqrt(logit_var + sampling)
    observed = math.log((today.value * n + HALF) / (n - today.value * n + HALF))
    score = _z(observed - forecast.mean, sd)
    if n * min(rate, 1 - rate) >= FEW_EVENTS:
        half = _quantile(z, forecast.df) * sd
        lower, upper = (1.0 / (1.0 + math.exp(-(forecast.mean - half))),
                        1.0 / (1.0 + math.exp(-(forecast.mean + half))))
        return Band(rate, lower, upper, score, forecast.n, forecast.df, forecast.seasonal, trend, Space.rate)
    # Few events: the rate varies as a beta whose variance is the business noise, mapped from the logit.
    var = min(logit_var * _inflation(z, forecast.df) * (rate * (1 - rate)) ** 2, rate * (1 - rate) * 0.999)
    alpha = tail(z)
    if var <= 1e-15:
        lower, upper = stats.binom.ppf(alpha, n, rate), stats.binom.isf(alpha, n, rate)
    else:
        spread = rate * (1 - rate) / var - 1
        a, b = rate * spread, (1 - rate) * spread
        lower, upper = stats.betabinom.ppf(alpha, n, a, b), stats.betabinom.isf(alpha, n, a, b)
    return Band(rate, float(lower) / n, float(upper) / n, score, forecast.n, forecast.df, forecast.seasonal,
                trend, Space.rate)


def _z(distance: float, sd: float) -> float:
    if sd > 0:
        return distance / sd
    return math.copysign(math.inf, distance) if distance else 0.0
