"""What healing a failed production run costs: `cairn ingest` to verified PR against one scoped `dbt build`.

A failed run is healed by the loop of docs/runs.md: the run recorded, its failing node classified and opened
as an incident, attributed, the culprit's revert built on a clone, the PR opened. What an engineer does
without Cairn starts with rebuilding the failing model and its children to see the error again: one `dbt build
--select <model>+` on production at the failed SHA. The loop is reported as a ratio to that build (target: at
most 2x), measured in the same round on the same deployment, never asserted as a time.

Each round copies the scenario baseline (tests/test_scenarios.py), ingests a green production build, lets
Cairn parse the project as its hourly check does (that parse state stays in .cairn/target in production; the
copy drops it), lands the case's commits (tests/test_run_scenarios.py: a culprit among decoys) and builds
production again, which fails. Then, timed: the baseline, dbt in this process (jobs.project.dbt.Dbt) on the failed run's warehouse
and parse state, which must fail as the run did; and the loop, `cairn ingest <failed target>` through the real
CLI entry point, which runs every stage here (no Redis). The round counts only if the incident reached
`pr_opened` with a verified revert of the culprit and the PR's branch exists on the local forge. Where the
loop's time went comes from the audit trail's timestamps (the wall clock: the CLI's clock is not pinned).
For scale, each round also times the same scoped build once the PR's revert is checked out: green, every
child built and tested, as the verification's sandbox build is.
"""

from __future__ import annotations

import os
import statistics
import time
from datetime import datetime, timezone

import pytest

from jobs.config import load_config
from jobs.core.records import IncidentStatus, Verdict, run_subject
from jobs.propose.runbody import node_name
from jobs.runtime import Runtime
from tests.test_run_scenarios import MISSING_COLUMN, NULL_STATUS, Failed, RunCase, fail, ingest
from tests.test_scenarios import production_dbt

ROUNDS = int(os.environ.get("CAIRN_BENCH_ROUNDS", "3"))
# Audit events that bound the loop's stages, in the order the loop writes them.
STAGE_EVENTS = ("attribution.started", "attribution.finished", "verification.finished", "decision.made")
PHASES = ("worktree", "revert", "scope", "clone", "build", "evidence")  # a sandbox build's (jobs.verify.verification)


def scoped_build(failed: Failed, scenario: RunCase) -> tuple[float, str]:
    """The baseline: `dbt build --select <failing model>+` on production at the failed SHA; its seconds and
    the failing node's status (the build must fail as the run did, or it measured something else)."""
    select = f"{node_name(scenario.model)}+"
    started = time.perf_counter()
    result = production_dbt(failed.root).build(select=select)
    seconds = time.perf_counter() - started
    status = next((n.status for n in result.nodes if n.unique_id.startswith(scenario.node)), "absent")
    assert not result.success and status in ("error", "fail"), (select, status)
    return seconds, status


def fixed_build(failed: Failed, scenario: RunCase, head_sha: str) -> float:
    """For scale, not the baseline: the same scoped build once the PR's revert is checked out, green, as a
    person checking a fix by hand would run it (the sandbox build is about this one, deferred to production)."""
    failed.git.run("checkout", "-q", "--detach", head_sha)
    started = time.perf_counter()
    result = production_dbt(failed.root).build(select=f"{node_name(scenario.model)}+")
    seconds = time.perf_counter() - started
    assert result.success and not result.failures, result.failures
    return seconds


def healed_parts(failed: Failed, scenario: RunCase, started: datetime, ended: datetime) -> dict:
    """Check the loop opened a verified PR for the failing node (so a broken loop cannot be timed); its PR's
    head, and its wall time split by the audit trail: before attribution (the CLI, recording, classifying,
    opening), attribution, verification (and its phases: without bubblewrap, `clone` holds the sandbox's cold
    dbt start and the parse that looks for Python models), propose, and what follows the decision."""
    rt = Runtime(load_config(failed.root / "cairn.yml", env={}))
    try:
        incident = next(i for i in rt.store.incidents() if i.contract_id.startswith(run_subject(scenario.node)))
        pr = rt.store.pull_request_for(incident.id)
        trail = rt.store.audit_events(incident.id)
    finally:
        rt.close()
    verification = incident.details.verification
    assert incident.status is IncidentStatus.pr_opened, incident.status
    assert incident.details.verdict is Verdict.verified and verification.fix.reverted == (failed.culprit,)
    assert pr is not None and failed.git.run("rev-parse", f"refs/heads/{pr.branch}").strip() == pr.head_sha
    at = {e.name: e.at for e in trail}
    marks = [started, *(at[name] for name in STAGE_EVENTS), ended]
    spans = [(b - a).total_seconds() for a, b in zip(marks, marks[1:])]
    return {
        "head_sha": pr.head_sha, "verification_builds": verification.builds,
        "isolation": verification.attempts[0].isolation,
        "ingest_to_attribution_s": spans[0], "attribution_s": spans[1], "verification_s": spans[2],
        "propose_s": spans[3], "after_decision_s": spans[4],
        **{f"sandbox_{phase}_s": sum(a.durations.get(phase, 0) for a in verification.attempts)
           for phase in PHASES},
    }


@pytest.mark.parametrize("scenario", [MISSING_COLUMN, NULL_STATUS], ids=lambda s: s.case.name)
def test_failed_run_to_verified_pr(benchmark, scenario: RunCase, scenario_baseline, tmp_path) -> None:
    rounds: list[dict] = []

    def deploy():
        failed = fail(scenario_baseline, scenario.case, tmp_path / f"shop-{len(rounds)}", checked=True)
        load = os.getloadavg()[0]
        baseline_s, status = scoped_build(failed, scenario)
        rounds.append({"failed": failed, "load": load, "baseline_s": baseline_s, "baseline_status": status})
        return (failed,), {}

    def loop(failed: Failed) -> None:
        this = rounds[-1]
        this["started"], began = datetime.now(timezone.utc), time.perf_counter()
        result = ingest(failed.root, failed.target)
        this["loop_s"], this["ended"] = time.perf_counter() - began, datetime.now(timezone.utc)
        assert result.exit_code == 0, result.stderr

    benchmark.pedantic(loop, setup=deploy, rounds=ROUNDS, iterations=1)
    for this in rounds:
        this.update(healed_parts(this["failed"], scenario, this["started"], this["ended"]))
        this["ratio"] = this["loop_s"] / this["baseline_s"]
        this["fixed_build_s"] = fixed_build(this["failed"], scenario, this["head_sha"])

    def median(key: str) -> float:
        return round(statistics.median(r[key] for r in rounds), 2)

    info = {
        "case": scenario.case.name, "kind": scenario.kind, "rounds": len(rounds),
        "select": f"{node_name(scenario.model)}+", "baseline_status": rounds[0]["baseline_status"],
        "load_1min": [round(r["load"], 1) for r in rounds], "isolation": rounds[0]["isolation"],
        "verification_builds": rounds[0]["verification_builds"],
        # Medians over the rounds; each round's ratio is its own loop over its own baseline.
        **{key: median(key) for key in ("loop_s", "baseline_s", "ratio", "ingest_to_attribution_s", "attribution_s",
                                        "verification_s", *(f"sandbox_{phase}_s" for phase in PHASES),
                                        "propose_s", "after_decision_s", "fixed_build_s")},
        "ratios": [round(r["ratio"], 2) for r in rounds],
    }
    benchmark.extra_info.update(info)
    print(f"\nfailed run {scenario.case.name}: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print(f"ingest to verified PR / scoped dbt build = {info['ratio']} (median of {len(rounds)}; target <= 2)")
