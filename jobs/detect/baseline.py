"""Detection: judge one observation against the forecast its contract's own healthy history makes.

Pure, no I/O. Which history, and what alerts, are decided here; the forecast is `jobs.detect.forecast`
(robust level, trend and weekly pattern) and the band around it `jobs.detect.band` (business noise from
the history, sampling noise from the observation's counts). Defaults, and why each one:

- Baseline: the contract's observations from the `baseline.days` (28) days before the current
  window, keyed by `window_start` when windowed else `observed_at`. Four weeks hold four of each
  weekday and are long enough to see a trend. Excluded, because each is how other tools'
  baselines get polluted: the current observation/window itself (a value must not vouch for
  itself), `anomalous=True` points (a long incident would otherwise bend the forecast to the
  broken level and declare it normal), points before `since` (an accepted re-baseline: the old
  level no longer applies), value None (distribution: an unusable profile), and all but the latest
  observation of a re-observed window (a re-run supersedes the earlier reading).
- Complete windows only: a window still open when observed (`window_end > observed_at`) is
  partial and would read as a drop, so it is "learning", never scored.
- The forecast, not a median: a growing metric sits above last month's median every day and a
  shrinking one below it; the fit's trend says where it should be today, and weekday effects
  found in the data (or forced with `seasonality: weekly`) say what a Sunday looks like.
- The band: forecast ± the t quantile (at the normal tail of `threshold.z`, 3.7) of the
  predictive noise: business noise, today's sampling noise and the forecast's own uncertainty.
  3.7, not the textbook 3: real series are a little heavier-tailed than the model, and at 3.5 the
  benchmark's noisiest families reached 1 to 1.5 false alarms per 1,000 days; at 3.7 they stay
  under 1 and shifts of six times the day's noise are still caught on day one 99.5% of the time.
  Small counts get exact negative-binomial or beta-binomial quantiles. Rates stay inside [0, 1],
  counts and amounts at or above 0.
- Floors: a deviation must also reach `threshold.relative` (0.10) of the expected value and
  `threshold.absolute` (0), so tiny changes on very steady metrics page no one; the band shown is
  the wider of the statistical band and the floors. Anomalous iff the value lies outside the
  statistical band and on or beyond both floors, on the side the contract alerts on. On a flat
  history (no noise at all) any move beyond the floors alerts: a flat 1,000/day alerts at 900.
- Minimum points: fewer than `baseline.min_points` (7) healthy points → "learning" (with
  `seasonality: weekly`, also fewer than `min_points_per_weekday` (2) on the checked weekday).
  When flagged points are what left too few, the baseline reaches back up to twice
  `baseline.days` for the newest healthy points instead, so a lasting regression keeps being
  scored (and its incident kept open) rather than going quiet as "learning" a week in.
- Direction: drop alerts only below the band, rise only above, both either; freshness always rise.
- Zero rows: a volume or row_count of 0 (row_count: or None) is an outage and pages even while
  learning, unless the band itself holds 0 (a few events a day: an empty day happens), or most
  of the contract's own recent points, and at least two, are 0 (on that weekday, unless
  `seasonality: none`: a business closed on Sundays). Past zeros count here even when they were flagged anomalous: detection
  flags the first closed Sunday, and if flagged zeros never counted, every later Sunday would page
  forever. Two guards keep a real outage from turning "normal": one past zero is not a pattern,
  and a zero right after an anomalous observation continues that incident. A learning contract's
  zero is flagged, kept out of the baseline it is learning, but opens no incident: there is no
  band for a fix to recover into (`jobs.detect.observe`).
- Freshness: the value is the lag in seconds; anomalous iff it exceeds `max_lag`. No baseline is
  needed; one is attached for display when history allows. change_pct is relative to max_lag.
- Distribution: see `jobs.detect.distribution`; anomalous iff PSI > threshold.psi (0.2) for categories,
  or quantile shift > threshold.quantile_shift (0.5 IQR) for numbers. Needs min_points profiles
  (same-weekday ones with `seasonality: weekly`).
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

from jobs.contracts.spec import Contract, Direction, Kind, ThresholdSpec
from jobs.core.formatting import fmt_duration, fmt_number
from jobs.core.records import Assessment, AssessmentStatus, BaselineStats, Observation
from jobs.detect import band as bands
from jobs.detect.distribution import assess_profiles, is_usable

ZERO_KINDS = (Kind.volume, Kind.row_count)
MIN_ZEROS = 2  # past zeros before a zero can be normal


@dataclass(frozen=True)
class Baseline:
    """The healthy points an observation is judged against, and how they were chosen."""

    points: tuple[Observation, ...]
    span: str  # "28-day", for reasons
    shortfall: str | None = None  # the learning reason when there are too few points


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


def shortfall(contract: Contract, current: Observation, points: Sequence[Observation]) -> str | None:
    """Why these points are too few to judge by, or None when they are enough."""
    spec = contract.baseline
    if len(points) < spec.min_points:
        return f"learning: {len(points)} of {spec.min_points} baseline points"
    if spec.seasonality == "weekly":
        weekday = calendar.day_name[anchor(current).weekday()]
        same = len(same_weekday(points, current))
        if same < spec.min_points_per_weekday:
            return f"learning: {same} of {spec.min_points_per_weekday} {weekday} baseline points"
    return None


def choose_baseline(contract: Contract, current: Observation, points: Sequence[Observation]) -> Baseline:
    """Every healthy point of the baseline days; too few of them is learning."""
    return Baseline(tuple(points), f"{contract.baseline.days}-day", shortfall(contract, current, points))


def refill_baseline(contract: Contract, current: Observation, history: Sequence[Observation],
                    since: datetime | None) -> Baseline | None:
    """The newest healthy points from up to REACH_BACK × baseline.days, when flagged ones left too few.

    Excluding an incident's points must not silence it: three weeks into a lasting regression the
    baseline days hold a week of healthy points. The baseline instead keeps its size by reaching
    back past the incident for older healthy points (never past `since`). None when even that is
    too few: then the contract is genuinely learning.
    """
    spec = contract.baseline
    older = healthy(contract, recent_history(contract, current, history, since, days=REACH_BACK * spec.days))
    windows = max(spec.min_points, len(recent_history(contract, current, history, since)))
    points = older[-windows:]
    if not points or shortfall(contract, current, points):
        return None
    return Baseline(tuple(points), f"{reach(current, points[0])}-day")


def reach(current: Observation, oldest: Observation) -> int:
    """How many days back a baseline reaches, for reasons ("its 35-day forecast")."""
    return (anchor(current) - anchor(oldest)).days


# --- the band rule ---------------------------------------------------------------------------


def forecast_band(contract: Contract, current: Observation, points: Sequence[Observation]) -> bands.Band:
    """The statistical band for `current` from the baseline's points (jobs.detect.band)."""
    history = [bands.Point(anchor(o), o.value, o.count) for o in points]  # type: ignore[arg-type]
    today = bands.Point(anchor(current), current.value if current.value is not None else 0.0, current.count)
    return bands.judge(contract.kind, history, today, counted=contract.window is not None,
                       seasonality=contract.baseline.seasonality, z=contract.threshold.z)


def with_floors(found: bands.Band, threshold: ThresholdSpec, kind: Kind) -> BaselineStats:
    """The band shown and judged by: the statistical band widened to the floors, inside the domain."""
    floor = materiality(threshold, found.expected)
    lower, upper = min(found.lower, found.expected - floor), max(found.upper, found.expected + floor)
    if found.space in (bands.Space.log, bands.Space.count) or kind is Kind.row_count:
        lower = max(lower, 0.0)
    if found.space in (bands.Space.rate, bands.Space.share):
        lower, upper = max(lower, 0.0), min(upper, 1.0)
    return BaselineStats(found.expected, lower, upper, found.n, found.seasonal, found.trend)


def materiality(threshold: ThresholdSpec, expected: float) -> float:
    """The smallest move from `expected` that matters: the wider of the relative and absolute floors."""
    return max(threshold.relative * abs(expected), threshold.absolute)


def crosses_floors(threshold: ThresholdSpec, dev: float, expected: float) -> bool:
    """Relative and absolute floors both reached (a hair of float rounding forgiven: 5% of 1,000 is 50)."""
    reach = abs(dev) * (1 + 1e-9)
    return reach >= threshold.relative * abs(expected) and reach >= threshold.absolute


def alerts_in_direction(direction: Direction, dev: float) -> bool:
    """Whether a deviation of this sign is one the contract alerts on."""
    return {Direction.drop: dev < 0, Direction.rise: dev > 0, Direction.both: dev != 0}[direction]


def change_pct(value: float, expected: float) -> float | None:
    """Percent change from the expected value; undefined against zero."""
    return (value - expected) / abs(expected) * 100 if expected else None


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
        found = None if base.shortfall else forecast_band(contract, current, base.points)
        if found is None or found.lower > 0:
            return assess_zero(contract, current, recent, base, found)
    if current.value is None:
        return Assessment(contract.id, AssessmentStatus.learning, f"{metric_label(contract)}: no value to score", None)
    if base.shortfall:
        return Assessment(contract.id, AssessmentStatus.learning, base.shortfall, current.value)
    return assess_band(contract, current, base)


def assess_band(contract: Contract, current: Observation, base: Baseline) -> Assessment:
    """The band rule: anomalous iff outside the band and past both floors, on the side that alerts."""
    value = current.value or 0.0
    found = forecast_band(contract, current, base.points)
    stats = with_floors(found, contract.threshold, contract.kind)
    dev = value - found.expected
    beyond = (value < found.lower or value > found.upper) and crosses_floors(contract.threshold, dev, found.expected)
    anomalous = beyond and alerts_in_direction(contract.effective_direction, dev)
    reason = band_reason(contract, value, stats, found.z, base.span, beyond, anomalous)
    status = AssessmentStatus.anomalous if anomalous else AssessmentStatus.healthy
    z = found.z if math.isfinite(found.z) else None
    return Assessment(contract.id, status, reason, value, stats, change_pct(value, found.expected), z)


def assess_zero(contract: Contract, current: Observation, recent: Sequence[Observation], base: Baseline,
                found: bands.Band | None) -> Assessment:
    """A zero pages, learning or not, unless the contract's own history on that weekday is mostly zero."""
    # Past zeros count even when flagged: the first closed Sunday pages and is flagged; ignoring it
    # would make every later Sunday page too, forever. A zero right after an incident continues it.
    # A business closed on Sundays has its zeros on Sundays: compare with that weekday when it can.
    same = same_weekday(recent, current)
    weekly = contract.baseline.seasonality != "none" and len(same) >= MIN_ZEROS
    reference = same if weekly else list(recent)
    where = f"{calendar.day_name[anchor(current).weekday()]} " if weekly else ""
    zeros = count_zeros(contract, reference)
    counted = f"{zeros} of {len(reference)} {where}baseline points are 0"
    label, usual = metric_label(contract), zeros_are_normal(contract, reference)
    stats = with_floors(found, contract.threshold, contract.kind) if found else None
    if usual and not outage_ongoing(recent):
        return Assessment(contract.id, AssessmentStatus.healthy, f"{label} is 0, as usual: {counted}", 0.0, stats)
    pct = change_pct(0.0, stats.expected) if stats else None
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
        found = forecast_band(contract, current, base.points)
        stats = with_floors(found, contract.threshold, contract.kind)
        z = found.z if math.isfinite(found.z) else None
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
    weekly = contract.baseline.seasonality == "weekly"
    points = same_weekday(base.points, current) if weekly else base.points
    span = f"{base.span} {calendar.day_name[anchor(current).weekday()]}" if weekly else base.span
    profiles = [o.profile for o in points]
    return assess_profiles(contract, current.profile, profiles, span, weekly)  # type: ignore[arg-type]


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
    """E.g. 'sum(net_revenue) 8,120 is 18.4% below its 28-day forecast 9,950 (z -5.1; band 9,100–10,800)'."""
    label, band = metric_label(contract), f"{fmt_number(stats.lower)}–{fmt_number(stats.upper)}"
    model = f"{span}{' weekly' if stats.seasonal else ''} forecast"
    if not beyond:
        return f"{label} {fmt_number(value)} is within its {span} band {band} (forecast {fmt_number(stats.expected)})"
    side = "below" if value < stats.expected else "above"
    pct = change_pct(value, stats.expected)
    move = f"{abs(pct):.1f}% {side}" if pct is not None else side
    score = f"z {z:.1f}" if math.isfinite(z) else "flat history"
    text = f"{label} {fmt_number(value)} is {move} its {model} {fmt_number(stats.expected)} ({score}; band {band})"
    if not anomalous:
        text += f", but only {'drops' if contract.effective_direction is Direction.drop else 'rises'} alert"
    return text
