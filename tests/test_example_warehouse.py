"""The bundled demo warehouse: a deterministic generator and a shop project that builds green."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import duckdb
import pytest
import yaml

from examples.generate import TABLES, add_day, drop_source_rows, load
from jobs.contracts.spec import Contract, Kind

ROOT = Path(__file__).resolve().parent.parent
SHOP = ROOT / "examples" / "shop"
START = date(2026, 9, 1)


def table_contents(db_path: Path) -> dict[str, list[tuple]]:
    with duckdb.connect(str(db_path), read_only=True) as con:
        return {t: con.execute(f"select * from raw.{t} order by all").fetchall() for t in TABLES}


def scalar(db_path: Path, sql: str, params: list | None = None):
    with duckdb.connect(str(db_path), read_only=True) as con:
        return con.execute(sql, params or []).fetchone()[0]


# --- generator ---------------------------------------------------------------------------------


def test_bulk_load_equals_day_by_day(tmp_path: Path) -> None:
    bulk, daily = tmp_path / "bulk.duckdb", tmp_path / "daily.duckdb"
    load(bulk, START, 30)
    load(daily, START, 1)
    for offset in range(1, 30):
        add_day(daily, START + timedelta(days=offset))

    expected, got = table_contents(bulk), table_contents(daily)
    assert {t: len(rows) for t, rows in got.items()} == {t: len(rows) for t, rows in expected.items()}
    assert got == expected
    assert all(expected[t] for t in TABLES)


def test_same_seed_same_rows_other_seed_other_rows(tmp_path: Path) -> None:
    load(tmp_path / "a.duckdb", START, 2)
    load(tmp_path / "b.duckdb", START, 2)
    load(tmp_path / "c.duckdb", START, 2, seed=8)
    assert table_contents(tmp_path / "a.duckdb") == table_contents(tmp_path / "b.duckdb")
    assert table_contents(tmp_path / "a.duckdb")["orders"] != table_contents(tmp_path / "c.duckdb")["orders"]


def test_days_must_follow_on(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    load(db, START, 2)
    with pytest.raises(ValueError, match="load from 2026-09-03"):
        add_day(db, START + timedelta(days=1))
    with pytest.raises(ValueError, match="load from 2026-09-03"):
        add_day(db, START + timedelta(days=5))


def test_raw_data_is_realistic(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    load(db, START, 14)
    orders = "select count(*) / count(distinct ordered_at::date) from raw.orders where dayofweek(ordered_at) {}"
    weekday, weekend = scalar(db, orders.format("between 1 and 5")), scalar(db, orders.format("in (0, 6)"))
    assert 200 < weekday < 500
    assert 0.5 < weekend / weekday < 0.75
    assert scalar(db, "select count(*) - count(distinct payment_id) from raw.payments") >= 14 * 3
    assert scalar(db, "select count(*) from raw.refunds") / scalar(db, "select count(*) from raw.orders") == (
        pytest.approx(0.03, abs=0.015))
    first_copies = "select min(_loaded_at) - created_at as lag from raw.payments group by payment_id, created_at"
    assert scalar(db, f"select max(lag) from ({first_copies})") <= timedelta(hours=2, minutes=1)
    assert scalar(db, "select min(_loaded_at - ordered_at) from raw.orders") >= timedelta(minutes=3)
    assert scalar(db, "select list(distinct payment_method order by payment_method) from raw.payments") == [
        "bank_transfer", "card", "coupon", "paypal"]


def test_cli_loads_sixty_days_quickly(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    done = subprocess.run(
        [sys.executable, "-m", "examples.generate", "--db", str(db), "--start", "2026-09-01", "--days", "60"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    seconds = float(re.search(r"in ([0-9.]+)s$", done.stdout.strip()).group(1))
    assert seconds < 3, done.stdout  # fresh process: no warm caches
    assert scalar(db, "select count(distinct ordered_at::date) from raw.orders") == 60


def test_drop_source_rows_removes_half_a_day_of_payments(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    load(db, START, 3)
    day = START + timedelta(days=1)
    per_day = "select count(distinct payment_id) from raw.payments where created_at::date = ?"
    before, untouched = scalar(db, per_day, [day]), scalar(db, per_day, [START])

    dropped = drop_source_rows(db, day)

    assert scalar(db, per_day, [day]) == before - before // 2
    assert scalar(db, per_day, [START]) == untouched
    assert dropped >= before // 2
    orphans = "select count(*) from raw.refunds where payment_id not in (select payment_id from raw.payments)"
    assert scalar(db, orphans) == 0


def test_drop_source_rows_takes_the_children_along(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    load(db, START, 2)
    orders = scalar(db, "select count(*) from raw.orders where ordered_at::date = ?", [START])

    assert drop_source_rows(db, START, table="orders", fraction=0.25) == orders // 4
    for child in ("order_items", "payments", "refunds"):
        orphans = f"select count(*) from raw.{child} where order_id not in (select order_id from raw.orders)"
        assert scalar(db, orphans) == 0, child


# --- the dbt project ---------------------------------------------------------------------------


def test_build_passes_every_node(built_shop) -> None:
    statuses = {r.node.unique_id: str(r.status) for r in built_shop.results.results}
    failed = {k: s for k, s in statuses.items()
              if s not in ("success", "pass") and not (k.startswith("exposure.") and s == "no-op")}
    assert statuses and not failed
    assert sum(k.startswith("model.") for k in statuses) >= 12
    assert sum(k.startswith("test.") for k in statuses) >= 40


def test_manifest_has_the_layers_and_their_docs(built_shop) -> None:
    models = {n["name"]: n for n in built_shop.manifest["nodes"].values() if n["resource_type"] == "model"}
    required = {"stg_customers", "stg_plans", "stg_subscriptions", "stg_orders", "stg_order_items",
                "stg_invoices", "stg_payments", "stg_refunds", "int_order_payments",
                "int_subscription_periods", "fct_orders", "fct_payments", "fct_revenue", "dim_customers",
                "fct_mrr"}
    assert required <= set(models)
    for name, node in models.items():
        assert node["description"] and node["columns"], f"{name} lacks a description or columns"
        layer = node["fqn"][1]
        expected = {"staging": "view", "intermediate": "view", "marts": "table"}[layer]
        if name != "fct_orders":
            assert node["config"]["materialized"] == expected, name
    assert models["fct_orders"]["config"]["materialized"] == "incremental"
    assert models["fct_orders"]["config"]["unique_key"] == "order_id"
    assert "macro.shop.cents_to_dollars" in models["stg_payments"]["depends_on"]["macros"]
    assert models["dim_customers"]["columns"]["email"]["config"]["meta"]["pii"] is True


def test_manifest_has_sources_with_freshness_and_an_exposure(built_shop) -> None:
    sources = built_shop.manifest["sources"].values()
    assert {s["name"] for s in sources} == set(TABLES)
    for source in sources:
        assert source["schema"] == "raw"
        assert source["loaded_at_field"] == "_loaded_at"
        assert source["freshness"]["warn_after"]["count"]
    (exposure,) = built_shop.manifest["exposures"].values()
    assert set(exposure["depends_on"]["nodes"]) == {"model.shop.fct_revenue", "model.shop.fct_mrr"}


def declared_contracts(manifest: dict) -> list[Contract]:
    """Contracts from cairn.yml and from config.meta.cairn beside the models."""
    contracts = [Contract(**c) for c in yaml.safe_load((SHOP / "cairn.yml").read_text())["contracts"]]
    for node in manifest["nodes"].values():
        cairn = node["config"].get("meta", {}).get("cairn")
        if node["resource_type"] == "model" and cairn:
            contracts += [Contract(**c, model=node["name"]) for c in cairn["contracts"]]
    return contracts


def test_contracts_are_declared_and_valid(built_shop) -> None:
    contracts = declared_contracts(built_shop.manifest)
    ids = [c.id for c in contracts]
    assert len(ids) == len(set(ids))
    assert {"revenue.net_daily", "orders.freshness", "payments.coupon_share", "payments.method_mix",
            "customers.email_null_rate", "orders.daily_count"} <= set(ids)
    assert {c.kind for c in contracts} == set(Kind)


def measurement_sql(contract: Contract) -> str:
    expression = {
        Kind.volume: contract.expr,
        Kind.row_count: "count(*)",
        Kind.freshness: f"max({contract.column})",
        Kind.ratio: f"({contract.numerator}) / nullif({contract.denominator}, 0)",
        Kind.null_rate: f"count(*) filter (where {contract.column} is null) / count(*)",
        Kind.distribution: f"count(distinct {contract.column})",
    }[contract.kind]
    window = f"date_trunc('{contract.window.value}', {contract.time_column})" if contract.window else "null"
    return (f"select {window} as w, {expression} as v from main.{contract.model} "
            f"where {contract.where or 'true'} group by all order by w")


def test_contracts_measure_on_the_built_warehouse(built_shop) -> None:
    for contract in declared_contracts(built_shop.manifest):
        with duckdb.connect(str(built_shop.db_path), read_only=True) as con:
            rows = con.execute(measurement_sql(contract)).fetchall()
        assert rows and all(v is not None for _, v in rows), contract.id
        if contract.window:
            assert len(rows) >= 30, f"{contract.id}: one value per {contract.window.value} expected"


def test_daily_revenue_has_weekly_seasonality(built_shop) -> None:
    sql = """select avg(net_revenue) filter (where isodow(revenue_date) >= 6),
                    avg(net_revenue) filter (where isodow(revenue_date) < 6),
                    count(*), count(distinct revenue_date)
             from main.fct_revenue"""
    with duckdb.connect(str(built_shop.db_path), read_only=True) as con:
        weekend, weekday, rows, days = con.execute(sql).fetchone()
        deduplicated = con.execute(
            "select (select count(*) from raw.payments) - (select count(*) from main.stg_payments)").fetchone()[0]
    assert rows == days >= 35
    assert weekend < 0.8 * weekday
    assert deduplicated > 0
