"""What the loop costs: sandbox builds per incident against candidates, and its wall time against a dbt build.

Each run copies the scenario baseline (tests/test_scenarios.py: the shop under git, built,
backfilled, checked), lands n real commits touching files upstream of `revenue.net_daily` — n-1
harmless column aliases and, at a seeded random position, a regression (PayPal payments
fall out of order revenue) — loads the next
day, deploys with a plain `dbt build` (timed), then times `check_and_heal` from check to verified PR.
The loop includes the deploy check (one scoped sandbox build of the deploy's previous version,
`jobs.detect.deploy_check`), reported on its own.

`test_loop_on_a_large_project` does the same on the generated 1,000-model project of
`bench/big_project.py` (a `local:` dbt package, 9 contracts, noisy data): decoys and one culprit land,
the deploy runs `dbt deps` and one full `dbt build` (timed), then the check at a pinned clock must open
one incident, attribute it to the culprit, verify its revert on a DuckDB sandbox and open the local PR.
The ratio loop / full build is reported (target: at most 0.5), never asserted.
"""

from __future__ import annotations

import math
import os
import random
import time
from datetime import timedelta
from pathlib import Path

import pytest

from bench import big_project, big_project_data
from bot.demo import commit as git_commit
from examples.generate import add_day
from jobs.config import load_config
from jobs.core.clock import Clock
from jobs.core.records import Verdict
from jobs.detect.observe import Change
from jobs.loop.queue import check_and_heal
from jobs.project.git import Git
from jobs.runtime import Runtime
from jobs.verify.scope import kept_files
from tests.deployment import at
from tests.test_scenarios import (
    CHECK,
    DAY,
    DAYS,
    PAYPAL_FILTER,
    START,
    Case,
    Commit,
    Edit,
    build_baseline,
    deploy_copy,
    land,
    production_dbt,
    settle,
)

CONTRACT = "revenue.net_daily"
SEED = 20261006
# Select-list lines upstream of fct_revenue after which a no-op alias column can go; never near the
# regression's lines, so reverting it alone stays clean whatever lands after it.
ANCHORS = (
    ("models/staging/stg_orders.sql", "        order_id,\n", "order_id"),
    ("models/staging/stg_payments.sql", "        payment_id,\n", "payment_id"),
    ("models/staging/stg_order_items.sql", "        order_item_id,\n", "order_item_id"),
    ("models/staging/stg_refunds.sql", "        refund_id,\n", "refund_id"),
    ("models/staging/stg_invoices.sql", "        invoice_id,\n", "invoice_id"),
    ("models/intermediate/int_order_payments.sql", "        sum(amount) as paid_amount,\n", "sum(amount)"),
    ("models/marts/fct_payments.sql", "        payments.payment_id,\n", "payments.payment_id"),
    ("models/marts/fct_revenue.sql", "        days.date_day as revenue_date,\n", "days.date_day"),
)


def commits(n: int) -> tuple[tuple[Commit, ...], int]:
    """n-1 harmless alias commits and the regression at a seeded position; returns (commits, its index)."""
    decoys = []
    for k in range(n - 1):
        path, anchor, column = ANCHORS[k % len(ANCHORS)]
        alias = f"        {column} as noop_{k},\n"
        decoys.append(Commit(f"Expose {column} as noop_{k}", (Edit(path, anchor, anchor + alias),)))
    position = random.Random(SEED + n).randrange(n)
    return tuple(decoys[:position] + [PAYPAL_FILTER] + decoys[position:]), position


def cpu_s() -> float:
    """CPU seconds of this process and its finished children (git): less moved than wall time by other
    work sharing the cores."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def timed_loop(benchmark, deploy, deployed: dict) -> dict[str, int]:
    """One round: `deploy` (untimed) returns the Runtime, `check_and_heal` is timed into
    deployed["loop_s"]; the incidents it opened, by contract."""

    def loop(rt: Runtime) -> list:
        started, cpu = time.perf_counter(), cpu_s()
        try:
            return check_and_heal(rt)
        finally:
            rt.close()
            deployed["loop_s"], deployed["loop_cpu_s"] = time.perf_counter() - started, cpu_s() - cpu

    outcomes = benchmark.pedantic(loop, setup=deploy, rounds=1, iterations=1)
    return {o.contract.id: o.incident.id for o in outcomes if o.change is Change.opened}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_baseline(tmp_path_factory.mktemp("bench-loop-baseline") / "shop")


@pytest.mark.parametrize("n", [8, 32])
def test_builds_and_wall_time_per_incident(benchmark, baseline: Path, tmp_path: Path, n: int) -> None:
    case_commits, position = commits(n)
    case = Case(f"bench-{n}", case_commits, {CONTRACT: "verified"})
    root = tmp_path / "shop"
    deployed: dict = {}

    def deploy():
        deploy_copy(baseline, root)
        deployed["shas"] = land(root, case)
        add_day(root / "warehouse.duckdb", DAY)
        started = time.perf_counter()
        result = production_dbt(root).build()  # one plain dbt build of the same project
        deployed["build_s"] = time.perf_counter() - started
        assert result.success and not result.failures, result.failures
        return (Runtime(load_config(root / "cairn.yml", env={}), Clock(CHECK)),), {}

    opened = timed_loop(benchmark, deploy, deployed)
    assert list(opened) == [CONTRACT], opened
    rt = Runtime(load_config(root / "cairn.yml", env={}))
    try:
        incident = rt.store.incident(opened[CONTRACT])
        pr = rt.store.pull_request_for(incident.id)
        deploy_checks = [e.data for e in rt.store.audit_events() if e.name == "deploy.checked"]
    finally:
        rt.close()
    culprit = deployed["shas"][PAYPAL_FILTER.message]
    details = incident.details
    verification, attribution = details.verification, details.attribution
    loop_s = deployed["loop_s"]  # also the benchmark's one round; kept here for --benchmark-disable
    info = {
        "candidates": len(attribution.candidates),
        "commits": n,
        "culprit_position": position,
        "culprit_rank": [c.sha for c in attribution.ranking.causes].index(culprit) + 1,
        "builds": verification.builds,
        "build_budget": math.ceil(math.log2(n)) + 3,
        "loop_s": round(loop_s, 2),
        "dbt_build_s": round(deployed["build_s"], 2),
        "loop_over_build": round(loop_s / deployed["build_s"], 2),
        # The deploy check: its builds (one per deploy) and their seconds, part of loop_s.
        "deploy_check_builds": len(deploy_checks),
        "deploy_check_s": round(sum(sum(d["durations"].values()) for d in deploy_checks), 2),
        # Seconds per verification phase, summed over the sandbox builds.
        "phases_s": {phase: round(sum(a.durations.get(phase, 0) for a in verification.attempts), 2)
                     for phase in ("worktree", "revert", "clone", "build", "measure", "evidence")},
    }
    benchmark.extra_info.update(info)
    print(f"\nloop n={n}: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    by_sha = {c.sha: c for c in attribution.candidates}
    for cause in attribution.ranking.causes[:info["culprit_rank"]]:
        print(f"  {cause.confidence:.3f} {by_sha[cause.sha].message[:40]:40} {cause.rationale}")
    assert info["candidates"] == n
    assert info["builds"] <= info["build_budget"], info
    assert details.verdict is Verdict.verified and verification.fix.reverted == (culprit,)
    assert pr is not None
    assert info["deploy_check_builds"] == 1 and incident.details.deploy.to_sha == rt.deployed_sha()


# ---------------------------------------------------------------- a 1,000-model project

LARGE_DECOYS = 12


def build_large_baseline(root: Path) -> Path:
    """The generated project under git (a short history, package-lock.yml committed as `dbt deps` wrote
    it), 35 days loaded, built, 28 days backfilled and a quiet morning check."""
    big_project.write(root)
    company = root / "models" / "company"
    held = {p: p.read_text() for p in company.iterdir()}
    for path in held:
        path.unlink()
    Git(root).run("init", "-q", "-b", "main")
    production_dbt(root).deps()
    git_commit(root, "Analytics project: 25 domains", at(START - timedelta(days=30), 9))
    for path, text in held.items():
        path.write_text(text)
    git_commit(root, "Company marts over every domain", at(START - timedelta(days=20), 9))
    big_project_data.load(root / "warehouse.duckdb", START, DAYS)
    settle(root)
    assert (root / "dbt_packages" / "biz_utils").is_symlink()  # installed by dbt deps, git-ignored
    return root


def deploy_large(baseline: Path, root: Path) -> dict:
    """Copy the baseline, parse it as the last hourly check did, land the decoys and the culprit (at a seeded
    position), load the day, run `dbt deps`, then one full `dbt build` (timed). What was deployed."""
    edits = big_project.decoys(LARGE_DECOYS)
    edits.insert(random.Random(SEED).randrange(len(edits) + 1), big_project.culprit())
    deploy_copy(baseline, root)
    # The hourly check before the deploy, at this path: Cairn keeps its parse state in .cairn/target between
    # checks, so the timed check parses what the deploy changed. The deploy's own build parses cold, as a
    # fresh CI checkout does.
    before = Runtime(load_config(root / "cairn.yml", env={}))
    try:
        before.manifest  # noqa: B018
    finally:
        before.close()
    shas = {}
    for i, (message, path, old, new) in enumerate(edits):
        target = root / path
        assert old in target.read_text(), (path, old)
        target.write_text(target.read_text().replace(old, new, 1))
        shas[message] = git_commit(root, message, at(DAY, 9) + timedelta(minutes=10 * i))
    big_project_data.add_day(root / "warehouse.duckdb", DAY)
    production_dbt(root).deps()  # the deploy installs its packages, then builds
    started, cpu = time.perf_counter(), cpu_s()
    result = production_dbt(root).build()  # one full dbt build of the whole project
    build_s, build_cpu_s = time.perf_counter() - started, cpu_s() - cpu
    assert result.success and not result.failures, result.failures
    return {"shas": shas, "commits": len(edits), "build_s": build_s, "build_cpu_s": build_cpu_s,
            "nodes": len(result.nodes), "culprit": shas[big_project.culprit()[0]]}


@pytest.fixture(scope="module")
def large_baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_large_baseline(tmp_path_factory.mktemp("bench-loop-large") / "analytics")


def test_loop_on_a_large_project(benchmark, large_baseline: Path, tmp_path: Path) -> None:
    root = tmp_path / "analytics"
    deployed: dict = {}

    def deploy():
        deployed.update(deploy_large(large_baseline, root))
        return (Runtime(load_config(root / "cairn.yml", env={}), Clock(CHECK)),), {}

    opened = timed_loop(benchmark, deploy, deployed)
    assert list(opened) == [big_project.CONTRACT_ID], opened
    rt = Runtime(load_config(root / "cairn.yml", env={}))
    try:
        incident = rt.store.incident(opened[big_project.CONTRACT_ID])
        pr = rt.store.pull_request_for(incident.id)
        deploy_checks = [e.data for e in rt.store.audit_events() if e.name == "deploy.checked"]
        nodes = rt.manifest["nodes"]
        models = sum(n["resource_type"] == "model" for n in nodes.values())
        culprit_models = next(c.models for c in incident.details.attribution.candidates
                              if c.sha == deployed["culprit"])
        # What the culprit's sandbox build parses (jobs.verify.scope): it grows with the incident, not the project.
        kept = kept_files(rt.manifest, [*culprit_models, f"model.analytics.{big_project.CONTRACT_MODEL}"])
        parsed = sum(n["resource_type"] == "model" and n["original_file_path"] in kept for n in nodes.values())
    finally:
        rt.close()
    culprit_sha = deployed["culprit"]
    verification, attribution = incident.details.verification, incident.details.attribution
    ranking = [c.sha for c in attribution.ranking.causes]
    info = {
        "models": models,
        "models_parsed_per_build": parsed,
        "build_nodes": deployed["nodes"],
        "commits": deployed["commits"],
        "candidates": len(attribution.candidates),
        "culprit_rank": ranking.index(culprit_sha) + 1,
        "builds": verification.builds,
        "loop_s": round(deployed["loop_s"], 2),
        "dbt_build_s": round(deployed["build_s"], 2),
        "loop_over_build": round(deployed["loop_s"] / deployed["build_s"], 2),
        # The same in CPU seconds: the wall-time ratio moves when other work shares the cores.
        "loop_cpu_s": round(deployed["loop_cpu_s"], 2),
        "dbt_build_cpu_s": round(deployed["build_cpu_s"], 2),
        "loop_over_build_cpu": round(deployed["loop_cpu_s"] / deployed["build_cpu_s"], 2),
        "deploy_check_s": round(sum(sum(d["durations"].values()) for d in deploy_checks), 2),
        "phases_s": {phase: round(sum(a.durations.get(phase, 0) for a in verification.attempts), 2)
                     for phase in ("worktree", "revert", "packages", "scope", "clone", "build", "measure", "evidence")},
    }
    benchmark.extra_info.update(info)
    print(f"\nloop on {models} models: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print(f"loop / full dbt build = {info['loop_over_build']} wall, {info['loop_over_build_cpu']} CPU (target <= 0.5)")
    assert models >= 1000
    assert incident.details.verdict is Verdict.verified and verification.fix.reverted == (culprit_sha,)
    assert pr is not None
    assert len(deploy_checks) == 1
    by_sha = {c.sha: c for c in attribution.candidates}
    for cause in attribution.ranking.causes[:info["culprit_rank"]]:
        print(f"  {cause.confidence:.3f} {by_sha[cause.sha].message[:40]:40} {cause.rationale}")
