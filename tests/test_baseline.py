"""Detection as a pure stage: one table of (contract, history, current) → expected verdict."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest

from jobs.baseline import assess, fmt_duration, fmt_number
from jobs.contracts import Contract
from jobs.records import AssessmentStatus, Observation

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


NOISE = noisy(28)
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
     "% below its 28-day median"),
    ("current is not its own baseline", contract(), before(MONDAY, NOISE[:6]) + [obs(MONDAY, 800, id=99)],
     obs(MONDAY, 800, id=99), None, LEARNING, "learning: 6 of 7 baseline points"),
    ("current in history does not pollute", contract(),
     before(MONDAY, NOISE) + [obs(MONDAY, 700, id=99), obs(MONDAY, 700, late=timedelta(hours=5))],
     obs(MONDAY, 700, id=99), None, ANOMALOUS, "30."),
    ("long incident is not the new normal", contract(),
     before(MONDAY - 14, NOISE[:14]) + before(MONDAY, [500] * 14, anomalous=True),
     obs(MONDAY, 520), None, ANOMALOUS, "% below its 28-day median"),
    ("recovery after a long incident is healthy", contract(),
     before(MONDAY - 14, NOISE[:14]) + before(MONDAY, [500] * 14, anomalous=True),
     obs(MONDAY, 1000), None, HEALTHY, "within"),
    ("flat history, 10% step", contract(), before(MONDAY, FLAT), obs(MONDAY, 900), None, ANOMALOUS,
     "flat history"),
    ("flat history, 5% step", contract(), before(MONDAY, FLAT), obs(MONDAY, 950), None, HEALTHY, "within"),
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
     HEALTHY, "28-day Sunday band"),
    ("weekly: the same value on a Wednesday alerts", weekly(), before(WEDNESDAY, [SUNDAY_LOW] * 28),
     obs(WEDNESDAY, 510), None, ANOMALOUS, "its 28-day Wednesday median"),
    ("no seasonality: a low Sunday alerts", contract(), before(SUNDAY, [SUNDAY_LOW] * 28), obs(SUNDAY, 510), None,
     ANOMALOUS, "28-day median"),
    ("weekly waits for enough same weekdays", weekly(), before(SUNDAY, NOISE[:10]), obs(SUNDAY, 700), None,
     LEARNING, "learning: 1 of 4 Sunday baseline points"),
    ("zero rows page", contract("row_count"), before(MONDAY, NOISE), obs(MONDAY, 0), None, ANOMALOUS,
     "orders row count is 0"),
    ("zero rows page while learning", contract(), before(MONDAY, NOISE[:2]), obs(MONDAY, 0), None, ANOMALOUS,
     "0 of 2 baseline points are 0"),
    ("an empty row count is zero rows", contract("row_count"), before(MONDAY, NOISE), obs(MONDAY, None), None,
     ANOMALOUS, "is 0"),
    ("zero on a ratio is just low", contract("ratio", threshold={"relative": 0.5}), before(MONDAY, NOISE),
     obs(MONDAY, 0), None, ANOMALOUS, "100.0% below"),
    ("closed on Sundays: zero is healthy", weekly(kind="row_count"), before(SUNDAY, [CLOSED_SUNDAYS] * 28),
     obs(SUNDAY, 0), None, HEALTHY, "4 of 4 Sunday baseline points are 0"),
    ("closed on Sundays, no seasonality: zero pages", contract("row_count"), before(SUNDAY, [CLOSED_SUNDAYS] * 28),
     obs(SUNDAY, 0), None, ANOMALOUS, "4 of 28 baseline points are 0"),
    ("closed on Sundays is learnt though each was flagged", weekly(kind="row_count"),
     [o if o.value else obs(int((o.window_start - DAY0).days), 0, anomalous=True)
      for o in before(SUNDAY, [CLOSED_SUNDAYS] * 28)], obs(SUNDAY, 0), None, HEALTHY, "as usual"),
    ("one past zero is not a pattern", weekly(kind="row_count"), before(SUNDAY, [CLOSED_SUNDAYS] * 10),
     obs(SUNDAY, 0), None, ANOMALOUS, "1 of 1 Sunday"),
    ("an ongoing outage never turns normal", weekly(kind="row_count"),
     before(SUNDAY - 24, NOISE[:4]) + before(SUNDAY, [0] * 24, anomalous=True), obs(SUNDAY, 0), None, ANOMALOUS,
     "continues an open incident"),
    ("re-baseline accepts a new level", contract(), before(MONDAY - 7, NOISE[:21]) + before(MONDAY, noisy(7, 1200)),
     obs(MONDAY, 1210), day(MONDAY - 7), HEALTHY, "within"),
    ("without the re-baseline the new level alerts", contract(),
     before(MONDAY - 7, NOISE[:21]) + before(MONDAY, noisy(7, 1200)), obs(MONDAY, 1210), None, ANOMALOUS, "above"),
    ("re-baseline starts learning again", contract(), before(MONDAY, NOISE), obs(MONDAY, 1000), day(MONDAY - 3),
     LEARNING, "learning: 3 of 7 baseline points"),
    ("a naive re-baseline time is UTC", contract(), before(MONDAY, NOISE), obs(MONDAY, 1000),
     day(MONDAY - 3).replace(tzinfo=None), LEARNING, "learning: 3 of 7"),
    ("duplicate windows count once", contract(),
     before(MONDAY, NOISE[:6]) + before(MONDAY, NOISE[:6], late=timedelta(hours=3)),
     obs(MONDAY, 1000), None, LEARNING, "learning: 6 of 7"),
    ("the latest reading of a window wins", contract(),
     before(MONDAY, [400] * 28) + before(MONDAY, FLAT, late=timedelta(hours=3)),
     obs(MONDAY, 900), None, ANOMALOUS, "median 1,000"),
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
    med = result.baseline.median
    assert result.reason.startswith(f"sum(amount) 800 is {abs(800 - med) / med * 100:.1f}% below its 28-day median ")
    assert f"(robust z {result.z:.1f}; band {fmt_number(result.baseline.lower)}–{fmt_number(result.baseline.upper)})" \
        in result.reason
    assert result.change_pct == pytest.approx((800 - med) / med * 100)


def test_band_is_the_widest_floor_and_symmetric_for_drop() -> None:
    result = assess(contract(direction="drop"), obs(MONDAY, 1000), before(MONDAY, FLAT))
    assert (result.baseline.lower, result.baseline.upper, result.baseline.mad) == (900, 1100, 0)
    assert result.z is None  # flat history: z is undefined, not infinite


def test_robust_z_on_noise() -> None:
    result = assess(contract(), obs(MONDAY, 800), before(MONDAY, NOISE))
    stats = result.baseline
    assert stats.n == 28 and not stats.seasonal
    assert result.z == pytest.approx((800 - stats.median) / (1.4826 * stats.mad))
    assert not stats.contains(800)


def test_seasonal_stats_say_so() -> None:
    sunday = assess(weekly(), obs(SUNDAY, 510), before(SUNDAY, [SUNDAY_LOW] * 28))
    plain = assess(contract(), obs(SUNDAY, 700), before(SUNDAY, NOISE[:10]))
    assert (sunday.baseline.seasonal, sunday.baseline.n, sunday.baseline.median) == (True, 4, 500)
    assert (plain.baseline.seasonal, plain.baseline.n) == (False, 10)


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
    assert surge.baseline.median < 0.01  # a normal day's PSI against its own baseline


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
    """A week into an incident every weekday has lost a point: the baseline reaches back for older ones."""
    current = SUNDAY + 28  # eight weeks of history, the last week flagged at the broken level
    clean = before(current - 7, [SUNDAY_LOW] * 49)
    broken = [obs(i, 0.8 * SUNDAY_LOW(i), anomalous=True) for i in range(current - 7, current)]
    verdict = assess(weekly(), obs(current, 400), clean + broken)
    assert verdict.status is ANOMALOUS, verdict.reason
    assert (verdict.baseline.n, verdict.baseline.median) == (4, 500)
    assert "35-day Sunday median 500" in verdict.reason


def test_reaching_back_never_crosses_a_rebaseline() -> None:
    current = SUNDAY + 28
    history = before(current - 7, [SUNDAY_LOW] * 49) + [
        obs(i, 0.8 * SUNDAY_LOW(i), anomalous=True) for i in range(current - 7, current)]
    verdict = assess(weekly(), obs(current, 400), history, since=day(current - 28))
    assert verdict.status is LEARNING and "3 of 4 Sunday" in verdict.reason
