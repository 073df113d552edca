"""What the loop costs: sandbox builds per incident against candidates, and its wall time against a dbt build.

Each run copies the scenario baseline (tests/test_scenarios.py: the shop under git, built,
backfilled, checked), lands n real commits touching files upstream of `revenue.net_daily` — n-1
harmless column aliases and, at a seeded random position, a regression (PayPal payments
fall out of order revenue) — loads the next
day, deploys with a plain `dbt build` (timed), then times `check_and_heal` from check to verified PR.
The loop includes the deploy check (one scoped sandbox build of the deploy's previous version,
`jobs.detect.deploy_check`), reported on its own.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import pytest

from examples.generate import add_day
from jobs.config import load_config
from jobs.core.clock import Clock
from jobs.core.records import Verdict
from jobs.detect.observe import Change
from jobs.loop.queue import check_and_heal
from jobs.runtime import Runtime
from tests.test_scenarios import (
    CHECK,
    DAY,
    PAYPAL_FILTER,
    Case,
    Commit,
    Edit,
    build_baseline,
    deploy_copy,
    land,
    production_dbt,
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

    def loop(rt: Runtime) -> list:
        started = time.perf_counter()
        try:
            return check_and_heal(rt)
        finally:
            rt.close()
            deployed["loop_s"] = time.perf_counter() - started

    outcomes = benchmark.pedantic(loop, setup=deploy, rounds=1, iterations=1)
    opened = {o.contract.id: o.incident.id for o in outcomes if o.change is Change.opened}
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
    assert info["deploy_check_builds"] == 1 and details.deploy.to_sha == rt.deployed_sha()
