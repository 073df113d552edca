"""The baseline as a forecast: where a contract's own healthy history says today's value should be.

A regression of the history on a level, a linear trend and, when the data shows it, one effect
per weekday: a robust fit (statsmodels' RLM, Huber's T) screens out outliers, then least squares
(statsmodels' OLS) on the rest gives the forecast, its standard error and the residual noise with
their exact degrees of freedom. Pure: numbers in, a Forecast out; `jobs.detect.band` turns it into a band
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
  fit and inflate its noise, so outliers are left out first (`_inliers`: three in four weeks at
  most, one per weekday). On the rest, least squares is fully efficient and its t interval exact
  under normal noise; a robust scale alone (a MAD of residuals) is neither: it is not corrected
  for the 8 parameters fitted and read ~15% narrow, 5 false alarms per 1,000 days in the
  benchmark, and Huber weights alone left holidays inflating the band.
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
OUTLIER_P = 0.01  # share of ordinary histories that would lose a good day to the outlier test
MAX_OUTLIERS = 0.12  # at most this share of the history is suspected (3 of 28 days)

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
    """The points that are not outliers: a holiday or an unflagged outage in the history.

    The suspects are the points furthest from a robust fit, at most MAX_OUTLIERS of them (and one
    per weekday with weekday effects: when two of four Sundays look off, which two is a guess). Each
    is then judged against a least-squares fit of all the other points, suspects left out, the way
    today's value is judged: its prediction t-statistic. It is an outlier when that t is past the
    level at which a normal history would lose a point in only OUTLIER_P of windows. Judged against
    a fit without any suspect, two holidays cannot hide each other (a fit with one of them in calls
    the other ordinary); judged by least squares rather than a robust scale, ordinary tail days stay
    in (a MAD of 28 residuals swings widely, and a low one threw good days out and narrowed the band).
    """
    keep = np.ones(len(values), dtype=bool)
    room = int(MAX_OUTLIERS * len(values))
    if room < 1 or np.ptp(values) == 0 or len(values) - room <= design.shape[1] + 2:
        return keep
    robust = _robust(values, design)
    if robust is None:
        return keep
    weekdays = _weekday_of(design)
    suspects: list[int] = []
    for i in np.argsort(-np.abs(np.asarray(robust.resid))):
        if len(suspects) == room:
            break
        if weekdays is None or weekdays[i] not in {weekdays[j] for j in suspects}:
            suspects.append(int(i))
    rest = np.ones(len(values), dtype=bool)
    rest[suspects] = False
    clean = _ols(values[rest], design[rest])
    if clean is None:
        return keep
    from scipy import stats

    limit = stats.t.isf(OUTLIER_P / 2 / len(values), clean.df_resid)
    cov = np.asarray(clean.cov_params()) / clean.scale  # (X'X)^-1 of the clean fit
    for i in suspects:
        row = design[i]
        spread = np.sqrt(clean.scale * (1 + row @ cov @ row))
        if abs(values[i] - row @ np.asarray(clean.params)) > limit * spread:
            keep[i] = False
    return keep


def _robust(values: np.ndarray, design: np.ndarray):
    """Tukey's biweight fit, started from Huber's: it gives a holiday no weight, so its residual shows
    its full size (Huber's still half-absorbs it). None when it cannot be had."""
    from statsmodels.robust.norms import HuberT, TukeyBiweight
    from statsmodels.robust.robust_linear_model import RLM

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
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
