"""BigQuery as a warehouse: contract SQL in BigQuery's dialect, and the real client against a local fake."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

import pytest
import sqlglot

from jobs.config import load_config
from jobs.contracts.measure import compile_model_query, evaluate
from jobs.contracts.spec import Contract
from jobs.core.errors import ConfigError, ContractError, WarehouseError
from jobs.warehouse import Warehouse
from jobs.warehouse.bigquery import BigQueryWarehouse, credentials_for, make_client
from jobs.warehouse.statement_guard import ProductionWriteRefused
from tests.bigquery_server import FakeBigQuery
from tests.test_measure import AT, SIX_KINDS

FIXTURE = Path(__file__).parent / "fixtures" / "bigquery_contracts.sql"
UTC = timezone.utc


def _expected() -> dict[str, str]:
    """contract id -> expected statement, from the fixture's `-- id` headers."""
    text = FIXTURE.read_text()
    blocks = re.split(r"^-- (\S+)\n", text, flags=re.M)[1:]
    return {cid: sql.strip().rstrip(";") for cid, sql in zip(blocks[::2], blocks[1::2])}


def _manifest(database: str | None = "acme-prod") -> dict:
    node = {"unique_id": "model.shop.fct_orders", "resource_type": "model", "name": "fct_orders",
            "schema": "shop", "alias": "fct_orders", "config": {}}
    if database is not None:
        node["database"] = database
    return {"nodes": {"model.shop.fct_orders": node}, "sources": {}}


@pytest.fixture
def fake():
    with FakeBigQuery() as server:
        yield server


@pytest.fixture
def warehouse(fake):
    with BigQueryWarehouse(fake.client(), maximum_bytes_billed=5 * 1024**3,
                           labels={"cairn-org": "acme"}) as wh:
        yield wh


def test_the_fixture_covers_all_six_kinds() -> None:
    assert set(_expected()) == {c.id for c in SIX_KINDS}
    assert {c.kind.value for c in SIX_KINDS} == {"volume", "row_count", "freshness", "ratio", "null_rate",
                                                 "distribution"}


@pytest.mark.parametrize("contract", SIX_KINDS, ids=lambda c: c.id)
def test_contract_sql_is_the_expected_bigquery_statement(contract, warehouse) -> None:
    relation = warehouse.relation_name(_manifest()["nodes"]["model.shop.fct_orders"])
    assert relation == "`acme-prod`.`shop`.`fct_orders`"
    query = compile_model_query(relation, [contract], AT, "bigquery")
    actual = sqlglot.parse_one(query.sql, read="bigquery")
    expected = sqlglot.parse_one(_expected()[contract.id], read="bigquery")
    assert actual == expected, f"\n{actual.sql('bigquery', pretty=True)}\n!=\n{expected.sql('bigquery', pretty=True)}"


def test_relation_names_come_from_the_manifest(warehouse) -> None:
    assert isinstance(warehouse, Warehouse)
    source = {"resource_type": "source", "name": "payments", "identifier": "payments_v2",
              "database": "acme-raw", "schema": "stripe"}
    assert warehouse.relation_name(source) == "`acme-raw`.`stripe`.`payments_v2`"
    node = _manifest(database=None)["nodes"]["model.shop.fct_orders"]
    assert warehouse.relation_name(node) == "`acme-sbx`.`shop`.`fct_orders`"  # the client's project


ORDERS_SCHEMA = [{"name": "ts", "type": "TIMESTAMP"}, {"name": "amount", "type": "NUMERIC"},
                 {"name": "status", "type": "STRING"}, {"name": "email", "type": "STRING"},
                 {"name": "payment_method", "type": "STRING"}]


def test_evaluate_sends_one_query_per_model_and_reads_bigquery_types(fake, warehouse) -> None:
    fake.add_table("acme-prod", "shop", "fct_orders", schema=ORDERS_SCHEMA)
    fake.answer(r"FROM `acme-prod`\.`shop`\.`fct_orders`", [{
        "c0_value": 120.5, "c0_rows": 4, "c1_rows": 9, "c2_latest": datetime(2026, 1, 4, 3, tzinfo=UTC),
        "c3_num": 3, "c3_den": 4, "c3_rows": 4, "c4_rows": 9, "c4_nulls": 3,
        "c5_rows": 9, "c5_profile": [{"value": "card", "count": 5}, {"value": None, "count": 2},
                                     {"value": "paypal", "count": 2}],
        "c6_rows": 9, "c6_profile": [float(i) for i in range(101)],
    }], bytes_processed=2048)
    observed = {o.contract_id: o for o in evaluate(warehouse, _manifest(), SIX_KINDS, AT)}
    assert observed["orders.paid_amount"].value == 120.5
    assert observed["orders.rows"].value == 9
    assert observed["orders.fresh"].value == 3 * 3600
    assert observed["orders.email_share"].value == 0.75
    assert observed["orders.email_nulls"].value == pytest.approx(1 / 3)
    assert observed["orders.methods"].profile == {"rows": 9, "categories": {"card": 5, "paypal": 2}}
    assert observed["orders.amounts"].profile["quantiles"]["0.5"] == 50.0

    [insert] = [r for r in fake.requests if r.call == "jobs.insert"]
    # The time column's type first (metadata, free), then the one query.
    assert fake.calls()[:2] == ["tables.get", "jobs.insert"]
    assert set(fake.calls()) == {"tables.get", "jobs.insert", "jobs.getQueryResults"}
    assert insert.path == "/projects/acme-sbx/jobs"
    config = insert.body["configuration"]
    assert config["query"]["useLegacySql"] is False
    assert config["query"]["maximumBytesBilled"] == str(5 * 1024**3)
    assert config["labels"] == {"cairn-org": "acme"} and not config.get("dryRun")
    assert insert.body["jobReference"]["location"] == "EU"
    assert insert.body["jobReference"]["jobId"].startswith("cairn_")
    assert warehouse.spend.processed == 2048 and warehouse.spend.billed == 10 * 1024**2


def test_dry_run_returns_the_estimate_and_bills_nothing(fake, warehouse) -> None:
    fake.answer(r"big_table", [], bytes_processed=7 * 1024**3)
    assert warehouse.dry_run("SELECT * FROM `acme-prod.shop.big_table`") == 7 * 1024**3
    [request] = fake.requests
    assert request.dry_run and "maximumBytesBilled" not in request.body["configuration"]["query"]
    assert warehouse.spend.billed == 0


def test_bigquery_errors_become_warehouse_errors(fake, warehouse) -> None:
    fake.answer(r"huge", [], bytes_processed=6 * 1024**3)
    with pytest.raises(WarehouseError, match="Query exceeded limit for bytes billed: 5368709120"):
        warehouse.query("SELECT * FROM `acme-prod.shop.huge`")
    with pytest.raises(WarehouseError, match="Not found: Table acme-prod:shop.nope"):
        warehouse.table("acme-prod", "shop", "nope")


@pytest.mark.parametrize("sql", [
    "DROP TABLE `acme-prod.shop.fct_orders`",
    "INSERT INTO shop.fct_orders (amount) VALUES (1)",
    "SELECT 1; DELETE FROM `acme-prod`.`shop`.`fct_orders` WHERE TRUE",
])
def test_the_production_connection_sends_no_write(fake, warehouse, sql) -> None:
    with pytest.raises(ProductionWriteRefused, match="refused before sending"):
        warehouse.query(sql)
    assert fake.requests == []


def test_table_metadata(fake, warehouse) -> None:
    fake.add_dataset("acme-prod", "shop", location="EU")
    fake.add_table("acme-prod", "shop", "fct_orders", [{"name": "amount", "type": "NUMERIC"}], num_bytes=42)
    table = warehouse.table("acme-prod", "shop", "fct_orders")
    assert table.num_bytes == 42 and [f.name for f in table.schema] == ["amount"]
    assert fake.calls() == ["tables.get"]


def test_columns_name_each_column_and_its_type_and_a_missing_table_none(fake, warehouse) -> None:
    fake.add_dataset("acme-prod", "raw", location="EU")
    fake.add_table("acme-prod", "raw", "payments", [{"name": "Payment_Method_Code", "type": "STRING"},
                                                    {"name": "amount_cents", "type": "INT64"}])
    assert warehouse.columns("`acme-prod`.`raw`.`payments`") == {"payment_method_code": "STRING",
                                                                  "amount_cents": "INT64"}
    assert warehouse.columns("`acme-prod`.`raw`.`refunds`") is None  # gone: not an error, no columns to compare
    assert fake.calls() == ["tables.get", "tables.get"]


def test_make_client_points_at_the_configured_endpoint(fake) -> None:
    client = make_client("acme-sbx", "EU", credentials_for("anonymous"), api_endpoint=fake.endpoint)
    fake.answer("select 1", [{"one": 1}])
    assert BigQueryWarehouse(client).query("select 1") == [{"one": 1}]
    assert fake.requests[0].path == "/projects/acme-sbx/jobs"


def test_a_key_file_is_named_never_shown(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"bigquery.credentials: '.*missing.json' is not a file"):
        credentials_for(str(tmp_path / "missing.json"))
    key = tmp_path / "key.json"
    key.write_text('{"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----s3cr3t"}')
    with pytest.raises(ConfigError) as info:
        credentials_for(str(key))
    assert str(key) in str(info.value) and "s3cr3t" not in str(info.value)


def test_config_refuses_a_key_in_place_of_a_path(tmp_path) -> None:
    path = tmp_path / "cairn.yml"
    path.write_text("bigquery:\n  project: acme-prod\n  location: EU\n"
                    "  credentials: '{\"private_key\": \"-----BEGIN PRIVATE KEY-----s3cr3t\"}'\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert "bigquery.credentials: holds a key, not a path" in str(info.value)
    assert "s3cr3t" not in str(info.value) and str(path) in str(info.value)


def test_config_for_a_bigquery_org(tmp_path) -> None:
    path = tmp_path / "cairn.yml"
    path.write_text("bigquery:\n  project: acme-prod\n  sandbox_project: acme-cairn\n  location: EU\n"
                    "  credentials: keys/cairn.json\n  org: acme\n  budget_bytes: 21474836480\n"
                    "  sandbox_expiration: 6h\n")
    bigquery = load_config(path, env={}).settings.bigquery
    assert bigquery.sandbox_project_id == "acme-cairn" and bigquery.sandbox_expiration.total_seconds() == 6 * 3600
    assert bigquery.time_travel.days == 7 and bigquery.api_endpoint is None
    path.write_text("bigquery: {project: p, location: EU, org: Acme Inc}\n")
    with pytest.raises(ConfigError, match=r"bigquery.org: 'Acme Inc' is not a BigQuery label value"):
        load_config(path, env={})


@pytest.mark.parametrize("column_type, literal", [
    ("DATE", "CAST('2026-01-03' AS DATE)"),
    ("DATETIME", "CAST('2026-01-03 00:00:00' AS DATETIME)"),
    ("TIMESTAMP", "CAST('2026-01-03 00:00:00' AS TIMESTAMP)"),
])
def test_window_literals_take_the_time_columns_own_type(fake, warehouse, column_type, literal) -> None:
    """A DATE or DATETIME column compared with a TIMESTAMP fails on BigQuery, and casting the column
    would scan every partition: the literal is written in the column's type instead."""
    fake.add_table("acme-prod", "shop", "fct_orders", schema=[{"name": "TS", "type": column_type},
                                                            {"name": "amount", "type": "NUMERIC"}])
    fake.answer(r"fct_orders", [{"c0_value": 5.0, "c0_rows": 1}])
    contract = next(c for c in SIX_KINDS if c.id == "orders.paid_amount")
    [observed] = evaluate(warehouse, _manifest(), [contract], AT)
    assert observed.value == 5.0
    [sql] = fake.queries()
    assert f"`ts` >= {literal}" in sqlglot.parse_one(sql, read="bigquery").sql("bigquery")
    end = literal.replace("01-03", "01-04")
    assert f"`ts` < {end}" in sqlglot.parse_one(sql, read="bigquery").sql("bigquery")


def test_freshness_on_a_date_column_compares_with_the_date(fake, warehouse) -> None:
    fake.add_table("acme-prod", "shop", "fct_orders", schema=[{"name": "ts", "type": "DATE"}])
    fake.answer(r"fct_orders", [{"c0_latest": datetime(2026, 1, 4, tzinfo=UTC).date()}])
    contract = next(c for c in SIX_KINDS if c.id == "orders.fresh")
    [observed] = evaluate(warehouse, _manifest(), [contract], AT)
    assert "IF(`ts` <= CAST('2026-01-04' AS DATE), `ts`, NULL)" in fake.queries()[0]
    assert observed.value == 6 * 3600  # the newest day began 6 hours before the check


@pytest.mark.parametrize("schema, message", [
    ([{"name": "created", "type": "TIMESTAMP"}],
     "contract 'orders.rows': time_column 'ts' is not a column of `acme-prod`.`shop`.`fct_orders` (it has created)"),
    ([{"name": "ts", "type": "STRING"}],
     "contract 'orders.rows': time_column 'ts' of `acme-prod`.`shop`.`fct_orders` is STRING; windows and lags"),
])
def test_a_time_column_that_is_missing_or_not_a_time_is_named_before_any_query(fake, warehouse, schema,
                                                                              message) -> None:
    fake.add_table("acme-prod", "shop", "fct_orders", schema=schema)
    contract = next(c for c in SIX_KINDS if c.id == "orders.rows")
    with pytest.raises(ContractError) as info:
        evaluate(warehouse, _manifest(), [contract], AT)
    assert message in str(info.value)
    assert fake.calls() == ["tables.get"]


def test_an_hourly_window_on_a_date_column_is_refused(fake, warehouse) -> None:
    fake.add_table("acme-prod", "shop", "fct_orders", schema=[{"name": "ts", "type": "DATE"}])
    contract = Contract(id="orders.hourly", kind="row_count", model="fct_orders", time_column="ts", window="hour")
    with pytest.raises(ContractError, match="time_column 'ts' of `acme-prod`.`shop`.`fct_orders` is a DATE; "
                                            "an hour window needs a DATETIME or TIMESTAMP column"):
        evaluate(warehouse, _manifest(), [contract], AT)


def test_a_missing_table_is_named_with_its_contracts(fake, warehouse) -> None:
    contract = next(c for c in SIX_KINDS if c.id == "orders.rows")
    with pytest.raises(WarehouseError) as info:
        evaluate(warehouse, _manifest(), [contract], AT)
    assert str(info.value) == ("reading the columns of `acme-prod`.`shop`.`fct_orders` for orders.rows failed: "
                               "BigQuery table acme-prod.shop.fct_orders: Not found: Table acme-prod:shop.fct_orders")
