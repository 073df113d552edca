"""The baseline as a forecast: where a contract's own healthy history says today's value should be.

A regression of the history on a level, a linear trend and, when the data shows it, one effect
per weekday: a robust fit (statsmodels' RLM, Huber's T) screens out outliers, then least squares
(statsmodels' OLS) on the rest gives the forecast, its standard error and the residual noise with
their exact degrees of freedom. Pure: numbers in, a Forecast out; `jobs.band` turns it into a band
in the metric's own units.

- Trend: always fitted. A growing or cumulative metric is compared with where its trend says it
  should be today, not with a median that lags it; on a flat series the slope is ~0 and costs one
  degree of freedom.
- Weekly seasonality, found in the data: with `auto`, the weekday effects are kept when an F test
  of all six together rejects "no weekday pattern" at p < SEASONAL_P, given at least
  MIN_PER_WEEKDAY points on every weekday. The test is lenient on purpose: a pattern left out
  pages on every quiet weekend, while one kept for nothing only widens the band by about a tenth.
  `weekly` forces them (one point per weekday is then enough to fit), `none` leaves them out.
- Robust, then exact: a holiday or an unflagged outage in the history would pull a least-squares
  fit and inflate its noise, so points more than OUTLIER_Z robust scales from the Huber fit are
  left out first (three in four weeks at most, one per weekday). On the rest, least squares is fully efficient and
  its t interval exact under normal noise; a robust scale alone (a MAD of residuals) is neither:
  it is not corrected for the 8 parameters fitted and read ~15% narrow, 5 false alarms per 1,000
  days in the benchmark, and Huber weights alone left holidays inflating the band.
- Honest with few points: `param_var` (the variance of the fitted value itself, from the
  parameter covariance) and `df` (residual degrees of freedom, for t quantiles) widen the band
  when history is short, instead of a z from the spread of a handful of points.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np

SEASONAL_P = 0.01  # F-test p-value below which a weekday pattern is kept
MIN_PER_WEEKDAY = 2  # auto-detection needs each weekday at least this often
MIN_FOR_SEASONAL = 14  # ... and at least this many points in all
TOLERANCE = 1e-5  # RLM convergence: far below any band width, ~2x fewer iterations than the default
OUTLIER_Z = 5.0  # robust scales from the robust fit: a point further out is left out of the forecast
MAX_OUTLIERS = 0.12  # ... but never more than this share of the history (3 of 28 days)

Seasonality = Literal["auto", "none", "weekly"]


@dataclass(frozen=True)
class Forecast:
    """Today's value as the history predicts it, in the space the series was fitted in."""

    mean: float
    param_var: float  # variance of `mean` from the fitted parameters' uncertainty
    resid_var: float  # residual variance around the fit: day-to-day noise of the history
    df: int  # residual degrees of freedom (points minus parameters), for t quantiles
    n: int
    seasonal: bool
    slope: float  # per day, in the fitted space (log space: relative growth per day)


def fit(days: np.ndarray, values: np.ndarray, weekdays: np.ndarray, today: float, today_weekday: int,
        seasonality: Seasonality = "auto") -> Forecast:
    """Fit the history (`days` since any origin, Monday=0 `weekdays`) and forecast `today`."""
    days, values = np.asarray(days, dtype=float), np.asarray(values, dtype=float)
    weekdays = np.asarray(weekdays, dtype=int)
    centre = float(days.mean())
    candidate = _may_be_seasonal(weekdays, len(values), seasonality)
    inliers = _inliers(values, _design(days, weekdays, centre, candidate))
    days, values, weekdays = days[inliers], values[inliers], weekdays[inliers]
    seasonal = candidate and (seasonality == "weekly" or _weekday_pattern(values, _design(days, weekdays, centre, True)))
    design = _design(days, weekdays, centre, seasonal)
    df = max(len(values) - design.shape[1], 1)
    result = _ols(values, design)
    if result is None:  # a flat history: nothing varies, so there is nothing to be unsure about
        return Forecast(float(np.median(values)), 0.0, 0.0, df, len(values), seasonal, 0.0)
    row = _design(np.array([today], dtype=float), np.array([today_weekday]), centre, seasonal)[0]
    params, cov = np.asarray(result.params), np.asarray(result.cov_params())
    return Forecast(mean=float(row @ params), param_var=float(max(row @ cov @ row, 0.0)),
                    resid_var=float(result.scale), df=df, n=len(values), seasonal=seasonal, slope=float(params[1]))


def _design(days: np.ndarray, weekdays: np.ndarray, centre: float, seasonal: bool) -> np.ndarray:
    """Level, trend (centred, so the level is the window's middle) and sum-to-zero weekday effects."""
    columns = [np.ones_like(days), days - centre]
    if seasonal:
        sunday = (weekdays == 6).astype(float)
        columns += [(weekdays == day).astype(float) - sunday for day in range(6)]
    return np.column_stack(columns)


def _may_be_seasonal(weekdays: np.ndarray, n: int, seasonality: Seasonality) -> bool:
    counts = np.bincount(weekdays, minlength=7)
    if seasonality == "weekly":
        return bool(counts.min() >= 1)
    return seasonality == "auto" and n >= MIN_FOR_SEASONAL and counts.min() >= MIN_PER_WEEKDAY


def _inliers(values: np.ndarray, design: np.ndarray) -> np.ndarray:
    """The points a robust fit does not call outliers: a holiday or an unflagged outage in the history.

    An outlier is more than OUTLIER_Z robust scales from a robust fit. They go one at a time,
    worst first, refitting after each (a big holiday inflates the scale enough to hide a smaller
    one until it is gone), at most MAX_OUTLIERS of the points, so a noisy history is never
    thinned to its calmest days. With weekday effects, at most one point of each weekday goes:
    when two of four Sundays are "outliers", which two is a guess, and a weekday left without
    points has no effect to fit.
    """
    keep = np.ones(len(values), dtype=bool)
    if np.ptp(values) == 0 or len(values) <= design.shape[1] + 2:
        return keep
    weekdays = _weekday_of(design)
    dropped: set[int] = set()
    params = None
    for _ in range(max(1, int(MAX_OUTLIERS * len(values)))):
        robust = _robust(values[keep], design[keep], params)
        if robust is None:
            break
        params = robust.params
        # The MAD of residuals ignores the parameters fitted: correct it, or it reads narrow on 28 points.
        scale = robust.scale * np.sqrt(keep.sum() / max(keep.sum() - design.shape[1], 1))
        distance = np.full(len(values), -1.0)
        distance[keep] = np.abs(np.asarray(robust.resid)) / scale
        if weekdays is not None:
            distance[np.isin(weekdays, list(dropped))] = -1.0
        worst = int(np.argmax(distance))
        if distance[worst] <= OUTLIER_Z:
            break
        keep[worst] = False
        if weekdays is not None:
            dropped.add(int(weekdays[worst]))
    return keep


def _robust(values: np.ndarray, design: np.ndarray, start: np.ndarray | None):
    """Tukey's biweight fit, started from Huber's, with a MAD scale; None when it cannot be had.

    Tukey's biweight gives a holiday no weight at all, so the fit does not lean towards it and its
    residual shows its full size (Huber's still half-absorbs it). The MAD ignores the holidays'
    size altogether (Huber's proposal-2 scale read twice the noise with two holidays in 28 days,
    and then found no outlier at all).
    """
    from statsmodels.robust.norms import HuberT, TukeyBiweight
    from statsmodels.robust.robust_linear_model import RLM

    if np.ptp(values) == 0 or len(values) <= design.shape[1] + 2:
        return None
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            if start is None:
                start = RLM(values, design, M=HuberT()).fit(tol=TOLERANCE).params
            result = RLM(values, design, M=TukeyBiweight()).fit(start_params=start, tol=TOLERANCE)
        except (ValueError, ZeroDivisionError, np.linalg.LinAlgError):
            return None
    if not np.isfinite(result.scale) or result.scale <= 0 or not np.all(np.isfinite(result.params)):
        return None
    return result


def _weekday_of(design: np.ndarray) -> np.ndarray | None:
    """Each row's weekday from a seasonal design (its sum-to-zero columns), None for a plain one."""
    if design.shape[1] < 8:
        return None
    effects = design[:, 2:8]
    return np.where(effects.min(axis=1) < 0, 6, effects.argmax(axis=1))


def _weekday_pattern(values: np.ndarray, design: np.ndarray) -> bool:
    """Whether the six weekday effects together are real: an F test at SEASONAL_P."""
    result = _ols(values, design)
    if result is None or len(values) <= design.shape[1]:
        return False
    restriction = np.zeros((6, design.shape[1]))
    restriction[:, 2:] = np.eye(6)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            return bool(float(result.f_test(restriction).pvalue) < SEASONAL_P)
        except (ValueError, np.linalg.LinAlgError):
            return False


def _ols(values: np.ndarray, design: np.ndarray):
    """Least squares on the inliers, or None when nothing is left to estimate noise from."""
    from statsmodels.regression.linear_model import OLS

    if np.ptp(values) == 0 or len(values) <= design.shape[1]:
        return None
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        result = OLS(values, design).fit()
    if not np.isfinite(result.scale) or result.scale <= 0 or not np.all(np.isfinite(result.params)):
        return None
    return result
