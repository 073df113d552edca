"""What measuring costs: queries per evaluation, and one query per model against one per contract."""

from __future__ import annotations

import statistics
import time
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import pytest

from examples.generate import load
from jobs.config import load_config
from jobs.contracts.measure import evaluate
from jobs.contracts.relations import contracts_from_manifest, resolve
from jobs.contracts.spec import Contract
from jobs.project.dbt import Dbt
from jobs.warehouse.duckdb import DuckDBWarehouse

ROOT = Path(__file__).resolve().parent.parent
SHOP = ROOT / "examples" / "shop"
AT = datetime(2026, 10, 6, 1, tzinfo=timezone.utc)
MODELS, CONTRACTS_PER_MODEL, ROWS = 20, 10, 1_000_000
ROUNDS = 3


class CountingWarehouse:
    """The real DuckDBWarehouse, counting the statements it is asked to run."""

    def __init__(self, inner: DuckDBWarehouse):
        self.inner, self.dialect, self.queries = inner, inner.dialect, 0

    def query(self, sql: str) -> list[dict[str, Any]]:
        self.queries += 1
        return self.inner.query(sql)

    def relation_name(self, node: dict[str, Any]) -> str:
        return self.inner.relation_name(node)

    def columns(self, relation: str) -> dict[str, str] | None:
        return self.inner.columns(relation)

    def column_types(self, relation: str) -> dict[str, Any]:
        return self.inner.column_types(relation)

    def close(self) -> None:
        self.inner.close()


# --- (a) the example shop ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory):
    """The example project, 35 days of data, built once; its manifest and every contract."""
    import shutil

    root = tmp_path_factory.mktemp("shop")
    project = root / "shop"
    shutil.copytree(SHOP, project, ignore=shutil.ignore_patterns("target", "logs", "*.duckdb", ".cairn"))
    warehouse = root / "warehouse.duckdb"
    load(warehouse, date(2026, 9, 1), 35)
    dbt = Dbt(project, project, env={"CAIRN_DUCKDB_PATH": str(warehouse)}, target_path=root / "target")
    assert dbt.build().success
    manifest = dbt.manifest()
    contracts = list(load_config(project / "cairn.yml", env={}).settings.contracts) + contracts_from_manifest(manifest)
    return warehouse, manifest, contracts


@pytest.mark.benchmark(group="example shop")
def test_one_query_per_model_for_the_example_contracts(benchmark, shop) -> None:
    path, manifest, contracts = shop
    models = {resolve(c, manifest)["unique_id"] for c in contracts}
    with DuckDBWarehouse(path) as inner:
        warehouse = CountingWarehouse(inner)
        observations = benchmark.pedantic(evaluate, args=(warehouse, manifest, contracts, AT),
                                          rounds=20, iterations=1)
        per_evaluation = warehouse.queries / 20
    assert len(observations) == len(contracts)
    assert per_evaluation == len(models)
    benchmark.extra_info.update(contracts=len(contracts), models=len(models), queries_per_evaluation=per_evaluation)
    print(f"\n{len(contracts)} example contracts on {len(models)} models: {per_evaluation:g} queries per evaluation")


# --- (b) 200 contracts on 20 models of 1M rows -------------------------------------------------


def _node(name: str) -> dict[str, Any]:
    return {"unique_id": f"model.bench.{name}", "resource_type": "model", "name": name,
            "database": "wide", "schema": "main", "alias": name}


def _contracts(model: str) -> list[Contract]:
    """Ten contracts of every kind on one model, as a team would declare them."""
    day = {"model": model, "time_column": "created_at", "window": "day"}
    declared = [
        {"kind": "volume", "expr": "sum(amount)", **day},
        {"kind": "volume", "expr": "sum(amount)", "where": "status = 'succeeded'", **day},
        {"kind": "row_count", **day},
        {"kind": "row_count", "model": model},
        {"kind": "ratio", "numerator": "count(email)", "denominator": "count(*)", **day},
        {"kind": "null_rate", "column": "email", **day},
        {"kind": "null_rate", "column": "email", "model": model},
        {"kind": "freshness", "column": "loaded_at", "max_lag": "6h", "model": model},
        {"kind": "distribution", "column": "method", **day},
        {"kind": "distribution", "column": "amount", "numeric": True, **day},
    ]
    return [Contract(id=f"{model}.c{i}", **fields) for i, fields in enumerate(declared)]


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory):
    """20 tables of 1M rows (30 days of events each), a hand-made manifest and 200 contracts."""
    path = tmp_path_factory.mktemp("wide") / "wide.duckdb"
    names = [f"fct_events_{i:02d}" for i in range(MODELS)]
    with duckdb.connect(str(path)) as con:
        for name in names:
            con.execute(f"""
                create table {name} as select
                    range as id,
                    (range % 997) / 10.0 as amount,
                    case when range % 31 = 0 then 'failed' else 'succeeded' end as status,
                    ['card', 'coupon', 'paypal', 'bank_transfer'][range % 4 + 1] as method,
                    case when range % 53 = 0 then null else 'user' || range || '@example.com' end as email,
                    timestamp '2026-09-06 00:00:00' + to_seconds(range * 30 * 86400 // {ROWS}) as created_at,
                    timestamp '2026-09-06 00:05:00' + to_seconds(range * 30 * 86400 // {ROWS}) as loaded_at
                from range({ROWS})""")
    manifest = {"nodes": {f"model.bench.{n}": _node(n) for n in names}, "sources": {}}
    contracts = [c for name in names for c in _contracts(name)]
    return path, manifest, contracts


def _timed(run, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return times


@pytest.mark.benchmark(group="200 contracts x 20 models x 1M rows")
def test_one_query_per_model_against_one_per_contract(benchmark, wide) -> None:
    path, manifest, contracts = wide
    with DuckDBWarehouse(path) as inner:
        warehouse = CountingWarehouse(inner)
        grouped = benchmark.pedantic(evaluate, args=(warehouse, manifest, contracts, AT),
                                     rounds=ROUNDS, iterations=1, warmup_rounds=1)
        queries_grouped = warehouse.queries // (ROUNDS + 1)

        warehouse.queries = 0
        alone: list = []
        per_contract = _timed(lambda: alone.extend(o for c in contracts
                                                   for o in evaluate(warehouse, manifest, [c], AT)), ROUNDS)
        queries_alone = warehouse.queries // ROUNDS

    assert queries_grouped == MODELS and queries_alone == len(contracts)
    # The same numbers either way (up to the order DuckDB adds floats in): grouping changes the cost only.
    first_pass = alone[:len(contracts)]
    assert [(o.contract_id, o.profile) for o in first_pass] == [(o.contract_id, o.profile) for o in grouped]
    # Distribution contracts carry their profile, not a value (None): approx cannot compare None.
    assert [o.value for o in first_pass] == [None if o.value is None else pytest.approx(o.value, rel=1e-9)
                                             for o in grouped]
    per_model_s = benchmark.stats.stats.median
    per_contract_s = statistics.median(per_contract)
    ratio = per_contract_s / per_model_s
    benchmark.extra_info.update(
        contracts=len(contracts), models=MODELS, rows_per_model=ROWS,
        queries_one_per_model=queries_grouped, queries_one_per_contract=queries_alone,
        one_per_model_s=round(per_model_s, 4), one_per_contract_s=round(per_contract_s, 4),
        ratio=round(ratio, 2),
    )
    print(f"\n{len(contracts)} contracts on {MODELS} models of {ROWS:,} rows: one query per model "
          f"{per_model_s:.3f}s ({queries_grouped} queries), one per contract {per_contract_s:.3f}s "
          f"({queries_alone} queries): {ratio:.1f}x")
