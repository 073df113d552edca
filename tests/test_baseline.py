"""Detection as a pure stage: one table of (contract, history, current) → expected verdict."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from jobs.contracts.spec import Contract
from jobs.core.formatting import fmt_duration, fmt_number
from jobs.core.records import AssessmentStatus, Observation
from jobs.detect.baseline import assess

HEALTHY, ANOMALOUS, LEARNING = AssessmentStatus.healthy, AssessmentStatus.anomalous, AssessmentStatus.learning
DAY0 = datetime(2026, 3, 2, tzinfo=timezone.utc)  # a Monday
MONDAY, WEDNESDAY, SUNDAY = 28, 30, 34  # day indexes of a current window four weeks in


def day(i: int) -> datetime:
    return DAY0 + timedelta(days=i)


def obs(i: int, value: float | None, *, anomalous: bool = False, late: timedelta = timedelta(hours=1),
        profile: dict | None = None, id: int | None = None) -> Observation:
    """The daily window starting on day i, observed `late` after it closed."""
    return Observation("c", day(i + 1) + late, value, day(i), day(i + 1), "sha", profile,
                       anomalous=anomalous, id=id)


def before(current: int, values: list, **kw) -> list[Observation]:
    """One observation per day, ending the day before `current`; value may be a callable of the day."""
    first = current - len(values)
    return [obs(first + k, v(first + k) if callable(v) else v, **kw) for k, v in enumerate(values)]


def noisy(n: int, level: float = 1000.0, spread: float = 0.02, seed: int = 7) -> list[float]:
    rng = random.Random(seed)
    return [round(level * rng.gauss(1, spread)) for _ in range(n)]


def contract(kind: str = "volume", **kw) -> Contract:
    fields = {"volume": {"expr": "sum(amount)"}, "ratio": {"numerator": "sum(a)", "denominator": "sum(b)"},
              "null_rate": {"column": "email"}, "distribution": {"column": "status"}}.get(kind, {})
    return Contract(id="c", kind=kind, model="orders", time_column="ts", window="day", **{**fields, **kw})


def weekly(**kw) -> Contract:
    return contract(baseline={"seasonality": "weekly"}, **kw)


def by_weekday(sunday: float, other: list[float]) -> Callable[[int], float]:
    return lambda i: sunday if day(i).weekday() == 6 else other[i % len(other)]


NOISE = noisy(28, seed=8)  # a draw with no chance weekday pattern (seed 7 shows one at p < 0.05)
FLAT = [1000.0] * 28
STEADY = [1000 + (k % 3) - 1 for k in range(28)]  # ±1: a tiny MAD, so a 1% move has a huge z
SUNDAY_LOW = by_weekday(500, noisy(35))
CLOSED_SUNDAYS = by_weekday(0, noisy(35))
CATS = [{"categories": {"paid": 800 + 7 * (k % 5), "pending": 150 - 3 * (k % 4), "refunded": 50 + (k % 3)}}
        for k in range(28)]
QUANTS = [{"quantiles": {"0.1": 10 + (k % 3) * 0.3, "0.25": 20 + (k % 4) * 0.4, "0.5": 35 + (k % 5) * 0.5,
                         "0.75": 60 + (k % 3) * 0.6, "0.9": 90 + (k % 4)}} for k in range(28)]


def prof(k: int, profile: dict) -> Observation:
    return obs(k, None, profile=profile)


CASES = [
    # name, contract, history, current, since, status, reason fragment
    ("normal noise", contract(), before(MONDAY, NOISE), obs(MONDAY, 1012), None, HEALTHY,
     "is within its 28-day band"),
    ("step drop", contract(), before(MONDAY, NOISE), obs(MONDAY, 800), None, ANOMALOUS,
     "% below its 28-day"),
    ("current is not its own baseline", contract(), before(MONDAY, NOISE[:6]) + [obs(MONDAY, 800, id=99)],
     obs(MONDAY, 800, id=99), None, LEARNING, "learning: 6 of 7 baseline points"),
    ("current in history does not pollute", contract(),
     before(MONDAY, NOISE) + [obs(MONDAY, 700, id=99), obs(MONDAY, 700, late=timedelta(hours=5))],
     obs(MONDAY, 700, id=99), None, ANOMALOUS, "30."),
    ("long incident is not the new normal", contract(),
     before(MONDAY - 14, NOISE[:14]) + before(MONDAY, [500] * 14, anomalous=True),
     obs(MONDAY, 520), None, ANOMALOUS, "% below its 28-day forecast"),
    ("recovery after a long incident is healthy", contract(),
     before(MONDAY - 14, NOISE[:14]) + before(MONDAY, [500] * 14, anomalous=True),
     obs(MONDAY, 1000), None, HEALTHY, "within"),
    ("flat history, 5% step", contract(), before(MONDAY, FLAT), obs(MONDAY, 950), None, ANOMALOUS,
     "flat history"),
    ("flat history, 3% step", contract(), before(MONDAY, FLAT), obs(MONDAY, 970), None, HEALTHY, "within"),
    ("flat history, 10% rise", contract(), before(MONDAY, FLAT), obs(MONDAY, 1100), None, ANOMALOUS,
     "10.0% above"),
    ("relative floor: huge z, 1% move", contract(), before(MONDAY, STEADY), obs(MONDAY, 1010), None, HEALTHY,
     "within"),
    ("absolute floor holds a tiny null rate", contract("null_rate", threshold={"absolute": 0.01}),
     before(MONDAY, [0.001, 0.0012, 0.0009, 0.0011] * 7), obs(MONDAY, 0.005), None, HEALTHY, "within"),
    ("absolute floor crossed", contract("null_rate", threshold={"absolute": 0.01}),
     before(MONDAY, [0.001, 0.0012, 0.0009, 0.0011] * 7), obs(MONDAY, 0.02), None, ANOMALOUS, "null rate of email"),
    ("drop contract ignores a rise", contract(direction="drop"), before(MONDAY, NOISE), obs(MONDAY, 1400), None,
     HEALTHY, "but only drops alert"),
    ("drop contract alerts on a drop", contract(direction="drop"), before(MONDAY, NOISE), obs(MONDAY, 600), None,
     ANOMALOUS, "below"),
    ("rise contract ignores a drop", contract(direction="rise"), before(MONDAY, NOISE), obs(MONDAY, 600), None,
     HEALTHY, "but only rises alert"),
    ("too few points", contract(), before(MONDAY, NOISE[:4]), obs(MONDAY, 1000), None, LEARNING,
     "learning: 4 of 7 baseline points"),
    ("none values are not points", contract("ratio"), before(MONDAY, NOISE[:6] + [None] * 3), obs(MONDAY, 1000),
     None, LEARNING, "learning: 6 of 7 baseline points"),
    ("older than the baseline days", contract(baseline={"days": 7}), before(MONDAY, NOISE[:20]),
     obs(MONDAY, 1000), None, HEALTHY, "7-day band"),
    ("weekly: a low Sunday is healthy", weekly(), before(SUNDAY, [SUNDAY_LOW] * 28), obs(SUNDAY, 510), None,
     HEALTHY, "28-day band"),
    ("weekly: the same value on a Wednesday alerts", weekly(), before(WEDNESDAY, [SUNDAY_LOW] * 28),
     obs(WEDNESDAY, 510), None, ANOMALOUS, "its 28-day weekly forecast"),
    ("auto finds the weekly pattern", contract(), before(SUNDAY, [SUNDAY_LOW] * 28), obs(SUNDAY, 510), None,
     HEALTHY, "within"),
    ("no seasonality: low Sundays widen the band", contract(baseline={"seasonality": "none"}),
     before(SUNDAY, [SUNDAY_LOW] * 28), obs(SUNDAY, 510), None, HEALTHY, "its 28-day band 4"),
    ("weekly waits for enough same weekdays", weekly(), before(SUNDAY, NOISE[:10]), obs(SUNDAY, 700), None,
     LEARNING, "learning: 1 of 2 Sunday baseline points"),
    ("zero rows page", contract("row_count"), before(MONDAY, NOISE), obs(MONDAY, 0), None, ANOMALOUS,
     "orders row count is 0"),
    ("zero rows page while learning", contract(), before(MONDAY, NOISE[:2]), obs(MONDAY, 0), None, ANOMALOUS,
     "0 of 2 baseline points are 0"),
    ("an empty row count is zero rows", contract("row_count"), before(MONDAY, NOISE), obs(MONDAY, None), None,
     ANOMALOUS, "is 0"),
    ("zero on a ratio is just low", contract("ratio", threshold={"relative": 0.5}), before(MONDAY, NOISE),
     obs(MONDAY, 0), None, ANOMALOUS, "100.0% below"),
    ("closed on Sundays: zero is healthy", weekly(kind="row_count"), before(SUNDAY, [CLOSED_SUNDAYS] * 28),
     obs(SUNDAY, 0), None, HEALTHY, "within"),
    ("closed on Sundays, no seasonality: a zero is within the wide band", contract(
        "row_count", baseline={"seasonality": "none"}), before(SUNDAY, [CLOSED_SUNDAYS] * 28), obs(SUNDAY, 0), None,
     HEALTHY, "band 0–"),
    ("closed on Sundays is learnt though each was flagged", weekly(kind="row_count"),
     [o if o.value else obs(int((o.window_start - DAY0).days), 0, anomalous=True)
      for o in before(SUNDAY, [CLOSED_SUNDAYS] * 28)], obs(SUNDAY, 0), None, HEALTHY, "as usual"),
    ("one past zero is not a pattern", weekly(kind="row_count"), before(SUNDAY, [CLOSED_SUNDAYS] * 10),
     obs(SUNDAY, 0), None, ANOMALOUS, "1 of 10 baseline points are 0"),
    ("an ongoing outage never turns normal", weekly(kind="row_count"),
     before(SUNDAY - 24, NOISE[:4]) + before(SUNDAY, [0] * 24, anomalous=True), obs(SUNDAY, 0), None, ANOMALOUS,
     "continues an open incident"),
    ("re-baseline accepts a new level", contract(), before(MONDAY - 14, NOISE[:14]) + before(MONDAY, noisy(14, 1200)),
     obs(MONDAY, 1210), day(MONDAY - 14), HEALTHY, "within"),
    ("without the re-baseline the new level alerts", contract(),
     before(MONDAY - 14, NOISE[:14]) + before(MONDAY, noisy(14, 1200), anomalous=True), obs(MONDAY, 1210), None,
     ANOMALOUS, "above"),
    ("re-baseline starts learning again", contract(), before(MONDAY, NOISE), obs(MONDAY, 1000), day(MONDAY - 3),
     LEARNING, "learning: 3 of 7 baseline points"),
    ("a naive re-baseline time is UTC", contract(), before(MONDAY, NOISE), obs(MONDAY, 1000),
     day(MONDAY - 3).replace(tzinfo=None), LEARNING, "learning: 3 of 7"),
    ("duplicate windows count once", contract(),
     before(MONDAY, NOISE[:6]) + before(MONDAY, NOISE[:6], late=timedelta(hours=3)),
     obs(MONDAY, 1000), None, LEARNING, "learning: 6 of 7"),
    ("the latest reading of a window wins", contract(),
     before(MONDAY, [400] * 28) + before(MONDAY, FLAT, late=timedelta(hours=3)),
     obs(MONDAY, 900), None, ANOMALOUS, "forecast 1,000"),
    ("an open window is not scored", contract(), before(MONDAY, NOISE),
     Observation("c", day(MONDAY) + timedelta(hours=5), 200.0, day(MONDAY), day(MONDAY + 1)), None, LEARNING,
     "only complete windows are scored"),
    ("categorical: same mix", contract("distribution"), [prof(k, p) for k, p in enumerate(CATS)],
     obs(28, None, profile={"categories": {"paid": 805, "pending": 148, "refunded": 52}}), None, HEALTHY, "is stable"),
    ("categorical: refunds surge", contract("distribution"), [prof(k, p) for k, p in enumerate(CATS)],
     obs(28, None, profile={"categories": {"paid": 600, "pending": 150, "refunded": 250}}), None, ANOMALOUS,
     "'refunded' 5.0% → 25.0%"),
    ("categorical: a new category", contract("distribution"), [prof(k, p) for k, p in enumerate(CATS)],
     obs(28, None, profile={"categories": {"paid": 700, "pending": 150, "refunded": 50, "void": 100}}), None,
     ANOMALOUS, "'void' 0.0% → 10.0%"),
    ("categorical: too few profiles", contract("distribution"), [prof(k, p) for k, p in enumerate(CATS[:3])],
     obs(28, None, profile={"categories": {"paid": 1}}), None, LEARNING, "learning: 3 of 7"),
    ("numeric: quantiles hold", contract("distribution", numeric=True), [prof(k, p) for k, p in enumerate(QUANTS)],
     obs(28, None, profile={"quantiles": {"0.1": 10.2, "0.25": 20.5, "0.5": 35.8, "0.75": 60.4, "0.9": 91}}), None,
     HEALTHY, "is stable"),
    ("numeric: the tail moves", contract("distribution", numeric=True), [prof(k, p) for k, p in enumerate(QUANTS)],
     obs(28, None, profile={"quantiles": {"0.1": 10, "0.25": 20.5, "0.5": 36, "0.75": 61, "0.9": 130}}), None,
     ANOMALOUS, "largest move q0.9"),
]


@pytest.mark.parametrize("spec, history, current, since, status, fragment", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_assess(spec, history, current, since, status, fragment) -> None:
    result = assess(spec, current, history, since=since)
    assert (result.status, fragment in result.reason) == (status, True), result.reason


def test_reason_reads_like_a_sentence() -> None:
    result = assess(contract(), obs(MONDAY, 800), before(MONDAY, NOISE))
    expected = result.baseline.expected
    assert result.reason.startswith(
        f"sum(amount) 800 is {abs(800 - expected) / expected * 100:.1f}% below its 28-day forecast ")
    assert f"(z {result.z:.1f}; band {fmt_number(result.baseline.lower)}–{fmt_number(result.baseline.upper)})" \
        in result.reason
    assert result.change_pct == pytest.approx((800 - expected) / expected * 100)


def test_a_flat_history_bands_at_the_floors() -> None:
    result = assess(contract(direction="drop"), obs(MONDAY, 940), before(MONDAY, FLAT))
    assert (result.baseline.expected, result.baseline.lower, result.baseline.upper) == pytest.approx((1000, 950, 1050))
    assert result.status is ANOMALOUS and "flat history" in result.reason
    assert result.z is None  # flat history: z is undefined, not infinite


def test_z_is_in_predictive_standard_deviations() -> None:
    result = assess(contract(), obs(MONDAY, 800), before(MONDAY, NOISE))
    stats = result.baseline
    assert stats.n == 28 and not stats.seasonal
    # 2% noise: a 20% drop is about ten standard deviations on the log scale.
    assert -14 < result.z < -8
    assert not stats.contains(800) and stats.contains(1000)


def test_seasonal_stats_say_so() -> None:
    sunday = assess(weekly(), obs(SUNDAY, 510), before(SUNDAY, [SUNDAY_LOW] * 28))
    plain = assess(contract(), obs(SUNDAY, 700), before(SUNDAY, NOISE[:10]))
    assert (sunday.baseline.seasonal, sunday.baseline.n) == (True, 28)
    assert sunday.baseline.expected == pytest.approx(500, rel=0.03)
    assert (plain.baseline.seasonal, plain.baseline.n) == (False, 10)


# --- the forecast: trend, season, few points, outliers ------------------------------------------


def growing(rate: float, level: float = 1000.0, spread: float = 0.03, seed: int = 3) -> Callable[[int], float]:
    rng = random.Random(seed)
    noise = {i: rng.gauss(1, spread) for i in range(200)}
    return lambda i: level * (1 + rate) ** i * noise[i]


def test_the_forecast_follows_growth() -> None:
    """1% a day for four weeks: today sits ~15% above the window's median, and that is normal."""
    history = before(MONDAY, [growing(0.01)] * 28)
    verdict = assess(contract(), obs(MONDAY, growing(0.01)(MONDAY)), history)
    median = sorted(o.value for o in history)[14]
    assert verdict.status is HEALTHY, verdict.reason
    assert verdict.baseline.expected > 1.12 * median
    assert verdict.baseline.trend == pytest.approx(0.01, abs=0.003)


def test_a_drop_on_a_growing_dimension_pages() -> None:
    """The issue's case: a customer table growing ~60 rows a day loses 32% in one day after a join change."""
    stock = Contract(id="customers.rows", kind="row_count", model="dim_customers")
    history = [Observation("c", day(i + 1), 9000 + 60 * i + random.Random(i).randint(-5, 5)) for i in range(28)]
    broken = assess(stock, Observation("c", day(29), 0.68 * (9000 + 60 * 28)), history)
    normal = assess(stock, Observation("c", day(29), 9000 + 60 * 28), history)
    assert broken.status is ANOMALOUS and normal.status is HEALTHY, (broken.reason, normal.reason)


def test_weekly_seasonality_is_found_in_the_data_or_not_at_all() -> None:
    seasonal = assess(contract(), obs(SUNDAY, 520), before(SUNDAY, [SUNDAY_LOW] * 28))
    plain = assess(contract(), obs(MONDAY, 1000), before(MONDAY, NOISE))
    assert seasonal.baseline.seasonal and not plain.baseline.seasonal


def test_few_points_give_a_wider_band() -> None:
    """The same process seen for 8 days and for 28: the short history is less sure of itself."""
    short = assess(contract(), obs(MONDAY, 1000), before(MONDAY, NOISE[-8:]))
    long = assess(contract(), obs(MONDAY, 1000), before(MONDAY, NOISE))
    width = lambda r: r.baseline.upper - r.baseline.lower  # noqa: E731
    assert width(short) > 1.3 * width(long)


def test_a_holiday_in_the_history_does_not_widen_the_band() -> None:
    clean = before(MONDAY, NOISE)
    holiday = before(MONDAY, NOISE[:10] + [350] + NOISE[11:])
    width = lambda r: r.baseline.upper - r.baseline.lower  # noqa: E731
    assert width(assess(contract(), obs(MONDAY, 1000), holiday)) < 1.1 * width(
        assess(contract(), obs(MONDAY, 1000), clean))


# --- count-aware noise ------------------------------------------------------------------------


def rate_obs(i: int, events: int, n: int, **kw) -> Observation:
    return replace(obs(i, events / n, **kw), count=n)


def shares(n: int, rate: float = 0.12, seed: int = 5) -> list[Observation]:
    """28 days of a share of `n` orders a day: binomial sampling around `rate`."""
    rng = random.Random(seed)
    return [rate_obs(i, sum(rng.random() < rate for _ in range(n)), n) for i in range(MONDAY - 28, MONDAY)]


def test_sampling_noise_sets_the_band_without_a_tuned_threshold() -> None:
    """A 30% drop in a share: chance at 40 orders a day, a real move at 40,000."""
    small, big = contract("ratio"), contract("ratio")
    few = assess(small, rate_obs(MONDAY, round(0.084 * 40), 40), shares(40))
    many = assess(big, rate_obs(MONDAY, round(0.084 * 40000), 40000), shares(40000))
    assert (few.status, many.status) == (HEALTHY, ANOMALOUS), (few.reason, many.reason)
    assert few.baseline.upper - few.baseline.lower > 10 * (many.baseline.upper - many.baseline.lower)


def test_bands_stay_inside_the_domain() -> None:
    rate = assess(contract("ratio"), rate_obs(MONDAY, 1, 20), shares(20, rate=0.05))
    count = assess(contract("row_count"), replace(obs(MONDAY, 3), count=3),
                   [replace(obs(i, v), count=int(v)) for i, v in zip(range(MONDAY - 28, MONDAY), [2, 5, 1, 4] * 7)])
    assert 0 <= rate.baseline.lower <= rate.baseline.upper <= 1
    assert count.baseline.lower >= 0 and count.status is HEALTHY


def test_an_empty_window_is_normal_for_a_count_of_a_few_a_day() -> None:
    """Two events a day: an empty day happens (the band holds 0), so zero rows do not page."""
    history = [replace(obs(i, v), count=int(v)) for i, v in zip(range(MONDAY - 28, MONDAY), [2, 1, 3, 2, 0, 2, 4] * 4)]
    verdict = assess(contract("row_count"), replace(obs(MONDAY, 0), count=0), history)
    assert verdict.status is HEALTHY, verdict.reason


def freshness(**kw) -> Contract:
    return Contract(id="f", kind="freshness", model="orders", column="updated_at", max_lag="6h", **kw)


def lag_obs(hours_ago: int, lag_hours: float, anomalous: bool = False) -> Observation:
    return Observation("f", DAY0 - timedelta(hours=hours_ago), lag_hours * 3600, anomalous=anomalous)


@pytest.mark.parametrize("history, lag_hours, status, fragment, pct", [
    ([], 7.0, ANOMALOUS, "orders.updated_at lag 7h is 17% over its max_lag 6h", 100 / 6),
    ([], 2.0, HEALTHY, "orders.updated_at lag 2h is within its max_lag 6h", -200 / 3),
    ([lag_obs(h, 1 + (h % 3) / 2) for h in range(1, 40)], 5.5, HEALTHY, "within", -100 / 12),
    ([lag_obs(h, 1 + (h % 3) / 2) for h in range(1, 40)], 6.5, ANOMALOUS, "over", 100 / 12),
])
def test_freshness_against_max_lag(history, lag_hours, status, fragment, pct) -> None:
    result = assess(freshness(), lag_obs(0, lag_hours), history)
    assert (result.status, result.change_pct) == (status, pytest.approx(pct))
    assert fragment in result.reason
    assert (result.baseline is not None) == bool(history)  # the band is for display only


def test_freshness_without_a_timestamp_pages() -> None:
    result = assess(freshness(), Observation("f", DAY0, None), [])
    assert (result.status, "no timestamp found" in result.reason) == (ANOMALOUS, True)


def test_distribution_value_is_the_divergence() -> None:
    history = [prof(k, p) for k, p in enumerate(CATS)]
    calm = assess(contract("distribution"), obs(28, None, profile={"categories": {"paid": 805, "pending": 148,
                                                                                  "refunded": 52}}), history)
    surge = assess(contract("distribution"), obs(28, None, profile={"categories": {"paid": 600, "pending": 150,
                                                                                   "refunded": 250}}), history)
    assert calm.value < 0.1 < 0.2 < surge.value
    assert (surge.baseline.lower, surge.baseline.upper) == (0.0, 0.2)
    assert surge.baseline.expected < 0.01  # a normal day's PSI against its own baseline


def test_numeric_shift_in_iqrs() -> None:
    history = [prof(k, p) for k, p in enumerate(QUANTS)]
    moved = {"quantiles": {"0.1": 10, "0.25": 20.6, "0.5": 36, "0.75": 60.6, "0.9": 130}}
    result = assess(contract("distribution", numeric=True), obs(28, None, profile=moved), history)
    base_q90, iqr = 91.5, 60.6 - 20.6  # medians of the baseline quantiles
    assert result.value == pytest.approx((130 - base_q90) / iqr, rel=0.02)


@pytest.mark.parametrize("value, text", [(8120, "8,120"), (9950.4, "9,950"), (12.5, "12.5"), (3.0, "3"),
                                         (0.0213, "0.0213"), (-42.25, "-42.25")])
def test_fmt_number(value, text) -> None:
    assert fmt_number(value) == text


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (30, "30s"), (2700, "45m"), (25920, "7h 12m"),
                                           (183600, "2d 3h")])
def test_fmt_duration(seconds, text) -> None:
    assert fmt_duration(seconds) == text


def test_no_infinite_numbers_leave_the_stage() -> None:
    for case in CASES:
        result = assess(case[1], case[3], case[2], since=case[4])
        for number in (result.value, result.z, result.change_pct):
            assert number is None or math.isfinite(number), case[0]


def test_relative_floor_holds_a_large_z() -> None:
    result = assess(contract(), obs(MONDAY, 1010), before(MONDAY, STEADY))
    assert (result.status, result.z > 3) == (HEALTHY, True)


def test_a_lasting_regression_stays_scored_past_its_flagged_points() -> None:
    """Three weeks into an incident the baseline days hold one week of healthy points: it reaches back."""
    current = SUNDAY + 28  # eight weeks of history, the last three flagged at the broken level
    clean = before(current - 21, [SUNDAY_LOW] * 35)
    broken = [obs(i, 0.8 * SUNDAY_LOW(i), anomalous=True) for i in range(current - 21, current)]
    verdict = assess(weekly(), obs(current, 400), clean + broken)
    assert verdict.status is ANOMALOUS, verdict.reason
    assert verdict.baseline.n == 28 and verdict.baseline.expected == pytest.approx(500, rel=0.03)
    assert "49-day weekly forecast" in verdict.reason


def test_reaching_back_never_crosses_a_rebaseline() -> None:
    current = SUNDAY + 28
    history = before(current - 21, [SUNDAY_LOW] * 35) + [
        obs(i, 0.8 * SUNDAY_LOW(i), anomalous=True) for i in range(current - 21, current)]
    verdict = assess(weekly(), obs(current, 400), history, since=day(current - 24))
    assert verdict.status is LEARNING and "3 of 7 baseline points" in verdict.reason
