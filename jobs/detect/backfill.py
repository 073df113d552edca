"""Baselines on day one: evaluate past windows from the current tables.

Valid only while the code that built those tables has not changed since the windows closed:
a backfilled value is what today's code says about yesterday. Observations are marked `backfilled`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from jobs.contracts.spec import window_bounds
from jobs.core.records import AssessmentStatus
from jobs.detect.baseline import assess
from jobs.detect.observe import observe
from jobs.runtime import Runtime


@dataclass(frozen=True)
class BackfillReport:
    windows: int
    observations: int
    anomalous: int
    skipped: tuple[str, ...]  # contracts that cannot be backfilled (no window)


def backfill(rt: Runtime, now: datetime, days: int,
             progress: Callable[[int, int], None] | None = None) -> BackfillReport:
    windowed = [c for c in rt.contracts if c.window is not None]
    skipped = tuple(c.id for c in rt.contracts if c.window is None)
    # The latest complete window is left to `check`; backfill fills the `days` before it.
    steps = sorted({window_bounds(c.window, now)[1] - k * c.window.delta
                    for c in windowed for k in range(1, int(timedelta(days=days) / c.window.delta) + 1)})
    made = anomalous = 0
    for i, at in enumerate(steps, 1):
        due = [c for c in windowed if window_bounds(c.window, at)[1] == at]
        for contract, obs in zip(due, observe(rt, at, due, backfilled=True)):
            made += 1
            history = rt.store.observations(contract.id)
            verdict = assess(contract, obs, history, since=rt.store.baseline_since(contract.id))
            # Past anomalies stay out of future baselines, exactly as if they had been detected live.
            rt.store.record_judgement(obs.id, verdict.status is AssessmentStatus.anomalous, verdict.baseline)
            anomalous += verdict.status is AssessmentStatus.anomalous
        if progress:
            progress(i, len(steps))
    return BackfillReport(len(steps), made, anomalous, skipped)
