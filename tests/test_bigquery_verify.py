"""The revert scenario of tests/test_verify.py on the BigQuery path: real dbt-bigquery, a local fake API.

The fake never runs SQL: it records every request and answers the re-measure with the value the
test gives it, so these tests prove which requests verification sends, in which order, with which
settings, and that the verdict follows the metric BigQuery reports.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from statistics import median

import pytest
import yaml

from jobs.config import BigQuerySettings
from jobs.contracts.spec import Contract
from jobs.core.records import BaselineStats, Verdict, Verification
from jobs.project.dbt import Dbt
from jobs.project.git import Git
from jobs.verify.verification import Target, verify_revert
from jobs.warehouse.bigquery_sandbox import BigQuerySandboxes
from jobs.warehouse.clone_build import RelationOutsideSandbox
from jobs.warehouse.cost_guard import CostRefused
from tests.bigquery_server import FakeBigQuery
from tests.conftest import SHOP, copy_shop
from tests.test_verify import MRR_LEVEL, ORDERS_COUNT

os.environ["DBT_SEND_ANONYMOUS_USAGE_STATS"] = "false"

UTC = timezone.utc
AT = datetime(2026, 11, 23, 6, tzinfo=UTC)  # the incident's check; Nov 22 is the window
LAST_GOOD = datetime(2026, 11, 22, 6, tzinfo=UTC)
NOW = datetime(2026, 11, 23, 7, tzinfo=UTC)
PAYMENTS_SQL = "shop/models/intermediate/int_order_payments.sql"
SUCCEEDED = "      and payment_status = 'succeeded'\n"
HEALTHY, REGRESSED = 14_500.0, 11_738.0
REVENUE_COLUMNS = [{"name": "revenue_date", "type": "DATE"}, {"name": "net_revenue", "type": "NUMERIC"}]
PROD_WRITE = re.compile(r"\b(create\s+(or\s+replace\s+)?(table|view)|insert\s+into|merge\s+into|delete\s+from|"
                        r"drop\s+(table|view)|truncate\s+table)\s+`acme-prod`", re.I)


@dataclass(frozen=True)
class Scenario:
    repo: Path
    prod_state: Path
    sandboxes: Path
    sha: dict[str, str]
    contract: Contract
    band: BaselineStats


def _git(repo: Path, *args: str) -> str:
    return Git(repo).run("-c", "user.name=Cairn Test", "-c", "user.email=test@cairn.invalid", *args)


def _commit(repo: Path, message: str, path: str, old: str, new: str) -> str:
    file = repo / path
    file.parent.mkdir(parents=True, exist_ok=True)
    text = file.read_text() if file.exists() else ""
    assert old in text, f"{old!r} not in {path}"
    file.write_text(text.replace(old, new, 1) if old else new)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", message)
    return Git(repo).head_sha()


@pytest.fixture(scope="module")
def scenario(tmp_path_factory) -> Scenario:
    """The shop with the PayPal regression deployed, and production's manifest as BigQuery names it."""
    root = tmp_path_factory.mktemp("bqverify")
    repo = root / "repo"
    copy_shop(repo / "shop")
    Git(repo).run("init", "-q", "-b", "main")
    sha = {"base": _commit(repo, "Shop project", "shop/dbt_project.yml", "", (repo / "shop/dbt_project.yml").read_text())}
    sha["regression"] = _commit(repo, "Only count card and bank payments", PAYMENTS_SQL, SUCCEEDED,
                                SUCCEEDED + "      and payment_method in ('card', 'bank_transfer')\n")
    _git(repo, "checkout", "-q", "-b", "own_schema")
    sha["own_schema"] = _commit(repo, "Marts in their own dataset", "shop/macros/schema.sql", "",
                                "{% macro generate_schema_name(custom_schema_name, node) -%}\n"
                                "{{ custom_schema_name or target.schema }}\n{%- endmacro %}\n")
    _commit(repo, "Marts schema", "shop/dbt_project.yml", "+materialized: table",
            "+materialized: table\n      +schema: marts")
    sha["own_schema"] = Git(repo).head_sha()
    _git(repo, "checkout", "-q", "-b", "escape", sha["regression"])
    sha["escape"] = _commit(repo, "Sneaky hook", "shop/models/marts/fct_revenue.sql", "-- Daily revenue.", (
        "{{ config(pre_hook=[\"insert into `acme-prod`.`analytics`.`fct_revenue` "
        "select * from `acme-prod`.`analytics`.`fct_revenue` limit 1\"]) }}\n-- Daily revenue."))
    _git(repo, "checkout", "-q", "main")

    profiles = root / "prod-profile"
    profiles.mkdir()
    (profiles / "profiles.yml").write_text(yaml.safe_dump({"shop": {"target": "prod", "outputs": {"prod": {
        "type": "bigquery", "method": "oauth-secrets", "token": "anonymous", "project": "acme-prod",
        "dataset": "analytics", "location": "EU", "threads": 1}}}}))
    Dbt(repo / "shop", profiles, target_path=root / "prod-state").parse()

    declared = yaml.safe_load((SHOP / "cairn.yml").read_text())["contracts"]
    contract = Contract.model_validate(next(c for c in declared if c["id"] == "revenue.net_daily"))
    healthy_days = [14_210.0, 14_446.0, 14_800.0, 14_390.0]
    band = BaselineStats(expected=median(healthy_days), lower=0.9 * min(healthy_days), upper=1.1 * max(healthy_days),
                         n=4, seasonal=True)
    assert band.contains(HEALTHY) and not band.contains(REGRESSED)
    return Scenario(repo, root / "prod-state", root / "sandboxes", sha, contract, band)


@pytest.fixture
def fake():
    with FakeBigQuery() as server:
        server.add_dataset("acme-prod", "analytics", location="EU")
        server.add_table("acme-prod", "analytics", "fct_orders")
        server.build_schema("fct_revenue", REVENUE_COLUMNS)
        yield server


def _verify(s: Scenario, fake: FakeBigQuery, deployed: str = "regression", snapshot_at: datetime = LAST_GOOD,
            also: tuple[Target, ...] = (), **settings) -> Verification:
    config = BigQuerySettings(project="acme-prod", sandbox_project="acme-sbx", location="EU",
                              credentials="anonymous", api_endpoint=fake.endpoint, org="acme",
                              **{"budget_bytes": 5 * 1024**3, **settings})
    sandboxes = BigQuerySandboxes(fake.client("acme-sbx", "EU"), config, root=s.sandboxes, now=NOW,
                                  snapshot_at=snapshot_at)
    return verify_revert(
        sandboxes=sandboxes, repo=s.repo, project_subdir="shop", deployed_sha=s.sha[deployed],
        shas=[s.sha["regression"]], models=["model.shop.int_order_payments"], contract=s.contract,
        metric_model="fct_revenue", prod_state=s.prod_state, band=s.band, before=REGRESSED, at=AT, incident_id=12,
        sandboxes_root=s.sandboxes, also=also)


def _answer_metric(fake: FakeBigQuery, value: float) -> None:
    # Only Cairn's contract query names c0_value; dbt's tests on fct_revenue get the default answer.
    fake.answer(r"`c0_value`.*FROM `acme-sbx`\.`cairn_sbx_12_[0-9a-f]{6}`\.`fct_revenue`",
                [{"c0_value": value, "c0_rows": 31}])


@pytest.mark.slow
def test_a_revert_is_verified_through_the_bigquery_requests_that_would_do_it(scenario, fake) -> None:
    _answer_metric(fake, HEALTHY)
    v = _verify(scenario, fake)
    assert v.verdict is Verdict.verified, v.detail
    assert v.after == HEALTHY and v.before == REGRESSED and v.sha == scenario.sha["regression"]

    requests = fake.requests
    calls = [r.call for r in requests]
    # 1. the sandbox dataset: labelled, expiring, in production's location, in the sandbox project
    insert = requests[0]
    assert insert.call == "datasets.insert" and insert.path == "/projects/acme-sbx/datasets"
    dataset = insert.body["datasetReference"]["datasetId"]
    assert re.fullmatch(r"cairn_sbx_12_[0-9a-f]{6}", dataset)
    assert insert.body["labels"] == {"cairn-incident": "12", "cairn-org": "acme"}
    assert insert.body["location"] == "EU" and insert.body["defaultTableExpirationMs"] == str(86_400_000)
    assert v.clone_id == f"bigquery:acme-sbx.{dataset}@2026-11-22T06:00:00+00:00"

    # 2. the incremental model cloned at the last-good time, the only clone
    clone = (f"CREATE TABLE `acme-sbx.{dataset}.fct_orders` CLONE `acme-prod.analytics.fct_orders` "
             "FOR SYSTEM_TIME AS OF TIMESTAMP '2026-11-22 06:00:00.000000+00'")
    sent = fake.queries(dry_run=False)
    assert sent[0] == clone and sum("CLONE" in q for q in sent) == 1
    assert [c["statement"] for c in v.clones] == [clone]

    # 3. dry runs of the three models the build selects, before any build job
    dry = [r for r in requests if r.call == "jobs.insert" and r.dry_run]
    assert len(dry) == 3 and v.estimated_bytes == 3 * fake.default_bytes
    first_build = next(i for i, r in enumerate(requests) if r.sql and '"node_id"' in r.sql and not r.dry_run)
    assert all(requests.index(r) < first_build for r in dry)

    # 4. dbt-bigquery's build: every job capped, every write inside the sandbox, parents from production
    builds = [r for r in requests if r.call == "jobs.insert" and not r.dry_run and '"node_id"' in (r.sql or "")]
    assert builds and all(r.body["configuration"]["query"]["maximumBytesBilled"] == str(5 * 1024**3) for r in builds)
    assert all(r.path == "/projects/acme-sbx/jobs" for r in builds)
    ddl = " ".join(r.sql for r in builds)
    assert f"create or replace view `acme-sbx`.`{dataset}`.`int_order_payments`" in ddl
    assert f"create or replace table `acme-sbx`.`{dataset}`.`fct_revenue`" in ddl
    assert f"merge into `acme-sbx`.`{dataset}`.`fct_orders`" in ddl
    assert "from `acme-prod`.`analytics`.`stg_payments`" in ddl  # deferred to production
    assert not [q for q in fake.queries() if PROD_WRITE.search(q)]
    assert "--target cairn_sandbox" in v.dbt_command and f"--defer --state {scenario.prod_state} --favor-state" in v.dbt_command
    assert {"model.shop.int_order_payments", "model.shop.fct_orders", "model.shop.fct_revenue"} <= set(v.built)
    assert v.tests["pass"] > 10 and v.tests["fail"] == v.tests["error"] == 0

    # 5. the re-measure on the sandbox, capped like the build; 6. the sandbox dropped with its contents
    measure = next(r for r in requests if r.sql and "`c0_value`" in r.sql)
    assert f"FROM `acme-sbx`.`{dataset}`.`fct_revenue`" in measure.sql
    # revenue_date is a DATE: the window is compared as dates, after reading the built table's schema
    assert "`revenue_date` >= CAST('2026-11-22' AS DATE) AND `revenue_date` < CAST('2026-11-23' AS DATE)" in measure.sql
    schema_read = requests.index(measure) - 1
    assert requests[schema_read].call == "tables.get"
    assert requests[schema_read].path == f"/projects/acme-sbx/datasets/{dataset}/tables/fct_revenue"
    assert measure.body["configuration"]["query"]["maximumBytesBilled"] == str(5 * 1024**3)
    assert requests.index(measure) > max(requests.index(r) for r in builds)
    # Sample-row deltas start by probing the rebuilt model in the sandbox, through the same guarded
    # connection; this fake holds no rows, so the delta is left out and the verification stands.
    probes = [r.sql for r in requests if r.sql and "__cairn_probe" in r.sql]
    assert f"LEFT JOIN (SELECT * FROM `acme-sbx`.`{dataset}`.`int_order_payments` LIMIT 1)" in probes[0]
    assert v.deltas == ()
    assert calls[-1] == "datasets.delete" and requests[-1].query["deleteContents"] == ["true"]
    assert requests[-1].path == f"/projects/acme-sbx/datasets/{dataset}"
    assert v.billed_bytes > 0 and ("acme-sbx", dataset) not in fake.datasets
    assert not any(scenario.sandboxes.iterdir())


@pytest.mark.slow
def test_a_groups_contracts_are_all_measured_in_the_one_sandbox(scenario, fake) -> None:
    """One culprit broke revenue, orders and MRR: one sandbox, one build, each contract judged in its own band."""
    _answer_metric(fake, HEALTHY)
    fake.answer(r"`c0_rows`.*FROM `acme-sbx`\.`cairn_sbx_12_[0-9a-f]{6}`\.`fct_orders`", [{"c0_rows": 480}])
    orders, mrr = ORDERS_COUNT, MRR_LEVEL
    band = BaselineStats(expected=470.0, lower=420.0, upper=math.inf, n=4)
    v = _verify(scenario, fake, also=(Target(13, orders, band, 300.0),))
    assert v.verdict is Verdict.verified, v.detail
    assert [(m.incident_id, m.verdict, m.before, m.after) for m in v.members] == [
        (12, Verdict.verified, REGRESSED, HEALTHY), (13, Verdict.verified, 300.0, 480)]
    assert "int_order_payments+,+fct_revenue int_order_payments+,+fct_orders" in v.dbt_command
    assert fake.calls().count("datasets.insert") == 1 and fake.calls()[-1] == "datasets.delete"

    # A member the revert cannot reach is not measured (its model is not in the sandbox) and is not recovered.
    group = _verify(scenario, fake, also=(Target(13, orders, band, 300.0), Target(14, mrr, band, 1.0)))
    assert group.verdict is Verdict.not_recovered and group.members[2].after is None
    assert "does not reach fct_mrr" in group.members[2].detail
    assert not [q for q in fake.queries() if "fct_mrr" in q]


@pytest.mark.slow
def test_a_revert_that_does_not_recover_the_metric_is_not_verified(scenario, fake) -> None:
    _answer_metric(fake, REGRESSED)
    v = _verify(scenario, fake)
    assert v.verdict is Verdict.not_recovered and "with the revert, not inside [" in v.detail
    assert fake.calls()[-1] == "datasets.delete"


@pytest.mark.slow
def test_outside_time_travel_the_current_state_is_cloned_and_the_evidence_says_so(scenario, fake) -> None:
    _answer_metric(fake, HEALTHY)
    v = _verify(scenario, fake, snapshot_at=NOW - timedelta(days=9), sandbox_expiration="6h")
    assert v.verdict is Verdict.verified and v.clone_id.endswith("@current")
    assert "fct_orders: 2026-11-14T07:00:00+00:00 is outside the 7-day time-travel window" in v.detail
    [clone] = [q for q in fake.queries() if "CLONE" in q]
    assert clone.endswith("CLONE `acme-prod.analytics.fct_orders`")
    assert fake.requests[0].body["defaultTableExpirationMs"] == str(6 * 3600 * 1000)


@pytest.mark.slow
def test_a_budget_overrun_is_refused_with_the_estimate_before_building(scenario, fake) -> None:
    fake.default_bytes = 3 * 1024**3  # three models: 9 GiB against a 5 GiB budget
    with pytest.raises(CostRefused) as info:
        _verify(scenario, fake)
    assert "estimates 9.0 GiB (9663676416 bytes), over the budget of 5.0 GiB" in str(info.value)
    assert info.value.audit_data()["estimated_bytes"] == 9 * 1024**3
    assert info.value.clone_id.startswith("bigquery:acme-sbx.cairn_sbx_12_")
    assert not [q for q in fake.queries(dry_run=False) if '"node_id"' in q]  # dbt built nothing
    assert fake.calls()[-1] == "datasets.delete"


@pytest.mark.slow
def test_a_project_placing_models_elsewhere_is_refused_before_any_job(scenario, fake) -> None:
    with pytest.raises(RelationOutsideSandbox) as info:
        _verify(scenario, fake, deployed="own_schema")
    assert "model.shop.fct_revenue -> acme-sbx.marts.fct_revenue" in str(info.value)
    assert fake.calls() == ["datasets.insert", "datasets.delete"]


@pytest.mark.slow
def test_sql_in_a_model_cannot_write_production(scenario, fake) -> None:
    """THE safety test on BigQuery: a pre-hook inserts into production; the request never leaves."""
    _answer_metric(fake, HEALTHY)
    v = _verify(scenario, fake, deployed="escape")
    assert v.verdict is Verdict.build_failed
    assert "model.shop.fct_revenue: error" in v.detail and "refused before sending" in v.detail
    assert "acme-prod.analytics.fct_revenue" in v.detail
    assert not [q for q in fake.queries() if PROD_WRITE.search(q)]
    assert fake.calls()[-1] == "datasets.delete"
