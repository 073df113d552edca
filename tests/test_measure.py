"""Contracts compiled to one query per model and measured on a real DuckDB file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta, timezone

import duckdb
import pytest
import sqlglot

from jobs.contracts.measure import QUANTILES, compile_model_query, evaluate
from jobs.contracts.relations import contracts_from_manifest, resolve
from jobs.contracts.spec import Contract
from jobs.core.errors import ConfigError, ContractError, WarehouseError
from jobs.warehouse import Warehouse, qualified_name
from jobs.warehouse.duckdb import DuckDBWarehouse

UTC = timezone.utc
AT = datetime(2026, 1, 4, 6, 0, tzinfo=UTC)  # the last complete day is Jan 3
DAY_START, DAY_END = datetime(2026, 1, 3), datetime(2026, 1, 4)


def _orders() -> list[tuple]:
    """(ts, amount, status, email, payment_method): ~3 days of orders, boundary rows, a late row."""
    rows = []
    for i in range(96):
        rows.append((
            datetime(2026, 1, 1) + timedelta(minutes=47 * i),
            5 + (i * 37 % 23) * 1.25,
            ("paid", "refunded", "pending")[i % 3],
            None if i % 5 == 0 else f"user{i}@example.com",
            None if i % 11 == 0 else ("card", "card", "paypal", "bank")[i % 4],
        ))
    rows.append((DAY_START, 7.0, "edge", "start@example.com", "card"))  # in the window
    rows.append((DAY_END, 7.0, "edge", "end@example.com", "card"))  # the next window's
    rows.append((datetime(2026, 1, 4, 9), 1.0, "paid", None, "bank"))  # after AT: invisible to replays
    return rows


ORDERS = _orders()


def _in_day(row: tuple) -> bool:
    return DAY_START <= row[0] < DAY_END


def _quantile(values: list[float], q: float) -> float:
    """Linear interpolation between order statistics, as quantile_cont defines it."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@pytest.fixture
def warehouse_path(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    con = duckdb.connect(str(path))
    con.execute(
        "CREATE TABLE fct_orders (ts TIMESTAMP, amount DOUBLE, status VARCHAR, email VARCHAR, "
        "payment_method VARCHAR)"
    )
    con.executemany("INSERT INTO fct_orders VALUES (?, ?, ?, ?, ?)", ORDERS)
    con.execute("CREATE SCHEMA raw")
    con.execute("CREATE TABLE raw.payments AS SELECT 1 AS id UNION ALL SELECT 2")
    con.close()
    return path


@pytest.fixture
def warehouse(warehouse_path):
    with DuckDBWarehouse(warehouse_path) as wh:
        yield wh


def _model(name: str, database: str = "warehouse", **extra) -> dict:
    return {
        "unique_id": f"model.shop.{name}", "resource_type": "model", "name": name,
        "database": database, "schema": "main", "alias": name,
        "original_file_path": f"models/{name}.sql", "patch_path": "shop://models/schema.yml",
        "config": {"meta": {}}, "meta": {}, **extra,
    }


def _manifest(database: str = "warehouse") -> dict:
    return {
        "nodes": {
            "model.shop.fct_orders": _model("fct_orders", database),
            "model.shop.dim_customers": _model("dim_customers", database),
            "test.shop.not_null_fct_orders_ts": {"resource_type": "test", "name": "not_null_fct_orders_ts"},
        },
        "sources": {
            "source.shop.raw.payments": {
                "unique_id": "source.shop.raw.payments", "resource_type": "source",
                "source_name": "raw", "name": "payments", "identifier": "payments",
                "database": database, "schema": "raw", "original_file_path": "models/sources.yml",
            },
        },
    }


def _day(**fields) -> Contract:
    return Contract(model="fct_orders", time_column="ts", window="day", **fields)


SIX_KINDS = [
    _day(id="orders.paid_amount", kind="volume", expr="sum(amount)", where="status = 'paid'"),
    _day(id="orders.rows", kind="row_count"),
    Contract(id="orders.fresh", kind="freshness", model="fct_orders", column="ts", max_lag="6h"),
    _day(id="orders.email_share", kind="ratio", numerator="count(email)", denominator="count(*)",
         where="amount > 10"),
    _day(id="orders.email_nulls", kind="null_rate", column="email"),
    _day(id="orders.methods", kind="distribution", column="payment_method"),
    _day(id="orders.amounts", kind="distribution", column="amount", numeric=True),
]


def test_each_kind_matches_python(warehouse):
    day = [r for r in ORDERS if _in_day(r)]
    over_10 = [r for r in day if r[1] > 10]
    observed = {o.contract_id: o for o in evaluate(warehouse, _manifest(), SIX_KINDS, AT)}

    assert observed["orders.paid_amount"].value == pytest.approx(sum(r[1] for r in day if r[2] == "paid"))
    assert observed["orders.rows"].value == len(day)
    latest = max(r[0] for r in ORDERS if r[0] <= AT.replace(tzinfo=None))
    assert observed["orders.fresh"].value == (AT.replace(tzinfo=None) - latest).total_seconds()
    assert observed["orders.email_share"].value == pytest.approx(
        sum(r[3] is not None for r in over_10) / len(over_10)
    )
    assert observed["orders.email_nulls"].value == pytest.approx(sum(r[3] is None for r in day) / len(day))
    methods = observed["orders.methods"]
    assert methods.value is None
    assert methods.profile == {
        "rows": len(day), "categories": dict(Counter(r[4] for r in day if r[4] is not None)),
    }
    amounts = observed["orders.amounts"].profile
    assert amounts["rows"] == len(day)
    assert amounts["quantiles"] == pytest.approx(
        {str(q): _quantile([r[1] for r in day], q) for q in QUANTILES}
    )
    for contract_id in ("orders.rows", "orders.methods"):
        assert (observed[contract_id].window_start, observed[contract_id].window_end) == (
            DAY_START.replace(tzinfo=UTC), DAY_END.replace(tzinfo=UTC),
        )
    assert observed["orders.fresh"].window_start is None
    assert {o.observed_at for o in observed.values()} == {AT}


def test_each_observation_records_the_count_behind_its_value(warehouse):
    """Rows for amounts, counts and null rates; a share's denominator; nothing for freshness or mixes."""
    day = [r for r in ORDERS if _in_day(r)]
    share_of_sums = _day(id="orders.avg_share", kind="ratio", numerator="sum(amount * 0.37)", denominator="sum(amount)")
    observed = {o.contract_id: o.count for o in evaluate(warehouse, _manifest(), [*SIX_KINDS, share_of_sums], AT)}
    assert observed == {"orders.paid_amount": sum(r[2] == "paid" for r in day), "orders.rows": len(day),
                        "orders.fresh": None, "orders.email_share": sum(r[1] > 10 for r in day),
                        "orders.email_nulls": len(day), "orders.methods": None, "orders.amounts": None,
                        "orders.avg_share": None}  # a ratio of sums is no binomial share


def test_where_or_and_an_own_filter_stay_inside_the_window(warehouse):
    contract = _day(id="orders.settled_emails", kind="volume", expr="count(email) filter (where amount > 10)",
                    where="status = 'paid' or status = 'refunded'")
    [observation] = evaluate(warehouse, _manifest(), [contract], AT)
    day = [r for r in ORDERS if _in_day(r) and r[2] in ("paid", "refunded")]
    assert observation.value == sum(r[3] is not None and r[1] > 10 for r in day)
    assert observation.profile == {"rows": len(day)}


def test_window_includes_its_start_and_excludes_its_end(warehouse):
    edges = _day(id="orders.edges", kind="row_count", where="status = 'edge'")
    [observation] = evaluate(warehouse, _manifest(), [edges], AT)
    assert observation.value == 1  # the row at Jan 3 00:00, not the one at Jan 4 00:00
    hour = Contract(id="orders.edge_hour", kind="row_count", model="fct_orders", where="status = 'edge'",
                    time_column="ts", window="hour")
    at_midnight = datetime(2026, 1, 4, 0, 0, tzinfo=UTC)  # window Jan 3 23:00 - Jan 4 00:00
    assert [o.value for o in evaluate(warehouse, _manifest(), [hour], at_midnight)] == [0]
    [next_hour] = evaluate(warehouse, _manifest(), [hour], at_midnight + timedelta(minutes=30))
    assert next_hour.value == 0  # Jan 4 00:00-01:00 is not complete yet
    [complete] = evaluate(warehouse, _manifest(), [hour], at_midnight + timedelta(hours=1))
    assert complete.value == 1


def test_freshness_replays_at_a_past_time_and_reports_empty(warehouse):
    fresh = SIX_KINDS[2]
    past = datetime(2026, 1, 2, 12, 0, tzinfo=UTC)
    [then] = evaluate(warehouse, _manifest(), [fresh], past)
    latest = max(r[0] for r in ORDERS if r[0] <= past.replace(tzinfo=None))
    assert then.value == (past.replace(tzinfo=None) - latest).total_seconds()
    [before_data] = evaluate(warehouse, _manifest(), [fresh], datetime(2025, 12, 1, tzinfo=UTC))
    assert (before_data.value, before_data.profile) == (None, {"empty": True})


def test_empty_window_reads_as_zero_volume_and_unknown_ratio(warehouse):
    at = datetime(2025, 6, 2, tzinfo=UTC)
    contracts = [SIX_KINDS[0], SIX_KINDS[3], SIX_KINDS[4], SIX_KINDS[5], SIX_KINDS[6]]
    values = [(o.value, o.profile) for o in evaluate(warehouse, _manifest(), contracts, at)]
    assert values == [
        (0.0, {"rows": 0}),
        (None, {"rows": 0, "numerator": 0.0, "denominator": 0.0}),
        (None, {"rows": 0, "nulls": 0}),
        (None, {"rows": 0, "empty": True, "categories": {}}),
        (None, {"rows": 0, "empty": True, "quantiles": {}}),
    ]


@pytest.mark.parametrize(
    "where",
    ["1; drop table x", "amount > (select 1)", "sum(amount) > 1", "amount +", "amount > 1; status = 'paid'",
     "amount > 1;", "amount * 2", "amount > 1 and exists (select 1)", "sum(amount) over () > 1",
     "o.amount > 1"],
)
def test_where_must_be_one_row_condition(where):
    contract = _day(id="orders.bad", kind="row_count", where=where)
    with pytest.raises(ContractError) as raised:
        compile_model_query('"warehouse"."main"."fct_orders"', [contract], AT, "duckdb")
    message = str(raised.value)
    assert "'orders.bad'" in message and "where" in message and repr(where) in message


@pytest.mark.parametrize(
    "where",
    ["status in ('paid', 'refunded')", "email like '%@example.com'", "not (amount between 1 and 2)",
     "email is not null or status = 'paid'", "status = 'a;b'", "regexp_matches(email, '^user')"],
)
def test_where_accepts_conditions(warehouse, where):
    contract = _day(id="orders.ok", kind="row_count", where=where)
    query = compile_model_query(warehouse.relation_name(_manifest()["nodes"]["model.shop.fct_orders"]),
                                [contract], AT, "duckdb")
    assert len(query.read(warehouse.query(query.sql)[0])) == 1


@pytest.mark.parametrize(
    ("field", "text"),
    [("expr", "amount"), ("expr", "sum(amount) + amount"), ("expr", "(select sum(amount) from x)"),
     ("expr", "sum(sum(amount))"), ("numerator", "count(*); select 1")],
)
def test_aggregate_fields_are_validated(field, text):
    fields = {"expr": "sum(amount)"} if field == "expr" else {"numerator": "count(*)", "denominator": "count(*)"}
    fields[field] = text
    kind = "volume" if field == "expr" else "ratio"
    contract = Contract(id="orders.agg", kind=kind, model="fct_orders", **fields)
    with pytest.raises(ContractError) as raised:
        compile_model_query('"warehouse"."main"."fct_orders"', [contract], AT, "duckdb")
    assert "'orders.agg'" in str(raised.value) and field in str(raised.value) and repr(text) in str(raised.value)


class CountingWarehouse:
    """The real warehouse, counting the queries that reach it."""

    def __init__(self, inner: DuckDBWarehouse):
        self.inner, self.dialect, self.queries = inner, inner.dialect, []

    def query(self, sql):
        self.queries.append(sql)
        return self.inner.query(sql)

    def relation_name(self, node):
        return self.inner.relation_name(node)

    def columns(self, relation):
        return self.inner.columns(relation)

    def column_types(self, relation):
        return self.inner.column_types(relation)

    def close(self):
        self.inner.close()


def test_one_query_per_model_and_observations_in_contract_order(warehouse):
    counting = CountingWarehouse(warehouse)
    assert isinstance(counting, Warehouse)
    payments = Contract(id="payments.rows", kind="row_count", source="raw.payments")
    contracts = [SIX_KINDS[0], payments, *SIX_KINDS[1:]]
    observations = evaluate(counting, _manifest(), contracts, AT)
    assert len(counting.queries) == 2  # fct_orders and raw.payments
    assert [o.contract_id for o in observations] == [c.id for c in contracts]
    assert observations[1].value == 2
    assert "orders" not in "".join(counting.queries).replace("fct_orders", "")  # ids never reach SQL


def test_tuple_rows_read_like_dict_rows(warehouse):
    query = compile_model_query('"warehouse"."main"."fct_orders"', SIX_KINDS, AT, "duckdb")
    [as_dict] = warehouse.query(query.sql)
    assert query.read(tuple(as_dict[c] for c in query.columns)) == query.read(as_dict)


def test_unknown_relations_fail_with_a_suggestion():
    with pytest.raises(ContractError, match=r"'orders.x' reads model 'fct_order'.*Did you mean 'fct_orders'"):
        resolve(Contract(id="orders.x", kind="row_count", model="fct_order"), _manifest())
    with pytest.raises(ContractError, match=r"source 'raw.payment'.*Did you mean 'raw.payments'"):
        resolve(Contract(id="p.x", kind="row_count", source="raw.payment"), _manifest())
    with pytest.raises(ContractError) as raised:
        resolve(Contract(id="q.x", kind="row_count", model="zzz"), _manifest())
    assert "Did you mean" not in str(raised.value)
    tests_are_not_models = Contract(id="t.x", kind="row_count", model="not_null_fct_orders_ts")
    with pytest.raises(ContractError):
        resolve(tests_are_not_models, _manifest())


def test_contracts_declared_in_dbt_yaml():
    manifest = _manifest()
    manifest["nodes"]["model.shop.fct_orders"]["config"]["meta"] = {"cairn": {"contracts": [
        {"id": "orders.rows", "kind": "row_count", "time_column": "ts", "window": "day"},
    ]}}
    manifest["nodes"]["model.shop.dim_customers"]["meta"] = {"cairn": {"contracts": [
        {"id": "customers.rows", "kind": "row_count", "model": "dim_customers"},
    ]}}
    manifest["sources"]["source.shop.raw.payments"]["config"] = {"meta": {"cairn": {"contracts": [
        {"id": "payments.rows", "kind": "row_count"},
    ]}}}
    contracts = {c.id: c for c in contracts_from_manifest(manifest)}
    assert contracts["orders.rows"].model == "fct_orders"
    assert contracts["orders.rows"].declared_in == "models/schema.yml"
    assert contracts["customers.rows"].model == "dim_customers"
    assert contracts["payments.rows"].source == "raw.payments"
    assert contracts["payments.rows"].declared_in == "models/sources.yml"


@pytest.mark.parametrize(
    ("declaration", "expected"),
    [
        ({"id": "orders.bad", "kind": "rowcount"}, ["contracts[0].kind", "'rowcount'"]),
        ({"id": "orders.bad", "kind": "volume"}, ["contracts[0]", "needs expr"]),
        ({"id": "orders.bad", "kind": "row_count", "window": "week", "time_column": "ts"},
         ["contracts[0].window", "'week'"]),
        ({"id": "orders.bad", "kind": "row_count", "model": "dim_customers"}, ["contracts[0]", "must read it"]),
    ],
)
def test_invalid_dbt_yaml_declaration_names_file_field_and_value(declaration, expected):
    manifest = _manifest()
    manifest["nodes"]["model.shop.fct_orders"]["config"]["meta"] = {"cairn": {"contracts": [declaration]}}
    with pytest.raises(ConfigError) as raised:
        contracts_from_manifest(manifest)
    message = str(raised.value)
    assert message.startswith("models/schema.yml: model 'fct_orders': config.meta.cairn.contracts")
    for fragment in expected:
        assert fragment in message


def test_duplicate_contract_ids_in_dbt_yaml_are_refused():
    manifest = _manifest()
    for node in ("model.shop.fct_orders", "model.shop.dim_customers"):
        manifest["nodes"][node]["config"]["meta"] = {"cairn": {"contracts": [{"id": "same", "kind": "row_count"}]}}
    with pytest.raises(ConfigError, match="'same' is also declared"):
        contracts_from_manifest(manifest)


@pytest.mark.parametrize("contract", SIX_KINDS, ids=lambda c: c.id)
def test_bigquery_sql_filters_with_if_and_quotes_with_backticks(contract):
    filtered = contract.model_copy(update={"where": "status = 'paid'"})
    query = compile_model_query("`proj.shop.fct_orders`", [filtered], AT, "bigquery")
    parsed = sqlglot.parse_one(query.sql, read="bigquery")
    assert parsed.sql("bigquery") == query.sql
    assert "FILTER" not in query.sql
    assert "IF(`status` = 'paid'" in query.sql or "COUNTIF(`status` = 'paid'" in query.sql
    assert "FROM `proj.shop.fct_orders`" in query.sql
    assert qualified_name("proj", "shop", "fct_orders", "bigquery") == "`proj`.`shop`.`fct_orders`"
    assert "DATETIME" not in query.sql  # a BigQuery TIMESTAMP literal, comparable with TIMESTAMP columns
    if contract.window:
        assert "`ts` >= CAST('2026-01-03 00:00:00' AS TIMESTAMP)" in query.sql
        assert "`ts` < CAST('2026-01-04 00:00:00' AS TIMESTAMP)" in query.sql


def test_bigquery_results_read_into_the_same_profiles():
    methods, amounts = SIX_KINDS[5], SIX_KINDS[6]
    query = compile_model_query("`proj.shop.fct_orders`", [methods, amounts], AT, "bigquery")
    assert "APPROX_TOP_COUNT(" in query.sql and "APPROX_QUANTILES(" in query.sql
    row = {
        "c0_rows": 5, "c0_profile": [{"value": "card", "count": 3}, {"value": None, "count": 9},
                                     {"value": "bank", "count": 2}],
        "c1_rows": 5, "c1_profile": [float(i) for i in range(101)],
    }
    first, second = query.read(row)
    assert first.profile == {"rows": 5, "categories": {"card": 3, "bank": 2}}
    assert second.profile == {"rows": 5, "quantiles": {"0.1": 10.0, "0.25": 25.0, "0.5": 50.0,
                                                       "0.75": 75.0, "0.9": 90.0}}


def test_warehouse_is_opened_read_only(warehouse):
    with pytest.raises(WarehouseError, match="read-only"):
        warehouse.query("INSERT INTO fct_orders (amount) VALUES (1)")
    assert warehouse.query("SELECT count(*) AS n FROM fct_orders") == [{"n": len(ORDERS)}]
    # Naive window literals meet TIMESTAMPTZ columns in the session zone, whatever the host's.
    assert warehouse.query("SELECT current_setting('TimeZone') AS tz") == [{"tz": "UTC"}]


def test_a_copy_under_another_name_needs_the_dbt_database_name(warehouse_path, tmp_path):
    copy = tmp_path / "incident-42.duckdb"
    shutil.copy(warehouse_path, copy)
    node = _manifest()["nodes"]["model.shop.fct_orders"]
    with DuckDBWarehouse(copy) as wrong, pytest.raises(WarehouseError, match="database='warehouse'"):
        wrong.relation_name(node)
    with DuckDBWarehouse(copy, database="warehouse") as right:
        assert right.relation_name(node) == '"incident-42"."main"."fct_orders"'
        [observation] = evaluate(right, _manifest(), [SIX_KINDS[1]], AT)
        assert observation.value == sum(_in_day(r) for r in ORDERS)


def test_contracts_from_a_real_dbt_build_measure_the_file_dbt_wrote(tmp_path):
    project = tmp_path / "shop"
    (project / "models").mkdir(parents=True)
    (project / "dbt_project.yml").write_text("name: shop\nversion: '1.0'\nprofile: shop\n")
    (project / "profiles.yml").write_text(
        f"shop:\n  target: dev\n  outputs:\n    dev:\n      type: duckdb\n"
        f"      path: {tmp_path / 'my-warehouse.duckdb'}\n"
    )
    (project / "models" / "fct_orders.sql").write_text(
        "select * from (values (1, 10.0), (2, 32.5), (3, null)) as t(id, amount)"
    )
    (project / "models" / "schema.yml").write_text(
        "version: 2\nmodels:\n  - name: fct_orders\n    config:\n      meta:\n        cairn:\n"
        "          contracts:\n            - {id: orders.amount, kind: volume, expr: 'sum(amount)'}\n"
        "            - {id: orders.nulls, kind: null_rate, column: amount}\n"
    )
    # In a subprocess: in-process dbt-duckdb keeps the file open read-write until its adapter is
    # released, and DuckDB then refuses a read-only connection to the same file in this process.
    subprocess.run(
        [sys.executable, "-m", "dbt.cli.main", "run", "--project-dir", str(project),
         "--profiles-dir", str(project), "--target-path", str(tmp_path / "target"),
         "--log-path", str(tmp_path / "logs"), "--quiet"],
        check=True, timeout=300,
    )
    manifest = json.loads((tmp_path / "target" / "manifest.json").read_text())
    contracts = contracts_from_manifest(manifest)
    assert [c.declared_in for c in contracts] == ["models/schema.yml"] * 2
    with DuckDBWarehouse(tmp_path / "my-warehouse.duckdb") as wh:
        observations = evaluate(wh, manifest, contracts, AT)
    assert [o.value for o in observations] == [pytest.approx(42.5), pytest.approx(1 / 3)]
