"""The PR body: a golden file for the whole layout, and repository text that must stay inert."""

from __future__ import annotations

import dataclasses
import os
import re
from datetime import datetime, timezone
from pathlib import Path

from jobs.contracts.spec import Contract
from jobs.core.records import (
    BaselineStats,
    Candidate,
    Incident,
    IncidentDetails,
    IncidentStatus,
    RankedCause,
    Ranking,
    RowDelta,
    RunDetail,
    TriageDetail,
    Verdict,
    Verification,
)
from jobs.project.dbt import NodeResult
from jobs.propose.prbody import check_proof, check_summary, code, plain, pr_body, pr_title
from jobs.propose.runbody import run_check_proof, run_pr_body, run_pr_title
from jobs.verify.run_goal import RunGoal, RunMember, judge_run

GOLDEN = Path(__file__).parent / "fixtures" / "pr_body.md"
AT = datetime(2026, 11, 30, 6, 0, tzinfo=timezone.utc)
SHA = "8f31c2a" + "0" * 33
ALT = "2b7a91d" + "1" * 33

CONTRACT = Contract(id="orders.revenue", kind="volume", model="fct_orders", expr="sum(amount)",
                    where="status = 'completed'", time_column="ordered_at", window="day", severity="high")
INCIDENT = Incident(
    id=7, contract_id="orders.revenue", status=IncidentStatus.verified, severity="high", detected_at=AT,
    updated_at=AT, first_bad_at=AT, first_bad_sha=SHA, last_good_at=None, last_good_sha=None, value=81600.0,
    baseline=BaselineStats(expected=100000.0, lower=93330.0, upper=106670.0, n=28),
    change_pct=-18.4, reason="orders.revenue 81,600 is below its 28-day forecast 100,000",
    details=IncidentDetails(triage=TriageDetail(kind="code_change", stage="verification", evidence=(
        "proven: reverting 8f31c2a brings orders.revenue from 81,600 to 100,240 on clone cairn_clone_7_8f31c2a",))),
)
CAUSE = Candidate(
    sha=SHA, author="Dana Analyst", authored_at=AT, message="Exclude coupon payments from revenue\n\nLong body",
    files=("models/marts/fct_orders.sql",), models=("model.shop.fct_orders",), distance=1,
    touches_metric_columns=True,
)
OTHER = Candidate(
    sha=ALT, author="Sam", authored_at=AT, message="Rename stg_orders columns", files=("models/staging/stg_orders.sql",),
    models=("model.shop.stg_orders",), distance=2, touches_metric_columns=False,
)
RANKING = Ranking(causes=(RankedCause(SHA, 0.82, "filters payments feeding amount"),
                          RankedCause(ALT, 0.11, "renames columns; amount untouched")), ranker="llm")
VERIFICATION = Verification(
    sha=SHA, verdict=Verdict.verified, clone_id="cairn_clone_7_8f31c2a",
    dbt_command="dbt build --select +fct_orders --target cairn_clone", before=81600.0, after=100240.0,
    tests={"pass": 12, "fail": 0, "error": 0, "skip": 1}, reverted=(SHA,),
)
DELTA = RowDelta(
    model="fct_orders", key=("order_id",), added=0, removed=0, changed=412, unchanged=9588,
    column_changes={"amount": 412}, concentration="97% of changed rows have payment_method = 'coupon'",
    samples=tuple({"order_id": i, "amount_before": 20.0 + i, "amount_after": 0.0} for i in range(7)),
)


def body(**changes) -> str:
    values = dict(incident=INCIDENT, contract=CONTRACT, candidate=CAUSE, ranking=RANKING, candidates=[CAUSE, OTHER],
                  verification=VERIFICATION, deltas=[DELTA], lineage_path=["stg_payments", "int_order_payments",
                                                                             "fct_orders"], mode="assisted")
    return pr_body(**{**values, **changes})


def test_body_matches_the_golden_file():
    if os.environ.get("CAIRN_REGENERATE"):
        GOLDEN.write_text(body())
    assert body() == GOLDEN.read_text(), (
        "the PR body changed; if the change is intended, regenerate the golden file with "
        "`CAIRN_REGENERATE=1 python -m pytest tests/test_prbody.py` and review its diff"
    )


def test_every_required_field_is_present():
    text = body()
    for needed in ("Cairn incident #7", "`orders.revenue`", "volume", "`fct_orders`", "sum(amount)",
                   "81,600", "100,000", "-18.4%", "```mermaid", "graph LR", "stg_payments", "int_order_payments",
                   SHA, "Dana Analyst", "Exclude coupon payments from revenue", "models/marts/fct\\_orders",
                   "82%", "2b7a91d", "11%", "cairn_clone_7_8f31c2a", "dbt build --select +fct_orders",
                   "100,240", "12 passed, 0 failed", "412 changed", "production was not written", "assisted"):
        assert needed in text or needed.replace("\\_", "_") in text, needed
    assert "Long body" not in text  # the message's first line only
    samples = text.split("### Sample-row deltas")[1].split("---\n")[0]
    assert len([line for line in samples.splitlines() if line.startswith("| `")]) == 5
    assert "2 more sample rows not shown" in text


HOSTILE = "fix | ``` <script>alert(1)</script> ](x) **bold"


def _tables_hold(text: str) -> None:
    """Every table row has as many unescaped cell separators as its header."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|---"):
            width = line.count("|")
            for row in lines[i + 1:]:
                if not row.startswith("|"):
                    break
                assert len(re.findall(r"(?<!\\)\|", row)) == width, row


def test_hostile_repository_text_cannot_break_the_structure():
    evil = dataclasses.replace(CAUSE, message=HOSTILE, author="<img src=x onerror=alert(1)>",
                               files=("models/a|b`.sql", "```"))
    delta = dataclasses.replace(DELTA, samples=({"order_id": "1 | 2", "note": "```"},))
    text = body(candidate=evil, candidates=[evil, OTHER], deltas=[delta], lineage_path=["stg`x", 'a"]-->b'])
    assert "<script" not in text and "<img" not in text
    fences = [line for line in text.splitlines() if line.startswith("```")]
    assert fences == ["```mermaid", "```"]  # only our own fence opens and closes
    _tables_hold(text)
    mermaid = text.split("```mermaid")[1].split("```")[0]
    assert "`" not in mermaid and '"]-->' not in mermaid
    assert pr_title(INCIDENT, CONTRACT, evil).count("\n") == 0


def test_inert_helpers():
    assert plain("a | b <i> *x*") == "a \\| b &lt;i&gt; \\*x\\*"
    assert plain("# not a heading") == "\\# not a heading" and plain("1. not a list") == "1\\. not a list"
    assert code("a ` b") == "``a ` b``" and code("x|y") == "`x\\|y`" and code("`x") == "`` `x ``"


def test_secrets_never_appear():
    v = dataclasses.replace(VERIFICATION, dbt_command="dbt build --vars 'url: https://u:hunter2@db.example/x'",
                            detail="cloned from bigquery://svc:s3cr3t@project")
    text = body(verification=v) + check_summary(v)
    assert "hunter2" not in text and "s3cr3t" not in text
    assert "https://***@db.example" in text and "bigquery://\\*\\*\\*@project" in text


def test_title_and_check_proof():
    title = pr_title(INCIDENT, CONTRACT, CAUSE)
    assert title == "Revert 8f31c2a: Exclude coupon payments from revenue (orders.revenue -18.4%, Cairn #7)"
    long = dataclasses.replace(CAUSE, message="x" * 500)
    assert len(pr_title(INCIDENT, CONTRACT, long)) <= 200
    proof = check_proof(CONTRACT, VERIFICATION)
    assert proof.conclusion == "success" and "81,600 → 100,240" in proof.title
    assert "12 passed" in proof.summary and "cairn_clone_7_8f31c2a" in proof.summary
    failed = check_proof(CONTRACT, dataclasses.replace(VERIFICATION, verdict=Verdict.not_recovered))
    assert failed.conclusion == "failure"


RUN = RunDetail(node="test.shop.not_null_stg_orders_order_status.d7fcf15f79", kind="test_failure",
                summary="test not_null on stg_orders.order_status failed: 2034 failing rows",
                error="Got 2034 results, configured to fail if != 0\n``` </pre> | postgres://u:hunter2@db",
                invocation_id="83d1547c", last_invocation_id="83d1547c", last_failed_at=AT, failing_rows=2034,
                stale=("test.shop.not_null_stg_orders_order_status.d7fcf15f79",
                       *(f"model.shop.m{i}" for i in range(12))))
RUN_INCIDENT = dataclasses.replace(INCIDENT, contract_id="run:" + RUN.node, value=2034.0, baseline=None,
                                   change_pct=None, details=INCIDENT.details.merged({"run": RUN}))
RUN_FIX = dataclasses.replace(VERIFICATION, before=2034.0, after=0.0, detail="with the revert: … pass")


def test_a_failed_runs_pr_names_the_node_the_error_and_the_failing_rows_before_and_after():
    text = run_pr_body(incident=RUN_INCIDENT, run=RUN, candidate=CAUSE, ranking=RANKING, candidates=[CAUSE, OTHER],
                       verification=RUN_FIX, deltas=[DELTA], lineage_path=["stg_orders", "not_null_stg_orders"],
                       mode="assisted")
    assert text.startswith("## Cairn incident #7: `not_null_stg_orders_order_status` failed in production")
    for expected in (RUN.node, "test failure", "`83d1547c`", "| Before (with the commit) | 2,034 failing rows |",
                     "| After (reverted) | 0 failing rows |", VERIFICATION.clone_id, VERIFICATION.dbt_command,
                     "and 4 more", "(the failing node is last)", "Got 2034 results"):
        assert expected in text, expected
    # The error is dbt's text: fenced longer than its own backticks, a URL's password masked.
    fence = text[text.index("Error:"):].split("\n")[2]
    assert fence == "````text" and "hunter2" not in text and "```` " not in text
    _tables_hold(text)
    member = dataclasses.replace(RUN_INCIDENT, id=8, details=IncidentDetails(run=RUN.model_copy(update={
        "node": "model.shop.stg_payments", "kind": "runtime_sql", "failing_rows": None})))
    grouped = run_pr_body(incident=RUN_INCIDENT, run=RUN, candidate=CAUSE, ranking=RANKING, candidates=[CAUSE],
                          verification=RUN_FIX, deltas=[], lineage_path=[], mode="assisted", group=[member])
    assert "### Failures this revert heals" in grouped and "| #8 | `model.shop.stg_payments` | runtime SQL error |" in grouped
    assert "for incidents #7, #8" in grouped and " and 1 more, Cairn #7)" in run_pr_title(RUN_INCIDENT, RUN, CAUSE,
                                                                                        others=1)
    title = run_pr_title(RUN_INCIDENT, RUN, CAUSE)
    assert title == "Revert 8f31c2a: Exclude coupon payments from revenue (not_null_stg_orders_order_status failed: " \
                    "test failure, Cairn #7)"
    proof = run_check_proof(RUN, RUN_FIX)
    assert proof.conclusion == "success" and VERIFICATION.clone_id in proof.summary


def test_a_failed_runs_revert_is_judged_by_the_build_statuses():
    goal = RunGoal(failing=(RUN.node,), stale=(RUN.node, "model.shop.fct_orders", "test.shop.unique_fct_orders_id",
                                               "exposure.shop.revenue", "source.shop.raw.orders"), failing_rows=2034)
    manifest = {"nodes": {uid: {"name": uid.split(".")[2]} for uid in
                          (RUN.node, "model.shop.fct_orders", "model.shop.stg_orders", "test.shop.unique_fct_orders_id")}}
    # Reverted models, the failing node and stale models with their children; stale tests come with their models.
    assert goal.select(manifest, ["model.shop.stg_orders"]) == \
        "stg_orders+ not_null_stg_orders_order_status+ fct_orders+"
    assert goal.reached(manifest)[1] == {RUN.node, "model.shop.fct_orders", "test.shop.unique_fct_orders_id"}
    record: dict = {}
    nodes = [NodeResult(RUN.node, "pass"), NodeResult("model.shop.fct_orders", "success")]
    verdict, detail = judge_run(goal, manifest, nodes, {"pass": 2}, record)
    assert verdict is Verdict.verified and record["after"] == 0.0 and "not_null_stg_orders_order_status" in detail
    # A group's build: each member's node judged on it, its failing rows before and after.
    group = dataclasses.replace(goal, members=(RunMember(7, "run:" + RUN.node, RUN.node, 2034),
                                               RunMember(8, "run:model.shop.fct_orders", "model.shop.fct_orders")))
    record = {}
    assert judge_run(group, manifest, nodes, {"pass": 2}, record)[0] is Verdict.verified
    assert [(m.incident_id, m.before, m.after, m.verdict) for m in record["members"]] == [
        (7, 2034, 0.0, Verdict.verified), (8, None, None, Verdict.verified)]
    gone = {"nodes": {k: v for k, v in manifest["nodes"].items() if k != RUN.node}}
    verdict, detail = judge_run(goal, gone, nodes, {"pass": 2}, {})
    assert verdict is Verdict.not_recovered and "removes" in detail
