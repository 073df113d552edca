"""The deterministic scorer, table-driven: candidates and evidence in, expected order out."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from jobs.attribute.ranking import CAP, VERIFIED_CAP, logic_lines, score
from jobs.core.records import Candidate, RowDelta

T0 = datetime(2026, 10, 1, 9, tzinfo=timezone.utc)
SQL_DIFF = "--- a/models/orders.sql\n+++ b/models/orders.sql\n" + "".join(
    f"-select a{i}\n+select b{i}\n" for i in range(10))


def cand(sha: str, hour: int = 0, *, distance: int | None = 1, touches: bool | None = None,
         diff: str = SQL_DIFF, docs_only: bool = False, intentional: bool = False) -> Candidate:
    return Candidate(sha=sha * 40 if len(sha) == 1 else sha, author="ana", authored_at=T0 + timedelta(hours=hour),
                     message=f"commit {sha}", files=("models/orders.sql",), models=("model.shop.orders",),
                     distance=distance, touches_metric_columns=touches, diff=diff, docs_only=docs_only,
                     intentional=intentional)


def delta(changed: int, total: int = 100) -> RowDelta:
    return RowDelta(model="model.shop.orders", key=("order_id",), added=0, removed=0,
                    changed=changed, unchanged=total - changed)


CASES = [
    ("closer wins", [cand("a", distance=3), cand("b", distance=0)], {}, {}, "ba"),
    ("metric columns beat distance", [cand("a", distance=0, touches=False), cand("b", distance=2, touches=True)],
     {}, {}, "ba"),
    ("unknown columns sit between", [cand("a", touches=False), cand("b"), cand("c", touches=True)], {}, {}, "cba"),
    ("docs only sinks", [cand("a", 0, distance=0, touches=True, docs_only=True), cand("b", 1, distance=4)],
     {}, {}, "ba"),
    ("row changes beat recency", [cand("a", 0), cand("b", 5)], {"a" * 40: delta(30), "b" * 40: delta(0)}, {}, "ab"),
    # A later commit to the same file must not hide the earlier culprit.
    ("earlier culprit, later tweak", [cand("a", 0, touches=True), cand("b", 9, touches=None)], {}, {}, "ab"),
    ("recency only breaks ties", [cand("a", 0), cand("b", 3)], {}, {}, "ba"),
    ("comment-only diff drops", [cand("a", diff="+++ b/x.sql\n+-- a note\n"), cand("b")], {}, {}, "ba"),
    ("intentional listed last", [cand("a", distance=0, touches=True, intentional=True), cand("b", distance=3)],
     {}, {}, "ba"),
    ("verified revert wins", [cand("a", distance=0, touches=True), cand("b", distance=3)], {},
     {"b" * 40: True, "a" * 40: False}, "ba"),
]


@pytest.mark.parametrize("name, candidates, deltas, verified, expected", CASES, ids=[c[0] for c in CASES])
def test_order(name, candidates, deltas, verified, expected) -> None:
    ranking = score(candidates, deltas, verified)
    assert ranking.ranker == "scorer" and ranking.note == ""
    assert "".join(cause.sha[0] for cause in ranking.causes) == expected
    confidences = [cause.confidence for cause in ranking.causes]
    assert all(0.0 <= c <= 1.0 for c in confidences) and sum(confidences) <= 1.0 + 1e-9


def test_confidences_are_capped_unless_verified() -> None:
    strong = [cand("a", distance=0, touches=True)]
    deltas = {"a" * 40: delta(40)}
    assert score(strong, deltas).top.confidence == CAP
    assert score(strong, deltas, {"a" * 40: True}).top.confidence == VERIFIED_CAP


def test_weak_candidates_get_low_confidence_and_similar_ones_share_it() -> None:
    assert score([cand("a", docs_only=True)]).top.confidence < 0.05
    pair = score([cand("a"), cand("b")]).causes
    assert abs(pair[0].confidence - pair[1].confidence) < 0.15 and pair[0].confidence < 0.5


def test_rationale_is_one_sentence_from_the_features() -> None:
    ranking = score([cand("a", distance=0, touches=True), cand("b", distance=2, docs_only=True, intentional=True)],
                    {"a" * 40: delta(12)})
    a, b = ranking.causes
    assert a.rationale == ("It changes 12% of the rows of orders; it touches the metric's columns; "
                           "it changes the metric's own model; 20 lines of SQL logic changed.")
    assert b.rationale.startswith("It changes documentation only;") and "not proposed for revert" in b.rationale
    assert all(c.rationale.count(".") == 1 and c.rationale.endswith(".") for c in ranking.causes)


@pytest.mark.parametrize("diff, expected", [
    ("", None),
    ("--- a/m.sql\n+++ b/m.sql\n@@ -1 +1 @@\n-select 1\n+select 2\n context\n", 2),
    ("+++ b/m.sql\n+\n+   -- why\n+{# jinja note #}\n", 0),
])
def test_logic_lines(diff: str, expected: int | None) -> None:
    assert logic_lines(diff) == expected


def test_no_candidates() -> None:
    ranking = score([])
    assert ranking.causes == () and ranking.top is None
