"""The deterministic scorer: candidate commits and their evidence in, a ranking with confidences out.

Each candidate gets a logit, the sum of the weighted features below plus BIAS. Confidences are a
softmax over the candidates plus one pseudo-candidate, "no listed commit explains this", whose
logit is 0:

    confidence_i = exp(z_i) / (1 + sum_j exp(z_j))

so confidences of one ranking sum to less than 1, compare across candidates and incidents, and are
all small when every candidate is weak (docs-only, no row changes). A confidence is capped at
CAP (0.95) unless a revert of that commit was verified to restore the metric (VERIFIED_CAP).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from jobs.core.records import Candidate, RankedCause, Ranking, RowDelta

BIAS = 1.0
PER_HOP = -0.6  # per lineage hop between the touched model and the metric's model
UNKNOWN_DISTANCE = -1.0  # a macro or project file whose reach was not resolved
TOUCHES = {True: 1.5, False: -1.5, None: 0.0}
DOCS_ONLY = -6.0
LOGIC = 0.6  # at most, for ~100 changed lines of SQL logic; grows with log(lines)
NO_LOGIC = -0.5  # a diff that changes only comments or whitespace
ROWS_UNCHANGED = -2.0  # the model's rows are identical with and without the commit
ROWS_CHANGED, ROWS_SCALE = 1.0, 2.0  # ROWS_CHANGED + ROWS_SCALE * sqrt(1 - match_score)
RECENCY = 0.25  # newest in the window; oldest 0. Small: a later commit must not hide an earlier culprit
VERIFIED = {True: 6.0, False: -4.0}
CAP, VERIFIED_CAP = 0.95, 0.99


@dataclass(frozen=True)
class Features:
    """What the scorer knows about one candidate, in the units its weights are written in."""

    distance: int | None
    touches: bool | None
    docs_only: bool
    logic_lines: int | None  # None: no diff to count
    rows_changed: float | None  # 1 - match_score on the touched model; None: no row delta
    delta_model: str | None
    recency: float  # 0 oldest .. 1 newest in the window
    intentional: bool
    verified: bool | None


def logic_lines(diff: str) -> int | None:
    """Added or removed lines of a unified diff that are neither blank nor SQL/Jinja comments."""
    if not diff.strip():
        return None
    count = 0
    for line in diff.splitlines():
        if line[:1] not in "+-" or line.startswith(("+++", "---")):
            continue
        body = line[1:].strip()
        if body and not body.startswith(("--", "{#", "#")):
            count += 1
    return count


def features(candidate: Candidate, delta: RowDelta | None, recency: float, verified: bool | None) -> Features:
    return Features(
        distance=candidate.distance,
        touches=candidate.touches_metric_columns,
        docs_only=candidate.docs_only,
        logic_lines=logic_lines(candidate.compiled_diff or candidate.diff),
        rows_changed=None if delta is None else 1.0 - delta.match_score,
        delta_model=None if delta is None else delta.model.rsplit(".", 1)[-1],
        recency=recency,
        intentional=candidate.intentional,
        verified=verified,
    )


def logit(f: Features) -> float:
    z = BIAS + (UNKNOWN_DISTANCE if f.distance is None else PER_HOP * f.distance) + TOUCHES[f.touches]
    if f.docs_only:
        z += DOCS_ONLY
    if f.logic_lines == 0:
        z += NO_LOGIC
    elif f.logic_lines:
        z += LOGIC * min(1.0, math.log1p(f.logic_lines) / math.log1p(100))
    if f.rows_changed is not None:
        z += ROWS_UNCHANGED if f.rows_changed == 0 else ROWS_CHANGED + ROWS_SCALE * math.sqrt(f.rows_changed)
    if f.verified is not None:
        z += VERIFIED[f.verified]
    return z + RECENCY * f.recency


@dataclass(frozen=True)
class Subject:
    """What the evidence is about, in the rationale's words: a metric, or a failed run's node."""

    restored: str = "the metric"
    columns: str = "the metric's columns"
    own: str = "the metric's own model"
    model: str = "the metric's model"


METRIC, FAILED_RUN = Subject(), Subject("the failed run's nodes", "the failing node's columns", "the failing node itself",
                                        "the failing node")


def rationale(f: Features, subject: Subject = METRIC) -> str:
    """One sentence from the features, strongest evidence first."""
    parts = []
    if f.verified is not None:
        parts.append(f"reverting it restored {subject.restored}" if f.verified
                     else f"reverting it did not restore {subject.restored}")
    if f.docs_only:
        parts.append("it changes documentation only")
    if f.rows_changed is not None:
        share = "under 1%" if f.rows_changed < 0.005 else f"{f.rows_changed:.0%}"
        parts.append(f"it changes {share} of the rows of {f.delta_model}" if f.rows_changed
                     else f"it leaves the rows of {f.delta_model} unchanged")
    if f.touches is not None:
        parts.append(f"it touches {subject.columns}" if f.touches else f"it does not touch {subject.columns}")
    if f.distance is not None:
        parts.append(f"it changes {subject.own}" if f.distance == 0
                     else f"it is {f.distance} hop{'s' * (f.distance > 1)} upstream of {subject.model}")
    if f.logic_lines is not None and not f.docs_only:
        parts.append(f"{f.logic_lines} line{'s' * (f.logic_lines != 1)} of SQL logic changed" if f.logic_lines
                     else "no SQL logic changed")
    if f.intentional:
        parts.append("its message marks it intentional, so it is listed but not proposed for revert")
    text = "; ".join(parts) or "no evidence beyond touching the metric's upstream files"
    return text[0].upper() + text[1:] + "."


def score(
    candidates: Sequence[Candidate],
    deltas: Mapping[str, RowDelta] = {},
    verified: Mapping[str, bool] = {},
    subject: Subject = METRIC,
) -> Ranking:
    """Rank candidates by evidence; ties keep the order given. Intentional commits rank last. `subject` words
    the rationales (a failed run's incident has no metric)."""
    by_time = sorted(range(len(candidates)), key=lambda i: candidates[i].authored_at)
    span = max(len(candidates) - 1, 1)
    recency = {i: rank / span for rank, i in enumerate(by_time)}
    feats = [features(c, deltas.get(c.sha), recency[i], verified.get(c.sha)) for i, c in enumerate(candidates)]
    z = [logit(f) for f in feats]
    top = max(z, default=0.0)
    # Shift by the largest logit so exp() cannot overflow; the "none" option shifts with it.
    weights = [math.exp(v - top) for v in z]
    norm = math.exp(-top) + sum(weights)
    causes = []
    for c, f, w in zip(candidates, feats, weights):
        confidence = min(w / norm, VERIFIED_CAP if f.verified else CAP)
        causes.append(RankedCause(sha=c.sha, confidence=round(confidence, 4), rationale=rationale(f, subject)))
    return Ranking(causes=order(causes, candidates), ranker="scorer")


def order(causes: Sequence[RankedCause], candidates: Sequence[Candidate]) -> tuple[RankedCause, ...]:
    """Most confident first, but never an intentional commit ahead of one that may be reverted."""
    intentional = {c.sha for c in candidates if c.intentional}
    return tuple(sorted(causes, key=lambda cause: (cause.sha in intentional, -cause.confidence)))


def rank_group(rankings: Mapping[int, Ranking], candidates: Sequence[Candidate]) -> Ranking:
    """One ranking for a group's incidents (by ID): a commit weighs the sum of its confidences over them.

    So a commit that may explain several of them ranks above one that explains a single one a bit
    better; its confidence is the highest it has for any one incident. Intentional commits rank last.
    """
    total: dict[str, float] = {}
    best: dict[str, RankedCause] = {}
    reach: dict[str, int] = {}
    for ranking in rankings.values():
        for cause in ranking.causes:
            total[cause.sha] = total.get(cause.sha, 0.0) + cause.confidence
            reach[cause.sha] = reach.get(cause.sha, 0) + 1
            if cause.sha not in best or cause.confidence > best[cause.sha].confidence:
                best[cause.sha] = cause
    intentional = {c.sha for c in candidates if c.intentional}
    causes = [RankedCause(sha, best[sha].confidence, f"It touches the lineage of {reach[sha]} of the group's "
                                                     f"{len(rankings)} metrics. {best[sha].rationale}")
              for sha in sorted(total, key=lambda sha: (sha in intentional, -total[sha]))]
    rankers = "+".join(sorted({r.ranker for r in rankings.values()})) or "scorer"
    notes = "; ".join(dict.fromkeys(r.note for r in rankings.values() if r.note))
    return Ranking(causes=tuple(causes), ranker=rankers, note=notes)
