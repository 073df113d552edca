"""The whole loop on a BigQuery org: `cairn check` to a verified revert PR, through the stages' jobs.

The same PayPal regression the DuckDB demo heals, deployed on a shop whose dbt target is BigQuery
and whose cairn.yml has a `bigquery:` section pointing at the local fake API. The fake answers
production's measure with the regressed revenue and the sandbox's with the recovered one; the
test checks that the stages chose the BigQuery path (sandbox dataset, clones, dry runs, capped
build, re-measure, cleanup), that the verdict, cost and evidence reached the store, the audit
trail, the thread and the PR body, and that a verification over budget escalates instead.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from bot.demo import REGRESSION, commit
from bot.thread import render_terminal, thread_steps
from jobs.config import load_config
from jobs.core.clock import Clock
from jobs.core.records import IncidentStatus, Observation
from jobs.loop.queue import check_and_heal
from jobs.project.git import Git
from jobs.runtime import Runtime
from tests.bigquery_server import FakeBigQuery
from tests.conftest import SHOP, copy_shop
from tests.test_bigquery_verify import PROD_WRITE, REVENUE_COLUMNS

os.environ["DBT_SEND_ANONYMOUS_USAGE_STATS"] = "false"

UTC = timezone.utc
AT = datetime(2026, 11, 23, 6, tzinfo=UTC)  # measures Nov 22
REGRESSED, HEALTHY = 11_738.0, 14_500.0
GIB = 1024**3
CONTRACT = "revenue.net_daily"
PROD_MEASURE = r"`c0_value`.*FROM `acme-prod`\.`analytics`\.`fct_revenue`"
SANDBOX_MEASURE = r"`c0_value`.*FROM `acme-sbx`\.`cairn_sbx_\d+_[0-9a-f]{6}`\.`fct_revenue`"


def _deploy(root: Path, endpoint: str, budget_bytes: int) -> tuple[Runtime, dict[str, str]]:
    """The shop under git with a BigQuery production target and the regression deployed."""
    copy_shop(root)
    (root / ".gitignore").write_text(".cairn/\ntarget/\nlogs/\n*.db\n")
    (root / "profiles.yml").write_text(yaml.safe_dump({"shop": {"target": "prod", "outputs": {"prod": {
        "type": "bigquery", "method": "oauth-secrets", "token": "anonymous", "project": "acme-prod",
        "dataset": "analytics", "location": "EU", "threads": 1}}}}))
    settings = yaml.safe_load((SHOP / "cairn.yml").read_text())
    settings.update(target="prod", store=f"sqlite:///{root / 'cairn.db'}", bigquery={
        "project": "acme-prod", "sandbox_project": "acme-sbx", "location": "EU", "credentials": "anonymous",
        "api_endpoint": endpoint, "org": "acme", "budget_bytes": budget_bytes})
    (root / "cairn.yml").write_text(yaml.safe_dump(settings, sort_keys=False))
    Git(root).run("init", "-q", "-b", "main")
    sha = {"base": commit(root, "Shop analytics project", AT - timedelta(days=60))}
    REGRESSION.apply(root)
    sha["regression"] = commit(root, REGRESSION.message, AT - timedelta(hours=20))
    rt = Runtime(load_config(root / "cairn.yml", env={}), Clock(AT))
    # Four healthy weeks measured at the base SHA: the baseline the check compares against.
    for days_ago in range(28, 0, -1):
        end = AT.replace(hour=0) - timedelta(days=days_ago)
        rt.store.add_observation(Observation(CONTRACT, end + timedelta(hours=6), 14_300.0 + 150 * (days_ago % 3),
                                             end - timedelta(days=1), end, sha["base"]))
    return rt, sha


@pytest.fixture
def fake():
    with FakeBigQuery() as server:
        server.add_dataset("acme-prod", "analytics", location="EU")
        server.add_table("acme-prod", "analytics", "fct_orders")
        server.add_table("acme-prod", "analytics", "fct_revenue", schema=REVENUE_COLUMNS)
        server.build_schema("fct_revenue", REVENUE_COLUMNS)
        server.answer(PROD_MEASURE, [{"c0_value": REGRESSED, "c0_rows": 31}], bytes_processed=2_000_000)
        server.answer(SANDBOX_MEASURE, [{"c0_value": HEALTHY, "c0_rows": 31}], bytes_processed=2_000_000)
        yield server


def _check(rt: Runtime):
    [outcome] = check_and_heal(rt, [rt.contract(CONTRACT)])
    return rt.store.incident(outcome.incident.id)


@pytest.mark.slow
@pytest.mark.dates
def test_a_bigquery_org_gets_a_revert_verified_on_a_sandbox_and_a_pr_with_the_cost(tmp_path, fake) -> None:
    rt, sha = _deploy(tmp_path / "deploy", fake.endpoint, budget_bytes=5 * GIB)
    try:
        incident = _check(rt)
        events = [e.name for e in rt.store.audit_events(incident.id)]
        pr_row = rt.store.pull_request_row(incident.id)
    finally:
        rt.close()

    assert incident.status is IncidentStatus.pr_opened, incident.details
    verification = incident.details.verification
    fix = verification.fix
    assert incident.details.verdict == "verified" and fix.sha == sha["regression"]
    assert (fix.before, fix.after) == (REGRESSED, HEALTHY)
    dataset = fake.requests[[r.call for r in fake.requests].index("datasets.insert")].body["datasetReference"]["datasetId"]
    assert dataset.startswith(f"cairn_sbx_{incident.id}_")
    assert fix.clone_id == f"bigquery:acme-sbx.{dataset}@{incident.last_good_at.isoformat()}"

    # Detection read production (schema, then one capped query billed to the sandbox project) ...
    calls = fake.calls()
    assert calls[:3] == ["tables.get", "jobs.insert", "jobs.getQueryResults"]
    assert fake.requests[0].path == "/projects/acme-prod/datasets/analytics/tables/fct_revenue"
    assert fake.requests[1].path == "/projects/acme-sbx/jobs"
    # ... verification cloned, dry-ran, built and re-measured in the sandbox, then dropped it.
    queries = fake.queries(dry_run=False)
    assert any(q.startswith(f"CREATE TABLE `acme-sbx.{dataset}.fct_orders` CLONE `acme-prod.analytics.fct_orders` "
                            "FOR SYSTEM_TIME AS OF TIMESTAMP") for q in queries)
    assert [r.call for r in fake.requests if r.dry_run] == ["jobs.insert"] * 3
    assert calls[-1] == "datasets.delete" and not [d for d in fake.datasets if d[0] == "acme-sbx"]
    assert not [q for q in fake.queries() if PROD_WRITE.search(q)]

    # The cost is on the record, in the audit trail and in the PR's evidence.
    assert fix.estimated_bytes == 3 * fake.default_bytes
    assert fix.billed_bytes > 0 and [a.billed_bytes for a in verification.attempts] == [fix.billed_bytes]
    assert events.count("verification.cost") == 1 and "verification.finished" in events
    body = pr_row["body"]
    assert f"`bigquery:acme-sbx.{dataset}@" in body
    assert "| Warehouse cost |" in body and "billed (dry-run estimate 2.9 MiB)" in body
    assert "--target cairn_sandbox" in body and "cairn_sbx" not in body.split("### Verification")[0]


@pytest.mark.slow
@pytest.mark.dates
def test_a_verification_over_budget_escalates_with_the_estimate(tmp_path, fake) -> None:
    rt, _ = _deploy(tmp_path / "deploy", fake.endpoint, budget_bytes=5 * GIB)
    fake.default_bytes = 3 * GIB  # three models' dry runs: 9 GiB against 5 GiB
    try:
        incident = _check(rt)
        events = {e.name: e for e in rt.store.audit_events(incident.id)}
        pr = rt.store.pull_request_for(incident.id)
    finally:
        rt.close()

    assert incident.status is IncidentStatus.escalated and pr is None
    assert incident.details.verdict == "refused"
    refused = incident.details.verification.refused
    assert refused["estimated_bytes"] == 9 * GIB and refused["budget_bytes"] == 5 * GIB
    assert "estimates 9.0 GiB (9663676416 bytes), over the budget of 5.0 GiB" in refused["reason"]
    assert events["verification.refused"].data["estimated_bytes"] == 9 * GIB
    # Nothing was built, and the sandbox is gone.
    assert not [q for q in fake.queries(dry_run=False) if '"node_id"' in q]
    assert fake.calls()[-1] == "datasets.delete"
    story = render_terminal(thread_steps(incident, None))
    assert "Verification refused" in story and "Estimated 9,663,676,416 bytes against a budget of 5,368,709,120" in story
