"""Attribution scenarios: real git histories and real dbt builds on copies of one built shop.

One session baseline (the shop under git, 35 days of data, built, 28 days backfilled, the morning
check run) is copied per case; the case lands its commits, the next day's data arrives, dbt rebuilds
and `check_and_heal` runs the whole loop the morning after. Each case is one table entry: its
commits (one or more marked as the culprit of the contracts it breaks) among decoys that must never
be blamed, and what the loop must conclude. The last test reports top-1/top-3 attribution accuracy
and the verified-recovery rate over the positive cases (tests/.scenario-report.json).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.demo import commit
from bot.notify import render_card
from examples.generate import add_day, drop_source_rows, load
from jobs.attribute import groups
from jobs.config import load_config
from jobs.core.clock import Clock
from jobs.core.records import IncidentDetails, VerificationDetail
from jobs.detect.backfill import backfill
from jobs.detect.check import check
from jobs.detect.observe import Change
from jobs.loop.queue import check_and_heal
from jobs.project.dbt import Dbt, InvocationResult
from jobs.project.git import Git
from jobs.runtime import Runtime
from tests.conftest import copy_shop
from tests.deployment import GITIGNORE, at

pytestmark = pytest.mark.slow

START, DAYS = date(2026, 9, 1), 35  # data for 09-01 … 10-05
DAY = START + timedelta(days=DAYS)  # 10-06, a Tuesday: the case's commits land, its data arrives
MORNING = at(DAY)  # backfill and the last clean check (window 10-05)
CHECK = at(DAY + timedelta(days=1))  # the case's check: window 10-06, the first with the new code
REPORT = Path(__file__).resolve().parent / ".scenario-report.json"
TOP3_FLOOR, RECOVERY_FLOOR = 1.0, 0.8

# Two contracts beside the shipped ones, for changes no shipped contract sees: the share of orders
# counted as completed, and coupon value redeemed.
EXTRA_CONTRACTS = """
  - id: orders.completed_daily
    kind: row_count
    model: fct_orders
    where: "order_status = 'completed'"
    time_column: ordered_at
    window: day
    direction: drop
    baseline: {days: 28, min_points: 14, seasonality: weekly}
    severity: medium
    owner: "@commerce-data"

  - id: revenue.coupons_daily
    kind: volume
    model: fct_revenue
    expr: sum(coupon_amount)
    time_column: revenue_date
    window: day
    direction: drop
    baseline: {days: 28, min_points: 14, seasonality: weekly}
    severity: medium
    owner: "@finance-data"
"""


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Edit:
    path: str
    old: str
    new: str


@dataclass(frozen=True)
class Commit:
    message: str
    edits: tuple[Edit, ...]
    breaks: tuple[str, ...] = ()  # contracts this commit is the culprit for


@dataclass(frozen=True)
class Case:
    name: str
    commits: tuple[Commit, ...]
    expect: dict[str, str] = field(default_factory=dict)  # contract -> verdict of its incident
    build_ok: bool = True  # whether the deploy's own dbt build passes
    drop_payments: bool = False  # half of the day's raw payments never arrive
    prs: int | None = None  # PRs the loop opens; one culprit's incidents share one (jobs.attribute.groups)
    then: Callable[["Case", "Run", Path], None] | None = None  # further checks on the run

    @property
    def positive(self) -> bool:
        return any(c.breaks for c in self.commits)


def change(message: str, path: str, old: str, new: str, breaks: tuple[str, ...] = ()) -> Commit:
    return Commit(message, (Edit(path, old, new),), breaks)


# Decoys: in every window, never to be blamed (docs-only ones are listed, never reverted).
COMMENT = change("Explain where order statuses come from", "models/staging/stg_orders.sql",
                 "with source as (", "-- Statuses arrive free-form from the shop app.\nwith source as (")
WHITESPACE = change("Reflow the orders CTE of fct_payments", "models/marts/fct_payments.sql",
                    "    select order_id, customer_id from {{ ref('stg_orders') }}",
                    "    select order_id, customer_id\n    from   {{ ref('stg_orders') }}")
DOCS = change("Say which day revenue_date is", "models/marts/_marts.yml",
              "Primary key; the day.", "Primary key; the calendar day (UTC).")
UNRELATED = change("Trim country codes", "models/staging/stg_customers.sql",
                   "upper(country_code) as country_code", "upper(trim(country_code)) as country_code")
DOWNSTREAM = change("Flag repeat customers", "models/marts/dim_customers.sql",
                    "        coalesce(orders.order_count, 0) as order_count,\n",
                    "        coalesce(orders.order_count, 0) as order_count,\n"
                    "        coalesce(orders.order_count, 0) > 1 as is_repeat_customer,\n")


# Checks a case runs after the common ones (Case.then).


def one_group(case: "Case", run: "Run", root: Path) -> None:
    """One culprit's incidents are one group: its builds ran once, for the leader; every card shows the one PR."""
    found = list(run.found.values())
    leader = min(f.incident for f in found)
    assert {f.group for f in found} == {leader}  # nobody left the group
    assert {f.pr for f in found} == {found[0].pr} and found[0].pr is not None and run.prs == 1
    # The verification builds ran once, for the group, under its leader; every member reads the same count.
    assert list(run.attempts) == [leader] and run.attempts[leader] == found[0].builds >= 1
    assert {f.builds for f in found} == {run.attempts[leader]}
    assert {tuple(f.fixed_by) for f in found} == {(run.shas[next(c.message for c in case.commits if c.breaks)],)}
    pr_body_incidents = [f"| #{f.incident} | `{f.contract}` |" for f in found]
    rt = Runtime(load_config(root / "cairn.yml", env={}), Clock(CHECK))
    try:
        body = rt.store.pull_request_row(leader)["body"]
        cards = [render_card(rt, rt.store.incident(f.incident), groups.pull_request(rt.store, rt.store.incident(
            f.incident))) for f in found]
    finally:
        rt.close()
    assert all(row in body for row in pr_body_incidents), body
    # Every member's card links the group's PR (the local forge shows its branch).
    assert all(f"cairn/incident-{leader}" in json.dumps([b.to_dict() for b in card.blocks]) for card in cards)


def split_group(case: "Case", run: "Run", root: Path) -> None:
    """No one revert brings all three back: the join's revert keeps orders and completed orders together,
    revenue goes on with the PayPal filter's, both verified on the group's builds, none built again."""
    revenue, orders, completed = run.found[REVENUE], run.found[ORDERS], run.found[COMPLETED]
    leader = min(f.incident for f in run.found.values())
    assert revenue.group is None and revenue.left_group["why"] == "split"
    assert revenue.left_group["fix"] == run.shas[PAYPAL_FILTER.message]
    assert orders.group == completed.group == min(orders.incident, completed.incident)
    assert orders.pr == completed.pr != revenue.pr and run.prs == 2
    assert revenue.fixed_by == [run.shas[PAYPAL_FILTER.message]]
    assert orders.fixed_by == completed.fixed_by == [run.shas[INNER_JOIN.message]]
    assert list(run.attempts) == [leader] and {f.builds for f in run.found.values()} == {run.attempts[leader]}


def data_change(case: "Case", run: "Run", root: Path) -> None:
    """No code to blame: each incident's triage is a data change that names the source that moved."""
    rt = Runtime(load_config(root / "cairn.yml", env={}), Clock(CHECK))
    try:
        triaged = {f.contract: rt.store.incident(f.incident).details.triage for f in run.found.values()}
    finally:
        rt.close()
    for contract, found in triaged.items():
        assert found.kind == "data_change", (contract, found)
        assert any(line.startswith("raw.payments loaded ") and "below the" in line for line in found.evidence), found
        assert [f["source"] for f in found.upstream if f["source"] == "raw.payments"] == ["raw.payments"]


def window(*culprits: Commit) -> tuple[Commit, ...]:
    """Two decoys, the culprit(s), then the other three decoys."""
    return (COMMENT, WHITESPACE, *culprits, DOCS, UNRELATED, DOWNSTREAM)


REVENUE, PAYMENTS, ORDERS, MRR = "revenue.net_daily", "payments.daily_amount", "orders.daily_count", "mrr.level"
FRESHNESS, UNPAID = "orders.freshness", "orders.unpaid_completed_rate"
COMPLETED, COUPONS = "orders.completed_daily", "revenue.coupons_daily"
V, NO_CAUSE = "verified", "no_code_cause"

PAYPAL_FILTER = change(
    "Leave PayPal out of order payments until it settles", "models/intermediate/int_order_payments.sql",
    "      and payment_status = 'succeeded'\n",
    "      and payment_status = 'succeeded'\n      and payment_method != 'paypal'\n", (REVENUE,))
INNER_JOIN = change("Only keep orders that have payments", "models/marts/fct_orders.sql",
                    "    left join payments using (order_id)", "    inner join payments using (order_id)", (ORDERS,))

CASES = (
    Case("unit_conversion", window(change(
        "Plan prices: convert mills to dollars", "models/staging/stg_plans.sql",
        "{{ cents_to_dollars('monthly_price_cents') }} as monthly_price",
        "cast(monthly_price_cents / 1000 as decimal(18, 2)) as monthly_price", (MRR,))), {MRR: V}),
    Case("filter_change", window(PAYPAL_FILTER), {REVENUE: V}),
    Case("join_type_change", window(INNER_JOIN), {ORDERS: V}),
    Case("dedup_removed", window(change(
        "Drop the payments dedup: the loader is idempotent now", "models/staging/stg_payments.sql",
        "    select *\n    from source\n    qualify row_number() over (partition by payment_id order by _loaded_at desc) = 1\n",
        "    select *\n    from source\n", (REVENUE, PAYMENTS, ORDERS, FRESHNESS, COMPLETED, COUPONS))),
        # unique_stg_payments_payment_id fails, dbt skips every mart downstream: the day goes missing.
        {REVENUE: V, PAYMENTS: V, ORDERS: V, FRESHNESS: V, COMPLETED: V, COUPONS: V}, build_ok=False, prs=1,
        then=one_group),
    Case("case_mapping_change", window(change(
        "Shipped orders are not complete until delivered", "models/staging/stg_orders.sql",
        "            when 'shipped' then 'completed'\n", "            when 'shipped' then 'pending'\n",
        (COMPLETED,))), {COMPLETED: V}),
    Case("macro_change", window(change(
        "cents_to_dollars: amounts arrive in mills", "macros/cents_to_dollars.sql",
        "cast({{ column }} / 100 as", "cast({{ column }} / 1000 as", (REVENUE, PAYMENTS, MRR, COUPONS))),
        {REVENUE: V, PAYMENTS: V, MRR: V, COUPONS: V}, prs=1, then=one_group),
    Case("jinja_list_change", window(change(
        "Pivot payment methods as the processor spells them", "models/intermediate/int_order_payments.sql",
        "{% set payment_methods = ['card', 'coupon', 'bank_transfer', 'paypal'] %}",
        "{% set payment_methods = ['Card', 'Coupon', 'Bank_Transfer', 'PayPal'] %}", (COUPONS,))), {COUPONS: V}),
    Case("column_swap", window(change(
        "Tidy the active-days aggregate of fct_mrr", "models/marts/fct_mrr.sql",
        "        count(periods.subscription_id) as active_subscriptions,\n"
        "        coalesce(sum(periods.monthly_amount), 0) as mrr\n",
        "        count(periods.subscription_id) as mrr,\n"
        "        coalesce(sum(periods.monthly_amount), 0) as active_subscriptions\n", (MRR,))), {MRR: V}),
    Case("primary_method_filter", window(change(
        "Primary payment method: count coupons too", "models/intermediate/int_order_payments.sql",
        "filter (where payment_method != 'coupon')", "filter (where payment_method = 'coupon')", (UNPAID,))),
        {UNPAID: V}),
    # Together they also drop PayPal-paid completed orders from fct_orders: the join is what reverts that.
    # One deploy, so one group at first; no one revert brings all three back, so it splits in two.
    Case("two_regressions", window(PAYPAL_FILTER, Commit(INNER_JOIN.message, INNER_JOIN.edits, (ORDERS, COMPLETED))),
         {REVENUE: V, ORDERS: V, COMPLETED: V}, prs=2, then=split_group),
    Case("culprit_then_innocent_same_file", window(PAYPAL_FILTER, change(
        "Keep the last payment time per order", "models/intermediate/int_order_payments.sql",
        "        min(created_at) as paid_at,\n",
        "        min(created_at) as paid_at,\n        max(created_at) as last_paid_at,\n")), {REVENUE: V}),
    Case("quiet_window", window()),
    # Coupons redeemed (a sum over ~45 orders a day, swinging far more than 7%) stay inside their band.
    Case("source_rows_dropped", window(), {REVENUE: NO_CAUSE, PAYMENTS: NO_CAUSE},
         drop_payments=True, then=data_change),
)


# ---------------------------------------------------------------- the baseline


def production_dbt(root: Path) -> Dbt:
    """The deploy's own dbt: the project at `root`, building the warehouse file beside it."""
    return Dbt(root, root, env={"CAIRN_DUCKDB_PATH": str(root / "warehouse.duckdb")}, target_path=root / "target")


def deploy_build(root: Path) -> InvocationResult:
    """What a deploy runs: `dbt deps` when the project declares packages (dbt_packages/ is git-ignored),
    then `dbt build`."""
    dbt = production_dbt(root)
    if (root / "packages.yml").is_file():
        dbt.deps()
    return dbt.build()


def build_baseline(root: Path, prepare: Callable[[Path], None] | None = None) -> Path:
    """The shop under git with EXTRA_CONTRACTS (and what `prepare` changes in it before the first
    commit), built, backfilled and checked on the morning of DAY."""
    copy_shop(root)
    (root / ".gitignore").write_text(GITIGNORE)
    cairn_yml = root / "cairn.yml"
    cairn_yml.write_text(cairn_yml.read_text().replace("\ncontracts:\n", "\ncontracts:\n" + EXTRA_CONTRACTS, 1))
    if prepare is not None:
        prepare(root)
    Git(root).run("init", "-q", "-b", "main")
    commit(root, "Shop analytics project", at(START, 9))
    load(root / "warehouse.duckdb", START, DAYS)
    return settle(root)


def settle(root: Path) -> Path:
    """The deployment at `root` built (`dbt deps` first if it declares packages), 28 days backfilled and
    the morning check run, which must open nothing."""
    result = deploy_build(root)
    assert result.success and not result.failures, result.failures
    rt = Runtime(load_config(root / "cairn.yml", env={}), Clock(MORNING))
    try:
        backfill(rt, MORNING, 28)
        outcomes = check(rt)
        assert not [o.contract.id for o in outcomes if o.change is Change.opened], "the baseline must be quiet"
    finally:
        rt.close()
    return root


def deploy_copy(baseline: Path, root: Path) -> Path:
    """The whole deployment — project, warehouse, .cairn store, .git — copied; no parse state kept,
    so every manifest is parsed from the copy."""
    shutil.copytree(baseline, root, symlinks=True, ignore=shutil.ignore_patterns("partial_parse.msgpack"))
    return root


# ---------------------------------------------------------------- one run


@dataclass
class Found:
    """What one contract's incident concluded, and how the culprit fared."""

    contract: str
    verdict: str | None
    culprit: str | None
    attribution_top: str | None
    attribution_top3: list[str]
    final_top: str | None
    verification: str | None
    builds: int
    fixed_by: list[str] | None
    pr: int | None
    pr_message: str = ""
    incident: int = 0
    group: int | None = None  # the group it ended in
    left_group: dict[str, Any] | None = None


@dataclass
class Run:
    shas: dict[str, str]  # commit message -> SHA
    build: InvocationResult
    found: dict[str, Found]
    seconds: float
    attempts: dict[int, int] = field(default_factory=dict)  # verification.attempt events (builds) by incident
    prs: int = 0  # pull requests recorded


def land(root: Path, case: Case) -> dict[str, str]:
    """Commit the case's commits in order, ten minutes apart; their SHAs by message."""
    assert len({c.message for c in case.commits}) == len(case.commits), f"{case.name}: messages must differ"
    shas = {}
    for i, c in enumerate(case.commits):
        for e in c.edits:
            target = root / e.path
            text = target.read_text()
            assert e.old in text, f"{case.name}: {e.path} no longer holds {e.old!r}"
            target.write_text(text.replace(e.old, e.new, 1))
        shas[c.message] = commit(root, c.message, at(DAY, 9) + timedelta(minutes=10 * i))
    return shas


def run_case(baseline: Path, case: Case, root: Path) -> Run:
    started = time.monotonic()
    deploy_copy(baseline, root)
    shas = land(root, case)
    add_day(root / "warehouse.duckdb", DAY)
    if case.drop_payments:
        assert drop_source_rows(root / "warehouse.duckdb", DAY, "payments", 0.5) > 0
    build = deploy_build(root)
    culprit_of = {contract: shas[c.message] for c in case.commits for contract in c.breaks}
    rt = Runtime(load_config(root / "cairn.yml", env={}), Clock(CHECK))
    try:
        outcomes = check_and_heal(rt)
        assert_parsed_from_copy(rt.manifest, case)
        found = {}
        for o in outcomes:
            if o.change is not Change.opened:
                continue
            incident = rt.store.incident(o.incident.id)
            pr = groups.pull_request(rt.store, incident)  # a grouped incident's PR is its group's
            found[o.contract.id] = dataclasses.replace(
                summarize(incident.details, o.contract.id, culprit_of.get(o.contract.id), pr, rt.git),
                incident=incident.id, group=incident.group_id, left_group=incident.details.to_json().get("left_group"))
        events = rt.store.audit_events()
        attempts = Counter(e.incident_id for e in events if e.name == "verification.attempt")
        prs = len({groups.pull_request(rt.store, rt.store.incident(f.incident)) for f in found.values()} - {None})
    finally:
        rt.close()
    return Run(shas, build, found, time.monotonic() - started, dict(attempts), prs)


def assert_parsed_from_copy(manifest: dict[str, Any], case: Case) -> None:
    """Cairn's manifest holds the case's edits: it was parsed from the copy, not the baseline."""
    code = {n["original_file_path"]: n.get("raw_code") or n.get("macro_sql") or ""
            for n in [*manifest["nodes"].values(), *manifest["macros"].values()]}
    for e in (e for c in case.commits for e in c.edits if e.path.endswith(".sql")):
        assert e.new in code[e.path], f"{case.name}: the manifest does not hold the edit to {e.path}"


def summarize(details: IncidentDetails, contract: str, culprit: str | None, pr, git: Git) -> Found:
    attribution = [c.sha for c in details.attribution.ranking.causes] if details.attribution else []
    final = ([c.sha for c in details.ranking.causes] if details.ranking else []) or attribution
    verification = details.verification or VerificationDetail()
    fix = verification.fix
    tried = fix or (verification.attempts[-1] if verification.attempts else None)
    return Found(
        contract=contract, verdict=details.verdict.value if details.verdict else None, culprit=culprit,
        attribution_top=attribution[0] if attribution else None, attribution_top3=attribution[:3],
        final_top=final[0] if final else None,
        verification=tried.verdict.value if tried else None,
        builds=verification.builds, fixed_by=list(fix.reverted) if fix else None,
        pr=pr.number if pr else None,
        pr_message=git.run("log", "-1", "--format=%B", pr.head_sha) if pr else "")


# ---------------------------------------------------------------- the tests

RESULTS: dict[str, dict[str, Any]] = {}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_scenario(case: Case, scenario_baseline: Path, tmp_path: Path) -> None:
    run = run_case(scenario_baseline, case, tmp_path / "shop")
    RESULTS[case.name] = {"seconds": round(run.seconds, 1), "positive": case.positive,
                          "incidents": {k: vars(v) for k, v in run.found.items()}}
    assert run.build.success is case.build_ok, [f"{n.unique_id}: {n.status}" for n in run.build.failures]
    assert sorted(run.found) == sorted(case.expect), {k: v.verdict for k, v in run.found.items()}
    for contract, verdict in case.expect.items():
        got = run.found[contract]
        assert got.verdict == verdict, (contract, got)
        if verdict != V:
            assert got.pr is None and got.fixed_by is None, (contract, got)
            continue
        assert got.culprit in got.attribution_top3, (contract, got)
        assert got.final_top == got.culprit and got.fixed_by == [got.culprit], (contract, got)
        assert got.verification == V and got.pr is not None, (contract, got)
        assert got.culprit in got.pr_message, (contract, got.pr_message)
    decoys = {run.shas[c.message] for c in case.commits if not c.breaks}
    assert not decoys & {f.fixed_by[0] for f in run.found.values() if f.fixed_by}
    if case.prs is not None:
        assert run.prs == case.prs, {k: (v.pr, v.group) for k, v in run.found.items()}
        assert len({f.pr for f in run.found.values()}) == case.prs
    if case.then is not None:
        case.then(case, run, tmp_path / "shop")


def test_attribution_accuracy_report() -> None:
    """Top-1 and top-3 attribution (before verification) and verified recovery, over positive incidents."""
    positives = [i for r in RESULTS.values() if r["positive"] for i in r["incidents"].values() if i["culprit"]]
    if not positives:
        pytest.skip("no positive scenario ran in this session")
    n = len(positives)
    summary = {
        "incidents": n,
        "top1": sum(i["attribution_top"] == i["culprit"] for i in positives) / n,
        "top3": sum(i["culprit"] in i["attribution_top3"] for i in positives) / n,
        "verified_recovery": sum(i["verdict"] == V and i["fixed_by"] == [i["culprit"]] for i in positives) / n,
        "cases": RESULTS,
    }
    REPORT.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    print(f"\nscenarios: {n} positive incidents, top-1 {summary['top1']:.0%}, top-3 {summary['top3']:.0%}, "
          f"verified recovery {summary['verified_recovery']:.0%} ({REPORT.name})")
    assert summary["top3"] >= TOP3_FLOOR, summary
    assert summary["verified_recovery"] >= RECOVERY_FLOOR, summary
