"""Lineage over the real shop manifest: distances, files, macros, columns."""

from __future__ import annotations

import copy
from pathlib import Path

import duckdb
import pytest

from jobs.contracts.spec import Contract
from jobs.project.dbt import Dbt
from jobs.project.lineage import metric_columns, upstream
from tests.conftest import copy_shop

REVENUE = {"net_revenue", "revenue_date"}


def warehouse_schema(db_path: Path) -> dict:
    """{database: {schema: {table: {column: type}}}} as the warehouse itself describes it."""
    schema: dict = {}
    with duckdb.connect(str(db_path), read_only=True) as con:
        rows = con.execute("select table_catalog, table_schema, table_name, column_name, data_type "
                           "from information_schema.columns").fetchall()
    for database, sch, table, column, type_ in rows:
        schema.setdefault(database, {}).setdefault(sch, {}).setdefault(table, {})[column] = type_
    return schema


@pytest.fixture(scope="module")
def schema(built_shop):
    return warehouse_schema(built_shop.db_path)


@pytest.fixture(scope="module")
def parsed(tmp_path_factory) -> dict:
    """A parse-only manifest of a shop whose macro calls another macro."""
    root = tmp_path_factory.mktemp("parsed")
    project = copy_shop(root / "shop")
    (project / "macros" / "money.sql").write_text(
        "{% macro money(column) -%}\n    {{ cents_to_dollars(column, scale=2) }}\n{%- endmacro %}\n")
    stg = project / "models" / "staging" / "stg_refunds.sql"
    stg.write_text(stg.read_text().replace("{{ cents_to_dollars('amount_cents') }}", "{{ money('amount_cents') }}"))
    dbt = Dbt(project, project, target_path=root / "target",
              env={"CAIRN_DUCKDB_PATH": str(root / "w.duckdb"), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"})
    return dbt.parse()


def test_fct_revenue_reaches_its_sources_with_distances(built_shop):
    lineage = upstream(built_shop.manifest, "fct_revenue")
    assert lineage.root == "model.shop.fct_revenue"
    assert lineage.distance("model.shop.fct_revenue") == 0
    expected = {
        "model.shop.fct_orders": 1, "model.shop.fct_payments": 1, "model.shop.stg_refunds": 1,
        "model.shop.int_order_payments": 2, "model.shop.stg_payments": 2, "model.shop.stg_orders": 2,
        "model.shop.stg_order_items": 2, "model.shop.stg_invoices": 2, "source.shop.raw.refunds": 2,
        "source.shop.raw.payments": 3, "source.shop.raw.orders": 3, "source.shop.raw.invoices": 3,
    }
    for uid, hops in expected.items():
        assert lineage.distance(uid) == hops, uid
    for unrelated in ("model.shop.dim_customers", "model.shop.fct_mrr", "model.shop.int_subscription_periods",
                      "source.shop.raw.subscriptions", "source.shop.raw.customers"):
        assert unrelated not in lineage.distances
    assert ("model.shop.stg_payments", "model.shop.fct_payments") in lineage.edges
    assert lineage.path_to("source.shop.raw.payments") == [
        "raw.payments", "stg_payments", "fct_payments", "fct_revenue"]
    assert lineage.path_to("model.shop.fct_revenue") == ["fct_revenue"]


def test_files_are_project_relative_and_only_the_projects_own(built_shop):
    lineage = upstream(built_shop.manifest, "fct_revenue")
    files = lineage.node_files
    assert files["model.shop.fct_revenue"] == {
        "models/marts/fct_revenue.sql", "models/marts/_marts.yml", "macros/date_spine.sql", "dbt_project.yml"}
    assert files["source.shop.raw.payments"] == {"models/staging/_sources.yml", "dbt_project.yml"}
    # fct_orders calls dbt's is_incremental(): a package macro, not a file of this repository.
    assert all((built_shop.project_dir / f).is_file() for f in lineage.files)
    assert lineage.nodes_for_file("dbt_project.yml") == set(lineage.distances)
    assert lineage.nodes_for_file("macros/cents_to_dollars.sql") == {
        "model.shop.stg_payments", "model.shop.stg_refunds", "model.shop.stg_invoices", "model.shop.stg_order_items"}
    assert lineage.nodes_for_file("macros/date_spine.sql") == {"model.shop.fct_revenue"}
    assert lineage.nodes_for_file("models/marts/_marts.yml") == {
        "model.shop.fct_revenue", "model.shop.fct_orders", "model.shop.fct_payments"}
    assert lineage.nodes_for_file("models/marts/dim_customers.sql") == set()


def test_macros_are_followed_transitively(parsed):
    lineage = upstream(parsed, "fct_revenue")
    assert "macro.shop.cents_to_dollars" not in parsed["nodes"]["model.shop.stg_refunds"]["depends_on"]["macros"]
    assert "model.shop.stg_refunds" in lineage.nodes_for_file("macros/money.sql")
    assert "model.shop.stg_refunds" in lineage.nodes_for_file("macros/cents_to_dollars.sql")


def test_a_source_or_unique_id_names_the_root(built_shop):
    source = upstream(built_shop.manifest, "raw.payments")
    assert source.distances == {"source.shop.raw.payments": 0}
    assert source.files == {"models/staging/_sources.yml", "dbt_project.yml"}
    assert upstream(built_shop.manifest, "model.shop.fct_payments").distance("model.shop.stg_payments") == 1


@pytest.mark.parametrize("fields, expected", [
    ({"kind": "volume", "expr": "sum(net_revenue)", "time_column": "revenue_date", "window": "day"},
     {"net_revenue", "revenue_date"}),
    ({"kind": "ratio", "numerator": "sum(case when payment_method = 'coupon' then amount else 0 end)",
      "denominator": "sum(amount)", "where": "payment_type = 'order' and payment_status = 'succeeded'"},
     {"payment_method", "amount", "payment_type", "payment_status"}),
    ({"kind": "freshness", "column": "_loaded_at", "max_lag": "6h"}, {"_loaded_at"}),
    ({"kind": "row_count"}, set()),
    ({"kind": "volume", "expr": "max(mrr)"}, {"mrr"}),
])
def test_metric_columns(fields, expected):
    assert metric_columns(Contract(id="c", model="m", **fields)) == expected


def test_metric_columns_that_do_not_parse_mean_no_narrowing():
    assert metric_columns(Contract(id="c", model="m", kind="volume", expr="sum(amount")) == set()


def test_columns_narrow_over_compiled_sql(built_shop, schema):
    lineage = upstream(built_shop.manifest, "fct_revenue", REVENUE, schema=schema)
    assert lineage.columns("model.shop.fct_revenue") == REVENUE
    orders = lineage.columns("model.shop.fct_orders")
    assert {"paid_amount", "coupon_amount", "paid_at"} <= orders
    assert not {"gross_amount", "customer_id", "order_status"} & orders
    payments = lineage.columns("model.shop.fct_payments")
    # payment_type and payment_status filter the invoice payments: rows kept matter too.
    assert {"amount", "payment_type", "payment_status"} <= payments
    assert "customer_id" not in payments
    assert "amount_cents" in lineage.columns("source.shop.raw.payments")
    assert lineage.unresolved == {}


def test_undocumented_source_columns_leave_sources_unresolved(built_shop):
    lineage = upstream(built_shop.manifest, "fct_revenue", REVENUE)
    assert lineage.columns("source.shop.raw.payments") is None
    assert "select *" in lineage.unresolved["source.shop.raw.payments"]
    assert lineage.columns("model.shop.stg_payments") is not None


def test_unparsable_sql_falls_back_to_model_level(built_shop, schema):
    manifest = copy.deepcopy(built_shop.manifest)
    manifest["nodes"]["model.shop.fct_payments"]["compiled_code"] = "select ((( from where garbage"
    lineage = upstream(manifest, "fct_revenue", REVENUE, schema=schema)
    assert "model.shop.stg_payments" in lineage.distances  # never dropped
    assert lineage.columns("model.shop.fct_payments") is not None  # fct_revenue still resolves it
    for uid in ("model.shop.stg_payments", "model.shop.stg_invoices", "source.shop.raw.payments"):
        assert lineage.columns(uid) is None, uid
    assert "fct_payments" in lineage.unresolved["model.shop.stg_payments"]
    assert lineage.columns("model.shop.int_order_payments") is not None


def test_parse_only_manifest_has_no_columns(parsed):
    lineage = upstream(parsed, "fct_revenue", REVENUE)
    assert lineage.columns("model.shop.fct_revenue") == REVENUE
    assert lineage.columns("model.shop.fct_orders") is None
    assert "dbt compile" in lineage.unresolved["model.shop.fct_orders"]
