"""Detection on generated business series: false alarms, day-one recall and delay, against an anchor.

Each series is replayed day by day through the product's own `jobs.detect.baseline.assess`, exactly as
the morning check runs it: flagged days leave the baseline. The same days go through an
Elementary-style anchor (mean ± 3 standard deviations of the last 14 points, with and without
day-of-week) in the same run. bench/README.md and docs/detection.md hold the figures.

    python -m pytest bench/bench_detection.py --benchmark-only -s     # ~5 minutes on 2 cores
    CAIRN_BENCH_SERIES=10 python -m pytest bench/bench_detection.py --benchmark-only -s   # a quick look
"""

from __future__ import annotations

import copy
import os
import statistics
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import timedelta

import numpy as np
import pytest

from bench.detection_series import FAMILIES, Series, anchor_band
from jobs.core.records import AssessmentStatus, Observation
from jobs.detect.baseline import assess

SERIES = int(os.environ.get("CAIRN_BENCH_SERIES", "40"))  # per family
HISTORY = 98  # days before the first scored one: fourteen of each weekday for the day-of-week anchor
QUIET = 60  # scored days without a shift, per series: the false-alarm denominator
STEPS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # drops injected on the day after the quiet days
DELAYED = (0.2, 0.4)  # steps also followed until caught
RAMPS = (0.2, 0.4, 0.6)  # drops reached linearly over RAMP_DAYS
RAMP_DAYS, FOLLOW = 7, 14
ANCHORS = ("anchor", "anchor (day of week)")  # the 3-sigma anchor as tools ship it
# The same anchor held to fewer false alarms: comparing recall at a matched false-alarm rate.
STRICTER = {"anchor, 4 sd": 4.0, "anchor, 5 sd": 5.0, "anchor, 6 sd": 6.0}
DETECTORS = ("cairn", *ANCHORS, *STRICTER)
FALSE_ALARM_TARGET = 1.0  # per 1,000 contract-days


@dataclass
class Tally:
    """What one detector did on one family's series."""

    quiet_days: int = 0
    false_alarms: int = 0
    steps: list[tuple[float, float, str, bool]] = field(default_factory=list)  # size, size/noise, bucket, caught
    delays: list[tuple[str, float, int | None]] = field(default_factory=list)  # kind, size, days (None: missed)

    def merge(self, other: "Tally") -> None:
        self.quiet_days += other.quiet_days
        self.false_alarms += other.false_alarms
        self.steps += other.steps
        self.delays += other.delays


class Cairn:
    """The product's detector on one series, with its own history and flags."""

    def __init__(self, series: Series, upto: int):
        self.series = series
        self.history = [self._observation(day, float(series.values[day]), _count(series, day))
                        for day in range(upto)]

    def _observation(self, day: int, value: float, count: int | None, anomalous: bool = False) -> Observation:
        start = self.series.at(day)
        windowed = self.series.contract.window is not None
        return Observation(self.series.contract.id, start + timedelta(days=1, hours=1), value,
                           start if windowed else None, start + timedelta(days=1) if windowed else None,
                           count=count, anomalous=anomalous, id=day + 1)

    def judge(self, day: int, value: float, count: int | None) -> bool:
        current = self._observation(day, value, count)
        verdict = assess(self.series.contract, current, self.history[-70:])
        return verdict.status is AssessmentStatus.anomalous

    def record(self, day: int, value: float, count: int | None, anomalous: bool) -> None:
        self.history.append(self._observation(day, value, count, anomalous))


class Anchor:
    """Mean ± 3 sd of the last 14 unflagged points (of the same weekday)."""

    def __init__(self, series: Series, upto: int, weekday: bool, k: float = 3.0):
        self.values = np.array(series.values[:upto], dtype=float)
        self.flags = np.zeros(upto, dtype=bool)
        self.weekday, self.k = weekday, k

    def judge(self, day: int, value: float, count: int | None) -> bool:
        band = anchor_band(self.values, day, self.flags, self.weekday, self.k)
        return band is not None and not band[0] <= value <= band[1]

    def record(self, day: int, value: float, count: int | None, anomalous: bool) -> None:
        self.values = np.append(self.values, value)
        self.flags = np.append(self.flags, anomalous)


def _count(series: Series, day: int) -> int | None:
    return None if series.counts is None else int(series.counts[day])


def _detectors(series: Series, upto: int) -> dict[str, object]:
    return {"cairn": Cairn(series, upto), "anchor": Anchor(series, upto, False),
            "anchor (day of week)": Anchor(series, upto, True),
            **{name: Anchor(series, upto, False, k) for name, k in STRICTER.items()}}


def replay(family: str, seed: int) -> dict[str, Tally]:
    """One series: quiet days, then day-one steps, then followed steps and ramps."""
    rng = np.random.default_rng(seed)
    series = FAMILIES[family](rng, HISTORY + QUIET + FOLLOW + 1)
    tallies = {name: Tally() for name in DETECTORS}
    detectors = _detectors(series, HISTORY)
    for day in range(HISTORY, HISTORY + QUIET):
        value, count = float(series.values[day]), _count(series, day)
        for name, detector in detectors.items():
            flagged = day not in series.skip and detector.judge(day, value, count)
            tallies[name].quiet_days += day not in series.skip
            tallies[name].false_alarms += flagged
            detector.record(day, value, count, flagged)
    first = HISTORY + QUIET
    ratio = 1 / series.combined_noise(first)
    for size in STEPS:
        value, count = series.draw(first, 1 - size, rng)
        for name, detector in detectors.items():
            tallies[name].steps.append((size, size * ratio, series.bucket, detector.judge(first, value, count)))
    for kind, sizes in (("step", DELAYED), ("ramp", RAMPS)):
        for size in sizes:
            days = [series.draw(first + k, 1 - size * (min(1, (k + 1) / RAMP_DAYS) if kind == "ramp" else 1), rng)
                    for k in range(FOLLOW)]
            for name, detector in detectors.items():
                # Each follow-up starts from the detector as the quiet days left it.
                tallies[name].delays.append((kind, size, _delay(copy.deepcopy(detector), first, days)))
    return tallies


def _delay(detector, first: int, days: list[tuple[float, int | None]]) -> int | None:
    """Days from the shift's start to the first alarm (0: the first day), or None if never."""
    for k, (value, count) in enumerate(days):
        caught = detector.judge(first + k, value, count)
        if caught:
            return k
        detector.record(first + k, value, count, False)
    return None


def run() -> dict[str, dict[str, Tally]]:
    """Every family's series, in parallel over the machine's cores."""
    results: dict[str, dict[str, Tally]] = {family: {name: Tally() for name in DETECTORS} for family in FAMILIES}
    jobs = [(family, 1000 * i + j) for i, family in enumerate(FAMILIES) for j in range(SERIES)]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for (family, _), tallies in zip(jobs, pool.map(replay, *zip(*jobs), chunksize=4)):
            for name, tally in tallies.items():
                results[family][name].merge(tally)
    return results


# --- figures ----------------------------------------------------------------------------------


def false_alarms(t: Tally) -> float:
    return 1000 * t.false_alarms / max(t.quiet_days, 1)


def recall(t: Tally, at_least: float = 0.0, *, noise_ratio: float = 0.0, bucket: str | None = None) -> float | None:
    hits = [caught for size, ratio, b, caught in t.steps
            if size >= at_least - 1e-9 and ratio >= noise_ratio and (bucket is None or b == bucket)]
    return sum(hits) / len(hits) if hits else None


def smallest(t: Tally, bucket: str | None = None, target: float = 0.9) -> float | None:
    """The smallest step caught on day one with `target` recall (None: not even a 90% drop)."""
    for size in STEPS:
        found = recall(replace(t, steps=[s for s in t.steps if abs(s[0] - size) < 1e-9]), bucket=bucket)
        if found is not None and found >= target:
            return size
    return None


def delay(t: Tally, kind: str) -> str:
    found = [d for k, _, d in t.delays if k == kind]
    caught = [d for d in found if d is not None]
    if not caught:
        return "never"
    return f"{statistics.median(caught):.0f} d ({len(caught)}/{len(found)})"


def table(results: dict[str, dict[str, Tally]]) -> str:
    def pct(x: float | None) -> str:
        return "–" if x is None else f"{x:.0%}"

    lines = ["| family | detector | false alarms / 1,000 | day-one recall ≥20% | ≥40% | ≥6× noise | "
             "smallest 90% | step delay | ramp delay |", "|---|---|---|---|---|---|---|---|---|"]
    for family, by in results.items():
        for name, t in by.items():
            small = smallest(t)
            lines.append(f"| {family} | {name} | {false_alarms(t):.2f} | {pct(recall(t, 0.2))} | "
                         f"{pct(recall(t, 0.4))} | {pct(recall(t, noise_ratio=6))} | "
                         f"{'–' if small is None else f'{small:.0%}'} | {delay(t, 'step')} | {delay(t, 'ramp')} |")
    return "\n".join(lines)


def buckets(results: dict[str, dict[str, Tally]]) -> str:
    """The smallest step Cairn catches with 90% recall, by the size of the sample behind a day."""
    lines = ["| family | sample per day | smallest 90% (cairn) | anchor | anchor (day of week) |", "|---|---|---|---|---|"]
    for family, by in results.items():
        for bucket in sorted({b for _, _, b, _ in by["cairn"].steps if b}, key=lambda b: int(b.split("/")[0])):
            cells = [smallest(by[name], bucket) for name in ("cairn", *ANCHORS)]
            lines.append(f"| {family} | {bucket} | " + " | ".join("none ≤ 90%" if c is None else f"{c:.0%}"
                                                                for c in cells) + " |")
    return "\n".join(lines)


@pytest.mark.benchmark(group="detection")
def test_detection_beats_the_anchor_on_every_family(benchmark) -> None:
    results = benchmark.pedantic(run, rounds=1, iterations=1)
    print("\n" + table(results) + "\n\n" + buckets(results))
    for family, by in results.items():
        cairn = by["cairn"]
        benchmark.extra_info[family] = {name: {"false_alarms_per_1000": false_alarms(t), "recall_20": recall(t, 0.2),
                                               "recall_40": recall(t, 0.4), "recall_6x": recall(t, noise_ratio=6)}
                                        for name, t in by.items()}
        assert false_alarms(cairn) <= FALSE_ALARM_TARGET, (family, false_alarms(cairn))
        six = recall(cairn, noise_ratio=6)
        assert six is None or six >= 0.99, (family, six)
        caught = recall(cairn, 0.2) or 0
        # No more false alarms than the anchor as shipped and strictly better on one axis; as many drops
        # caught, or, where its 3 sd buys recall with 10-50x the false alarms (a steady ratio), more than the
        # anchor held to the same false-alarm target (at 100% recall on a stock, neither can do better).
        matched = [recall(by[name], 0.2) or 0 for name in STRICTER if false_alarms(by[name]) <= FALSE_ALARM_TARGET]
        for anchor in ANCHORS:
            theirs = recall(by[anchor], 0.2) or 0
            assert false_alarms(cairn) <= false_alarms(by[anchor]), (family, anchor)
            assert caught >= theirs or caught > max(matched, default=0), (family, anchor)
            assert false_alarms(cairn) < false_alarms(by[anchor]) or caught > theirs or theirs == 1, (family, anchor)
        assert caught >= max(matched, default=0), family
