"""Each failing node of real shop runs classified from the recorded run, its manifest and the warehouse."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import duckdb
import pytest

from jobs.core.errors import WarehouseError
from jobs.core.runs import FRESHNESS, Classification, FailureKind, NodeRun, Run
from jobs.detect.classify import SAMPLE_ROWS, classify, missing_column
from jobs.runs.artifacts import parse_run, read_target
from jobs.warehouse.duckdb import DuckDBWarehouse
from jobs.warehouse.row_deltas import MASK
from tests.dbt_runs import BROKEN_MODEL, DRIFTED_MODEL, FAILING_TEST, PII_TEST, UNCOMPILABLE_MODEL, drifted_run


def classified(target, warehouse) -> dict[str, Classification]:
    run = parse_run(read_target(target))
    manifest = json.loads((target / "manifest.json").read_text())
    with DuckDBWarehouse(warehouse, read_only=True) as wh:
        found = classify(run, manifest, wh.columns, wh.query)
    assert [c.unique_id for c in found] == [n.unique_id for n in run.failures]  # one each, in the run's order
    return {c.unique_id: c for c in found}


@pytest.fixture(scope="module")
def drifted(shop_runs, tmp_path_factory):
    root = tmp_path_factory.mktemp("drift") / "shop"
    return classified(drifted_run(shop_runs, root), root / "warehouse.duckdb")


def test_a_column_the_code_invents_is_a_runtime_sql_error(shop_runs):
    found = classified(shop_runs.failed, shop_runs.root / "warehouse.duckdb")
    broken = found[BROKEN_MODEL]
    assert broken.kind is FailureKind.runtime_sql and broken.evidence["missing_column"] == "refund_reason_code"
    assert "refund_reason_code" in broken.summary and "Binder Error" in broken.summary


def test_a_failing_test_names_the_test_the_model_the_column_and_the_rows(shop_runs):
    found = classified(shop_runs.failed, shop_runs.root / "warehouse.duckdb")
    [test] = [c for uid, c in found.items() if uid.startswith(FAILING_TEST)]
    assert test.kind is FailureKind.test_failure
    assert (test.evidence["test"], test.evidence["attached_node"], test.evidence["column"]) == (
        "unique", "model.shop.stg_order_items", "order_id")
    rows = test.evidence["failing_rows"]
    assert rows > 0 and test.summary == f"test unique on stg_order_items.order_id failed: {rows} failing rows"


def test_a_failing_tests_rows_are_sampled_by_its_own_sql_with_pii_masked(shop_runs):
    found = classified(shop_runs.failed, shop_runs.root / "warehouse.duckdb")
    [emails] = [c for uid, c in found.items() if uid.startswith(PII_TEST)]
    sample = emails.evidence["sample"]
    assert len(sample) == SAMPLE_ROWS and emails.evidence["masked_columns"] == ["email"]
    assert all(row["email"] == MASK and row["customers"] > 1 and isinstance(row["first_customer_id"], int)
               for row in sample)
    with duckdb.connect(str(shop_runs.root / "warehouse.duckdb"), read_only=True) as con:
        shared = dict(con.execute("select min(customer_id), count(*) from main.stg_customers where email is not null "
                                  "group by email having count(*) > 1").fetchall())
    assert all(shared[row["first_customer_id"]] == row["customers"] for row in sample)  # the warehouse's own rows
    [unique] = [c for uid, c in found.items() if uid.startswith(FAILING_TEST)]
    assert unique.evidence["masked_columns"] == [] and {"unique_field", "n_records"} <= set(unique.evidence["sample"][0])


def test_a_test_whose_sample_cannot_be_read_keeps_its_class_and_says_why(shop_runs):
    run = parse_run(read_target(shop_runs.failed))
    manifest = json.loads((shop_runs.failed / "manifest.json").read_text())

    def refuse(sql: str) -> list:
        raise WarehouseError("DuckDB refused the query: the file is locked")

    [test] = [c for c in classify(run, manifest, lambda relation: None, refuse) if c.unique_id.startswith(FAILING_TEST)]
    assert test.kind is FailureKind.test_failure and "locked" in test.evidence["sample_error"]


def test_a_stale_source_is_a_freshness_breach_and_a_warning_is_no_failure(shop_runs):
    run = parse_run(read_target(shop_runs.failed))
    found = classified(shop_runs.failed, shop_runs.root / "warehouse.duckdb")
    stale = [n for n in run.nodes if n.phase == FRESHNESS and n.status == "error"]
    assert stale and all(found[n.unique_id].kind is FailureKind.source_freshness for n in stale)
    orders = found["source.shop.raw.orders"]
    assert orders.evidence["error_after"] == {"count": 24, "period": "hour"}
    assert "is stale: newest row loaded" in orders.summary and "(error after 24 hours)" in orders.summary
    warned = [n.unique_id for n in run.nodes if n.phase == FRESHNESS and n.status == "warn"]
    skipped = [n.unique_id for n in run.nodes if n.status == "skipped"]
    assert warned and skipped and not set(warned + skipped) & set(found)


def test_a_source_column_renamed_by_the_loader_is_schema_drift(drifted):
    drift = drifted[DRIFTED_MODEL]
    assert drift.kind is FailureKind.schema_drift
    assert (drift.evidence["missing_column"], drift.evidence["upstream"]) == ("order_id", "source.shop.raw.orders")
    assert drift.evidence["relation"] == '"warehouse"."raw"."orders"'
    assert "order_ref" in drift.evidence["current_columns"] and "order_id" not in drift.evidence["current_columns"]
    assert "order_ref" in drift.evidence["undeclared_columns"]  # the renamed column: the project never declared it
    assert drift.summary == ('stg_orders reads order_id, which source.shop.raw.orders declares but '
                             '"warehouse"."raw"."orders" no longer has')


def test_a_model_that_does_not_compile_is_a_compilation_error(drifted):
    broken = drifted[UNCOMPILABLE_MODEL]
    assert broken.kind is FailureKind.compilation
    assert "the feed macro moved to the ops package" in broken.evidence["message"]
    assert broken.summary.startswith("stg_feed did not compile: Compilation Error in model stg_feed")


@pytest.mark.parametrize("message, column", [
    ('Binder Error: Referenced column "Refund_Code" not found in FROM clause!', "refund_code"),
    ('column "order_ref" does not exist', "order_ref"),
    ('column s.status does not exist', "status"),
    ("Unrecognized name: order_id at [12:9]", "order_id"),
    ("SQL compilation error: error line 3 at position 4\ninvalid identifier 'ORDER_ID'", "order_id"),
    ("SQL compilation error: invalid identifier '\"S\".\"ORDER_ID\"'", "order_id"),
    ("Division by zero", None),
])
def test_each_warehouse_names_the_missing_column_its_own_way(message, column):
    assert missing_column(message) == column


def test_an_upstream_relation_the_warehouse_cannot_find_is_not_called_drift():
    node = NodeRun("model.p.m", "error", message='Referenced column "a" not found in FROM clause!')
    manifest = {"nodes": {"model.p.m": {"depends_on": {"nodes": ["source.p.s.t"]}}},
                "sources": {"source.p.s.t": {"columns": {"a": {}}, "relation_name": '"db"."s"."t"'}}}
    seen: list[str] = []

    def lookup(relation: str) -> set[str] | None:  # the relation is gone: no columns to compare
        seen.append(relation)
        return None

    run = Run("i", datetime(2026, 9, 1, tzinfo=timezone.utc), "artifacts", nodes=(node,))
    [found] = classify(run, manifest, lookup)
    assert found.kind is FailureKind.runtime_sql and seen == ['"db"."s"."t"']


def test_an_undeclared_column_the_models_last_build_had_is_drift_too():
    """No YAML declares the source's columns: the model's own relation, as its last good build left it, still
    has the column, so the model read it from upstream until the upstream lost it."""
    node = NodeRun("model.p.stg", "error", message='Referenced column "method" not found in FROM clause!')
    manifest = {"nodes": {"model.p.stg": {"depends_on": {"nodes": ["source.p.s.t"]}, "relation_name": '"db"."m"."stg"'}},
                "sources": {"source.p.s.t": {"columns": {}, "relation_name": '"db"."s"."t"'}}}
    now = {'"db"."s"."t"': {"id": "INTEGER", "method_code": "VARCHAR"},
           '"db"."m"."stg"': {"id": "INTEGER", "method": "VARCHAR"}}
    run = Run("i", datetime(2026, 9, 1, tzinfo=timezone.utc), "artifacts", nodes=(node,))
    [found] = classify(run, manifest, now.get)
    assert found.kind is FailureKind.schema_drift and found.evidence["upstream"] == "source.p.s.t"
    assert found.evidence["undeclared_columns"] == ["id", "method_code"]
    # A column the code invents is no drift: the model never had it either.
    invented = NodeRun("model.p.stg", "error", message='Referenced column "method_name" not found in FROM clause!')
    [found] = classify(Run("i", run.generated_at, "artifacts", nodes=(invented,)), manifest, now.get)
    assert found.kind is FailureKind.runtime_sql
