"""Detection: judge one observation against its contract's own robust baseline (pure, no I/O).

Defaults, and why each one:

- Baseline: the contract's observations from the `baseline.days` (28) days before the current
  window, keyed by `window_start` when windowed else `observed_at`. Four weeks hold four of each
  weekday and predate most slow drifts. Excluded, because each is how other tools' baselines
  get polluted: the current observation/window itself (a value must not vouch for itself),
  `anomalous=True` points (a long incident would otherwise drag the median to the broken level
  and declare it normal), points before `since` (an accepted re-baseline: the old level no
  longer applies), value None (distribution: an unusable profile), and all but the latest
  observation of a re-observed window (a re-run supersedes the earlier reading).
- Complete windows only: a window still open when observed (`window_end > observed_at`) is
  partial and would read as a drop, so it is "learning", never scored.
- Robust stats: median and MAD, sigma = 1.4826 × MAD (the factor makes MAD estimate the
  standard deviation under normal noise). One outlier moves neither, unlike mean and stdev.
- Anomaly iff every floor is crossed in the alerting direction: |z| ≥ threshold.z (3.0),
  |dev| ≥ threshold.relative (0.10) × |median| and |dev| ≥ threshold.absolute (0). The z floor
  keeps normal noise quiet; the relative and absolute floors keep tiny changes on very steady
  metrics from paging anyone. Band = median ± max(z·sigma, relative·|median|, absolute): a value
  is anomalous exactly when it lies on or beyond the band edge on the alerting side.
- Zero-variance rule: when MAD is 0 (over half the baseline equals the median, e.g. a flat
  history) z is undefined; any non-zero deviation counts as infinite z, so the relative and
  absolute floors decide alone. A flat 1,000/day alerts at 900 (10%) and not at 950 (5%).
  Assessment.z is then None (not inf, which JSON cannot carry) and the reason says "flat history".
- Minimum points: fewer than `baseline.min_points` (7) healthy points → "learning"; a median of
  fewer days is one bad day away from nonsense. When flagged points are what left too few, the
  baseline reaches back up to twice `baseline.days` for the newest healthy points instead, so a
  lasting regression keeps being scored (and its incident kept open) rather than going quiet
  as "learning" a week in.
- Weekly seasonality: compare with the same weekday only, given `min_points_per_weekday` (4, all
  a 28-day baseline can hold); with fewer it is "learning". The centre is the same-weekday
  median; the noise scale (MAD) is pooled over every weekday's deviation from its own weekday
  median, relative to it, because four points alone give a MAD that swings from a tenth to
  twice the true noise (the band would flap between paging on noise and missing real drops). It never falls back to every day: a
  quiet Sunday judged against weekdays is a false page, and once flagged it would stay out of
  every later Sunday baseline.
- Direction: drop alerts only below the band, rise only above, both either; freshness always rise.
- Zero rows: a volume or row_count of 0 (row_count: or None) is an outage and pages even while
  learning, unless most of the contract's own recent points (weekly: same weekday), and at least
  two, are 0 — a business closed on Sundays. Past zeros count here even when they were flagged
  anomalous: detection flags the first closed Sunday, and if flagged zeros never counted, every
  later Sunday would page forever. Two guards keep a real outage from turning "normal": one past
  zero is not a pattern, and a zero right after an anomalous observation continues that incident.
- Freshness: the value is the lag in seconds; anomalous iff it exceeds `max_lag`. No baseline is
  needed; one is attached for display when history allows. change_pct is relative to max_lag.
- Distribution: see `jobs.distribution`; anomalous iff PSI > threshold.psi (0.2) for categories,
  or quantile shift > threshold.quantile_shift (0.5 IQR) for numbers. Needs min_points profiles.
- Nothing to score: a band kind whose value is None (a ratio over an empty window) is "learning",
  never healthy, so it cannot resolve an open incident; a freshness lag of None (no timestamp at
  all) is anomalous. A naive `since` is read as UTC, like every time Cairn records.
"""

from __future__ import annotations

import calendar
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from statistics import median

from jobs.contracts import Contract, Direction, Kind, ThresholdSpec
from jobs.distribution import assess_profiles, is_usable
from jobs.records import Assessment, AssessmentStatus, BaselineStats, Observation

MAD_TO_SIGMA = 1.4826  # MAD × this estimates the standard deviation of normal noise
ZERO_KINDS = (Kind.volume, Kind.row_count)
MIN_ZEROS = 2  # past zeros before a zero can be normal


@dataclass(frozen=True)
class Baseline:
    """The healthy points an observation is judged against, and how they were chosen."""

    points: tuple[Observation, ...]
    seasonal: bool
    span: str  # "28-day" or "28-day Sunday", for reasons
    shortfall: str | None = None  # the learning reason when there are too few points
    pool: tuple[Observation, ...] = ()  # seasonal: every weekday's points, for the noise scale


# --- choosing the baseline -------------------------------------------------------------------


def anchor(obs: Observation) -> datetime:
    """Where an observation sits in time: its window's start when windowed, else when observed."""
    return obs.window_start or obs.observed_at


def is_incomplete(obs: Observation) -> bool:
    """A window still open at observation time holds partial data."""
    return obs.window_end is not None and obs.window_end > obs.observed_at


def is_scorable(contract: Contract, obs: Observation) -> bool:
    """Whether an observation carries something to compare: a value, or a usable profile."""
    if contract.kind is Kind.distribution:
        return is_usable(obs.profile, contract.numeric)
    return obs.value is not None


def latest_per_window(observations: Sequence[Observation]) -> list[Observation]:
    """One observation per window: the latest reading supersedes earlier ones."""
    latest: dict[datetime, Observation] = {}
    for obs in observations:
        kept = latest.get(anchor(obs))
        if kept is None or (obs.observed_at, obs.id or 0) > (kept.observed_at, kept.id or 0):
            latest[anchor(obs)] = obs
    return sorted(latest.values(), key=anchor)


REACH_BACK = 2  # × baseline.days: how far a baseline short of healthy points may reach for more


def recent_history(
    contract: Contract, current: Observation, history: Sequence[Observation], since: datetime | None,
    *, days: int | None = None,
) -> list[Observation]:
    """Points from the baseline days (or `days`) before the current window, one per window, oldest first."""
    # Past incidents are still in: `healthy` drops them for the band, the zero rule needs them.
    end = anchor(current)
    start = end - timedelta(days=contract.baseline.days if days is None else days)
    if since is not None:
        # The store may hand back a naive timestamp; everything Cairn records is UTC.
        start = max(start, since if since.tzinfo else since.replace(tzinfo=timezone.utc))
    in_range = [
        obs
        for obs in history
        if start <= anchor(obs) < end and not (current.id is not None and obs.id == current.id)
    ]
    return latest_per_window(in_range)


def healthy(contract: Contract, points: Sequence[Observation]) -> list[Observation]:
    """Scorable points not flagged as past incidents."""
    return [obs for obs in points if not obs.anomalous and is_scorable(contract, obs)]


def same_weekday(points: Sequence[Observation], current: Observation) -> list[Observation]:
    """The points on the current observation's weekday."""
    day = anchor(current).weekday()
    return [obs for obs in points if anchor(obs).weekday() == day]


def choose_baseline(contract: Contract, current: Observation, points: Sequence[Observation]) -> Baseline:
    """Same-weekday points when seasonal, else every day; too few of them is learning.

    A seasonal contract never falls back to every day: a quiet Sunday judged against weekdays
    is a false page, and a page flagged anomalous would also stay out of every later baseline.
    """
    spec, days = contract.baseline, f"{contract.baseline.days}-day"
    if spec.seasonality == "weekly":
        weekday = calendar.day_name[anchor(current).weekday()]
        same = same_weekday(points, current)
        shortfall = None
        if len(same) < spec.min_points_per_weekday:
            shortfall = f"learning: {len(same)} of {spec.min_points_per_weekday} {weekday} baseline points"
        return Baseline(tuple(same), True, f"{days} {weekday}", shortfall, tuple(points))
    shortfall = None
    if len(points) < spec.min_points:
        shortfall = f"learning: {len(points)} of {spec.min_points} baseline points"
    return Baseline(tuple(points), False, days, shortfall)


def refill_baseline(contract: Contract, current: Observation, history: Sequence[Observation],
                    since: datetime | None) -> Baseline | None:
    """The newest healthy points from up to REACH_BACK × baseline.days, when flagged ones left too few.

    Excluding an incident's points must not silence it: after a week of a lasting regression every
    weekday has lost one of its four points and would drop to learning. The baseline instead keeps
    its size by reaching back past the incident for older healthy points (never past `since`).
    None when even that is too few: then the contract is genuinely learning.
    """
    spec = contract.baseline
    older = healthy(contract, recent_history(contract, current, history, since, days=REACH_BACK * spec.days))
    if spec.seasonality == "weekly":
        same = same_weekday(older, current)[-spec.min_points_per_weekday:]
        if len(same) < spec.min_points_per_weekday:
            return None
        weekday = calendar.day_name[anchor(current).weekday()]
        span = f"{reach(current, same[0])}-day {weekday}"
        pool = [obs for obs in older if anchor(obs) >= anchor(same[0])]
        return Baseline(tuple(same), True, span, None, tuple(pool))
    points = older[-spec.min_points:]
    if len(points) < spec.min_points:
        return None
    return Baseline(tuple(points), False, f"{reach(current, points[0])}-day")


def reach(current: Observation, oldest: Observation) -> int:
    """How many days back a baseline reaches, for reasons ("its 35-day Sunday median")."""
    return (anchor(current) - anchor(oldest)).days


# --- the band rule ---------------------------------------------------------------------------


def robust_stats(values: Sequence[float]) -> tuple[float, float]:
    """Median and median absolute deviation."""
    mid = median(values)
    return mid, median(abs(v - mid) for v in values)


def robust_z(dev: float, sigma: float) -> float:
    """dev / sigma; on a flat history (sigma 0) any deviation is infinitely unusual."""
    if sigma > 0:
        return dev / sigma
    return math.copysign(math.inf, dev) if dev else 0.0


def band_width(threshold: ThresholdSpec, sigma: float, mid: float) -> float:
    """Half-width of the band: the largest of the three floors."""
    return max(threshold.z * sigma, threshold.relative * abs(mid), threshold.absolute)


def crosses_floors(threshold: ThresholdSpec, dev: float, z: float, mid: float) -> bool:
    """Every floor crossed: robust z, relative change and absolute change."""
    return (
        abs(z) >= threshold.z
        and abs(dev) >= threshold.relative * abs(mid)
        and abs(dev) >= threshold.absolute
    )


def alerts_in_direction(direction: Direction, dev: float) -> bool:
    """Whether a deviation of this sign is one the contract alerts on."""
    return {Direction.drop: dev < 0, Direction.rise: dev > 0, Direction.both: dev != 0}[direction]


def seasonal_mad(pool: Sequence[Observation], mid: float) -> float | None:
    """The noise of a weekly-seasonal metric, pooled over every weekday, at this weekday's level.

    Four same-weekday points give a MAD that swings from a tenth to twice the true noise, so the
    band would flap between paging on noise and missing real drops. Each point's deviation from
    its own weekday's median, relative to that median, is pooled across the whole baseline (about
    28 points) and scaled back to the current weekday's median. None when too few points.
    """
    by_day: dict[int, list[float]] = {}
    for obs in pool:
        by_day.setdefault(anchor(obs).weekday(), []).append(obs.value)  # type: ignore[arg-type]
    residuals = []
    for values in by_day.values():
        centre = median(values)
        if len(values) >= 2 and centre:
            residuals += [(v - centre) / abs(centre) for v in values]
    if len(residuals) < 7:
        return None
    return robust_stats(residuals)[1] * abs(mid)


def band_stats(values: Sequence[float], threshold: ThresholdSpec, seasonal: bool,
               pool: Sequence[Observation] = ()) -> BaselineStats:
    """Median, MAD and the band they imply (symmetric whatever the direction)."""
    mid, mad = robust_stats(values)
    pooled = seasonal_mad(pool, mid) if seasonal and pool else None
    mad = mad if pooled is None else pooled
    width = band_width(threshold, MAD_TO_SIGMA * mad, mid)
    return BaselineStats(mid, mad, len(values), mid - width, mid + width, seasonal)


def change_pct(value: float, mid: float) -> float | None:
    """Percent change from the median; undefined against a zero median."""
    return (value - mid) / abs(mid) * 100 if mid else None


def is_zero_outage(contract: Contract, value: float | None) -> bool:
    """A zero volume or row count (a row count may come back None for an empty relation)."""
    return contract.kind in ZERO_KINDS and (value == 0 or (value is None and contract.kind is Kind.row_count))


def count_zeros(contract: Contract, points: Sequence[Observation]) -> int:
    """How many of the points measured zero rows."""
    return sum(1 for obs in points if is_zero_outage(contract, obs.value))


def zeros_are_normal(contract: Contract, reference: Sequence[Observation]) -> bool:
    """Most reference points are zero, and more than one: one past zero is an incident, two a pattern."""
    zeros = count_zeros(contract, reference)
    return zeros >= MIN_ZEROS and zeros * 2 > len(reference)


def outage_ongoing(points: Sequence[Observation]) -> bool:
    """The observation just before this one was itself an incident: a zero now continues it."""
    return bool(points) and points[-1].anomalous


# --- assessment ------------------------------------------------------------------------------


def assess(
    contract: Contract, current: Observation, history: Sequence[Observation], *, since: datetime | None = None
) -> Assessment:
    """Score one observation of `contract` against its own healthy history."""
    if is_incomplete(current):
        reason = (
            f"learning: window {current.window_start:%Y-%m-%d %H:%M}–{current.window_end:%Y-%m-%d %H:%M} "
            f"was still open when observed at {current.observed_at:%Y-%m-%d %H:%M}; only complete windows are scored"
        )
        return Assessment(contract.id, AssessmentStatus.learning, reason, current.value)
    recent = recent_history(contract, current, history, since)
    base = choose_baseline(contract, current, healthy(contract, recent))
    if base.shortfall and any(obs.anomalous for obs in recent):
        base = refill_baseline(contract, current, history, since) or base
    if contract.kind is Kind.freshness:
        return assess_freshness(contract, current, base)
    if contract.kind is Kind.distribution:
        return assess_distribution(contract, current, base)
    if is_zero_outage(contract, current.value):
        return assess_zero(contract, current, recent, base)
    if current.value is None:
        return Assessment(contract.id, AssessmentStatus.learning, f"{metric_label(contract)}: no value to score", None)
    if base.shortfall:
        return Assessment(contract.id, AssessmentStatus.learning, base.shortfall, current.value)
    return assess_band(contract, current.value, base)


def assess_band(contract: Contract, value: float, base: Baseline) -> Assessment:
    """The band rule: anomalous iff every floor is crossed on the side the contract alerts on."""
    stats = band_stats([o.value for o in base.points], contract.threshold, base.seasonal,  # type: ignore[misc]
                       base.pool)
    sigma = MAD_TO_SIGMA * stats.mad
    dev = value - stats.median
    z = robust_z(dev, sigma)
    beyond = crosses_floors(contract.threshold, dev, z, stats.median)
    direction = contract.effective_direction
    anomalous = beyond and alerts_in_direction(direction, dev)
    reason = band_reason(contract, value, stats, z, base.span, beyond, anomalous)
    status = AssessmentStatus.anomalous if anomalous else AssessmentStatus.healthy
    return Assessment(contract.id, status, reason, value, stats, change_pct(value, stats.median), z if sigma else None)


def assess_zero(contract: Contract, current: Observation, recent: Sequence[Observation], base: Baseline) -> Assessment:
    """A zero pages, learning or not, unless the contract's own (same-weekday) history is mostly zero."""
    # Past zeros count even when flagged: the first closed Sunday pages and is flagged; ignoring it
    # would make every later Sunday page too, forever. A zero right after an incident continues it.
    seasonal = contract.baseline.seasonality == "weekly"
    reference = same_weekday(recent, current) if seasonal else list(recent)
    where = f"{calendar.day_name[anchor(current).weekday()]} " if seasonal else ""
    zeros = count_zeros(contract, reference)
    counted = f"{zeros} of {len(reference)} {where}baseline points are 0"
    label, usual = metric_label(contract), zeros_are_normal(contract, reference)
    if usual and not outage_ongoing(recent):
        stats = band_stats([o.value or 0.0 for o in reference], contract.threshold, seasonal)
        return Assessment(contract.id, AssessmentStatus.healthy, f"{label} is 0, as usual: {counted}", 0.0, stats)
    values = [o.value for o in base.points]
    stats = None if base.shortfall else band_stats(values, contract.threshold, base.seasonal)  # type: ignore[arg-type]
    pct = change_pct(0.0, stats.median) if stats else None
    why = "it continues an open incident" if usual else counted
    reason = f"{label} is 0: zero rows are an outage unless the baseline holds zeros ({why})"
    return Assessment(contract.id, AssessmentStatus.anomalous, reason, 0.0, stats, pct)


def assess_freshness(contract: Contract, current: Observation, base: Baseline) -> Assessment:
    """Lag over max_lag pages; the history band is attached for display only."""
    max_lag = contract.max_lag.total_seconds()  # type: ignore[union-attr]
    label = metric_label(contract)
    if current.value is None:
        reason = f"{label}: no timestamp found, so the data is of unknown age (max_lag {fmt_duration(max_lag)})"
        return Assessment(contract.id, AssessmentStatus.anomalous, reason, None)
    lag = current.value
    stats = z = None
    if not base.shortfall:
        stats = band_stats([o.value for o in base.points], contract.threshold, base.seasonal,  # type: ignore[misc]
                       base.pool)
        sigma = MAD_TO_SIGMA * stats.mad
        z = robust_z(lag - stats.median, sigma) if sigma else None
    pct = (lag - max_lag) / max_lag * 100 if max_lag else None
    late = lag > max_lag
    verdict = f"is {abs(pct or 0):.0f}% over" if late else "is within"
    reason = f"{label} {fmt_duration(lag)} {verdict} its max_lag {fmt_duration(max_lag)}"
    status = AssessmentStatus.anomalous if late else AssessmentStatus.healthy
    return Assessment(contract.id, status, reason, lag, stats, pct, z)


def assess_distribution(contract: Contract, current: Observation, base: Baseline) -> Assessment:
    """PSI (categorical) or quantile shift (numeric) against the baseline profiles."""
    if not is_usable(current.profile, contract.numeric):
        reason = f"distribution of {contract.column}: no usable profile to score"
        return Assessment(contract.id, AssessmentStatus.learning, reason, None)
    if base.shortfall:
        return Assessment(contract.id, AssessmentStatus.learning, base.shortfall, None)
    profiles = [o.profile for o in base.points]
    verdict = assess_profiles(contract, current.profile, profiles, base.span, base.seasonal)  # type: ignore[arg-type]
    return verdict


# --- reasons ---------------------------------------------------------------------------------


def metric_label(contract: Contract) -> str:
    """How a reason names the metric."""
    return {
        Kind.volume: contract.expr or "volume",
        Kind.row_count: f"{contract.relation_name} row count",
        Kind.ratio: f"{contract.numerator} / {contract.denominator}",
        Kind.null_rate: f"null rate of {contract.column}",
        Kind.freshness: f"{contract.relation_name}.{contract.column} lag",
        Kind.distribution: f"distribution of {contract.column}",
    }[contract.kind]


def band_reason(
    contract: Contract, value: float, stats: BaselineStats, z: float, span: str, beyond: bool, anomalous: bool
) -> str:
    """E.g. 'sum(net_revenue) 8,120 is 18.4% below its 28-day median 9,950 (robust z -5.1; band 9,100–10,800)'."""
    label, band = metric_label(contract), f"{fmt_number(stats.lower)}–{fmt_number(stats.upper)}"
    if not beyond:
        return f"{label} {fmt_number(value)} is within its {span} band {band} (median {fmt_number(stats.median)})"
    side = "below" if value < stats.median else "above"
    pct = change_pct(value, stats.median)
    move = f"{abs(pct):.1f}% {side}" if pct is not None else side
    score = f"robust z {z:.1f}" if math.isfinite(z) else "flat history"
    text = f"{label} {fmt_number(value)} is {move} its {span} median {fmt_number(stats.median)} ({score}; band {band})"
    if not anomalous:
        text += f", but only {'drops' if contract.effective_direction is Direction.drop else 'rises'} alert"
    return text


def fmt_number(x: float) -> str:
    """Thousands separators for big values, three significant digits for small ones."""
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 1:
        return f"{x:.2f}".rstrip("0").rstrip(".")
    return f"{x:.3g}"


def fmt_duration(seconds: float) -> str:
    """'2d 3h', '7h 12m', '45m', '30s'."""
    seconds = int(round(seconds))
    parts = [(seconds // 86400, "d"), (seconds % 86400 // 3600, "h"), (seconds % 3600 // 60, "m"), (seconds % 60, "s")]
    shown = [f"{n}{unit}" for n, unit in parts if n]
    return " ".join(shown[:2]) or "0s"
