"""`cairn doctor` and `cairn sandbox gc` on a BigQuery deployment, through the real entry point."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from bot.demo import commit
from jobs.config import load_config
from jobs.project.git import Git
from jobs.runtime import Runtime
from jobs.warehouse.bigquery import BigQueryWarehouse
from tests.bigquery_server import FakeBigQuery
from tests.conftest import copy_shop
from tests.deployment import run_cli


@pytest.fixture
def fake():
    with FakeBigQuery() as server:
        server.add_dataset("acme-prod", "analytics", location="EU")
        for table in ("fct_revenue", "stg_orders"):
            server.add_table("acme-prod", "analytics", table)
        yield server


@pytest.fixture
def deployment(tmp_path: Path, fake: FakeBigQuery) -> Path:
    """The shop with a BigQuery production target and a cairn.yml for the acme org; its config path."""
    project = copy_shop(tmp_path / "shop")
    (project / "profiles.yml").write_text(yaml.safe_dump({"shop": {"target": "prod", "outputs": {"prod": {
        "type": "bigquery", "method": "oauth-secrets", "token": "anonymous", "project": "acme-prod",
        "dataset": "analytics", "location": "EU", "threads": 1}}}}))
    config = project / "cairn.yml"
    config.write_text(yaml.safe_dump({
        "project": ".", "repo": ".", "store": f"sqlite:///{tmp_path}/cairn.db",
        "bigquery": {"project": "acme-prod", "sandbox_project": "acme-sbx", "location": "EU", "org": "acme",
                     "credentials": "anonymous", "api_endpoint": fake.endpoint}}))
    Git(project).run("init", "-q", "-b", "main")
    commit(project, "Shop analytics project", datetime(2026, 10, 1, tzinfo=timezone.utc))
    return config


def test_the_runtime_measures_bigquery_read_only(deployment: Path, fake: FakeBigQuery) -> None:
    rt = Runtime(load_config(deployment, env={}))
    try:
        warehouse = rt.warehouse
        assert isinstance(warehouse, BigQueryWarehouse) and warehouse.sandbox is None
        assert warehouse.project == "acme-sbx" and warehouse.location == "EU"
        assert warehouse.maximum_bytes_billed == 50 * 1024**3 and warehouse.labels == {"cairn-org": "acme"}
    finally:
        rt.close()


def test_doctor_passes_when_production_is_read_only(deployment: Path, fake: FakeBigQuery) -> None:
    result = run_cli("--config", str(deployment), "doctor")
    assert result.exit_code == 0, result.stderr
    assert "ok   create sandboxes in acme-sbx (EU)" in result.stdout
    assert "ok   no write to acme-prod.analytics.fct_orders: not built yet" in result.stdout
    assert "ok   no write to acme-prod.analytics.fct_revenue: none of bigquery.tables.update" in result.stdout
    assert result.stdout.count("ok   read acme-prod.analytics.") == 1  # one dry run per dataset


def test_doctor_fails_loudly_when_production_is_writable(deployment: Path, fake: FakeBigQuery) -> None:
    fake.add_table("acme-prod", "analytics", "dim_customers")
    fake.add_table("acme-prod", "analytics", "fct_orders")
    fake.granted[("acme-prod", "analytics", "fct_orders")] = {"bigquery.tables.delete"}
    result = run_cli("--config", str(deployment), "doctor")
    assert result.exit_code == 1
    assert "FAIL no write to acme-prod.analytics.fct_orders: PRODUCTION IS WRITABLE" in result.stdout
    assert "bigquery.tables.delete" in result.stdout and "docs/bigquery.md" in result.stderr


def test_sandbox_gc_drops_expired_sandboxes(deployment: Path, fake: FakeBigQuery) -> None:
    old = int((datetime.now(timezone.utc) - timedelta(days=3)).timestamp() * 1000)
    fake.add_dataset("acme-sbx", "cairn_sbx_9_abcdef", labels={"cairn-org": "acme", "cairn-incident": "9"},
                     created_ms=old, expiration_ms=86_400_000)
    fake.add_dataset("acme-sbx", "cairn_sbx_10_fedcba", labels={"cairn-org": "acme", "cairn-incident": "10"},
                     expiration_ms=86_400_000)
    result = run_cli("--config", str(deployment), "sandbox", "gc", "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert "would drop acme-sbx.cairn_sbx_9_abcdef" in result.stdout and "cairn_sbx_10" not in result.stdout
    assert ("acme-sbx", "cairn_sbx_9_abcdef") in fake.datasets
    result = run_cli("--config", str(deployment), "sandbox", "gc")
    assert "dropped acme-sbx.cairn_sbx_9_abcdef" in result.stdout and "1 expired sandbox dataset(s)" in result.stdout
    assert ("acme-sbx", "cairn_sbx_9_abcdef") not in fake.datasets and ("acme-sbx", "cairn_sbx_10_fedcba") in fake.datasets


def test_doctor_without_bigquery_says_what_it_needs(tmp_path: Path) -> None:
    config = tmp_path / "cairn.yml"
    config.write_text("branch: main\n")
    result = run_cli("--config", str(config), "sandbox", "gc")
    assert result.exit_code == 1 and f"{config}: no `bigquery:` section" in result.stderr


def _expired_sandbox(fake: FakeBigQuery) -> None:
    old = int((datetime.now(timezone.utc) - timedelta(days=3)).timestamp() * 1000)
    fake.add_dataset("acme-sbx", "cairn_sbx_9_abcdef", labels={"cairn-org": "acme", "cairn-incident": "9"},
                     created_ms=old, expiration_ms=86_400_000)


def test_the_scheduler_drops_expired_sandboxes_and_checks_production_read_only(deployment: Path,
                                                                               fake: FakeBigQuery) -> None:
    time_columns = {"fct_orders": ("ordered_at", "TIMESTAMP"), "fct_payments": ("created_at", "TIMESTAMP"),
                    "fct_mrr": ("date_day", "DATE")}
    for table, (column, kind) in time_columns.items():
        fake.add_table("acme-prod", "analytics", table,
                       schema=[{"name": column, "type": kind}, {"name": "_loaded_at", "type": "TIMESTAMP"}])
    # One row answering every model's measure: each reads only its own c<i>_<part> columns.
    parts = {"value": 10.0, "rows": 10, "num": 1, "den": 10, "nulls": 0,
             "latest": datetime(2026, 11, 23, tzinfo=timezone.utc), "profile": [{"value": "card", "count": 10}]}
    fake.answer(r"`c0_", [{f"c{i}_{part}": value for i in range(3) for part, value in parts.items()}])
    _expired_sandbox(fake)
    result = run_cli("--config", str(deployment), "scheduler", "--once")
    assert result.exit_code == 0, result.stderr
    assert "dropped expired sandbox dataset acme-sbx.cairn_sbx_9_abcdef" in result.stdout
    assert "check done" in result.stdout
    assert ("acme-sbx", "cairn_sbx_9_abcdef") not in fake.datasets
    measures = [q for q in fake.queries() if "`c0_" in q]
    # the contracts declared beside the models: fct_payments, fct_orders and fct_mrr (a DATE day)
    assert len(measures) == 3 and all("FROM `acme-prod`.`analytics`." in q for q in measures)
    assert "`date_day` >= CAST('" in next(q for q in measures if "fct_mrr" in q)
    assert {r.path for r in fake.requests if r.call == "jobs.insert"} == {"/projects/acme-sbx/jobs"}


def test_a_failing_check_does_not_stop_the_clean_up(deployment: Path, fake: FakeBigQuery) -> None:
    _expired_sandbox(fake)  # and fct_payments, among others, is missing from production
    result = run_cli("--config", str(deployment), "scheduler", "--once")
    assert result.exit_code == 1
    assert "dropped expired sandbox dataset acme-sbx.cairn_sbx_9_abcdef" in result.stdout
    assert ("check failed: reading the columns of `acme-prod`.`analytics`.`fct_payments` for "
            "payments.daily_amount failed") in result.stderr
    assert "Not found: Table acme-prod:analytics.fct_payments" in result.stderr
