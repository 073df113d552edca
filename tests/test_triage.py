"""Triage: the class an incident gets, the evidence that decided it, and the upstream facts behind it."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pytest

from jobs.attribute.triage import TriageClass, after_attribution, after_verification
from jobs.attribute.upstream import SourceFact, upstream_facts
from jobs.warehouse.duckdb import DuckDBWarehouse

DAY = datetime(2026, 11, 22, tzinfo=timezone.utc)
WINDOW = (DAY, DAY + timedelta(days=1))
QUIET = SourceFact("raw.orders", rows=410, expected=400.0, lower=330.0, upper=480.0, lag_seconds=600)
HALF = SourceFact("raw.payments", rows=205, expected=400.0, lower=330.0, upper=480.0, lag_seconds=900)


@pytest.mark.parametrize("found, kind, evidence", [
    (after_attribution(intentional=["abc1234 (Count refunds net [cairn:intentional])"], revertable=(), upstream=()),
     TriageClass.intentional, "commit abc1234 (Count refunds net [cairn:intentional]) marks the change as intended"),
    (after_attribution(intentional=(), revertable=["5a20dc5 (Only settled methods)"], upstream=()),
     TriageClass.code_change, "suspected: 5a20dc5 (Only settled methods) touches the metric's lineage"),
    (after_attribution(intentional=(), revertable=(), upstream=[QUIET, HALF]),
     TriageClass.data_change, "raw.payments loaded 205 rows, 49% below the 400 expected (band 330–480)"),
    (after_attribution(intentional=(), revertable=(), upstream=[QUIET]),
     TriageClass.unknown, "the 1 sources upstream loaded as usual"),
    (after_attribution(intentional=(), revertable=(), upstream=[SourceFact("raw.plans", note="no loaded_at_field")]),
     TriageClass.unknown, "no source upstream could be measured"),
    (after_verification(verified="reverting 5a20dc5 brings revenue.net_daily from 14,265 to 19,098 on clone x",
                        tried=["5a20dc5"], upstream=()),
     TriageClass.code_change, "proven: reverting 5a20dc5 brings revenue.net_daily from 14,265 to 19,098"),
    (after_verification(verified=None, tried=["5a20dc5", "1b2c3d4"], upstream=[HALF]),
     TriageClass.data_change, "reverting 5a20dc5, 1b2c3d4 did not recover it on a clone"),
])
def test_the_class_and_the_evidence_that_decided_it(found, kind, evidence) -> None:
    assert found.kind is kind
    assert any(line.startswith(evidence) for line in found.evidence), found.evidence
    assert found.detail().kind == kind.value and found.detail().evidence == found.evidence  # as the incident keeps it


def test_a_stale_source_is_a_data_change_even_with_its_usual_rows() -> None:
    stale = SourceFact("raw.orders", rows=400, expected=400.0, lower=330.0, upper=480.0, lag_seconds=30 * 3600,
                       stale="error")
    found = after_attribution(intentional=(), revertable=(), upstream=[stale])
    assert found.kind is TriageClass.data_change and "newest row 1d 6h old (error)" in found.evidence[-1]


# --- the facts, measured on a real warehouse ------------------------------------------------------


def _source(name: str, **config) -> dict:
    return {"unique_id": f"source.shop.raw.{name}", "resource_type": "source", "source_name": "raw", "name": name,
            "identifier": name, "database": "warehouse", "schema": "raw", **config}


FRESHNESS = {"warn_after": {"count": 6, "period": "hour"}, "error_after": {"count": 24, "period": "hour"}}


@pytest.fixture
def warehouse(tmp_path: Path):
    """Five weeks of loads: payments halve on the last day, orders stop a day and a half early."""
    path = tmp_path / "warehouse.duckdb"
    rng = random.Random(3)
    with duckdb.connect(str(path)) as con:
        con.execute("create schema raw")
        for table in ("payments", "orders", "plans"):
            con.execute(f"create table raw.{table} (id integer, _loaded_at timestamp)")
        rows = {"payments": [], "orders": []}
        for back in range(35, -1, -1):
            day = (DAY - timedelta(days=back)).replace(tzinfo=None)
            n = round(400 * (0.6 if day.weekday() >= 5 else 1.0) * rng.gauss(1, 0.05))
            for table in rows:
                count = n // 2 if table == "payments" and back == 0 else n
                stop = 24 if table == "payments" else (0 if back == 0 else 12 if back == 1 else 24)
                rows[table] += [(len(rows[table]) + i, day + timedelta(seconds=rng.uniform(0, stop * 3600)))
                                for i in range(count if stop else 0)]
        for table, values in rows.items():  # through a CSV: executemany takes a minute for 25,000 rows
            csv = tmp_path / f"{table}.csv"
            csv.write_text("".join(f"{i},{at.isoformat(sep=' ')}\n" for i, at in values))
            con.execute(f"insert into raw.{table} select * from read_csv('{csv}', header = false, "
                        "columns = {'id': 'integer', '_loaded_at': 'timestamp'})")
    manifest = {"sources": {
        "source.shop.raw.payments": _source("payments", loaded_at_field="_loaded_at", freshness=FRESHNESS),
        "source.shop.raw.orders": _source("orders", loaded_at_field="_loaded_at", freshness=FRESHNESS),
        "source.shop.raw.plans": _source("plans"),
    }}
    with DuckDBWarehouse(path) as opened:
        yield opened, manifest


def test_upstream_facts_measure_each_source_against_its_own_history(warehouse) -> None:
    opened, manifest = warehouse
    facts = {f.source: f for f in upstream_facts(opened, manifest, list(manifest["sources"]), WINDOW)}
    payments, orders, plans = facts["raw.payments"], facts["raw.orders"], facts["raw.plans"]
    assert payments.moved and payments.rows < payments.lower and payments.stale is None
    assert "below the" in payments.sentence()
    # No row loaded on the day itself, the last one 36 hours before the window's end: stale past error_after.
    assert orders.rows == 0 and orders.stale == "error" and orders.moved
    assert orders.lag_seconds == pytest.approx(36 * 3600, abs=3600)
    assert not plans.moved and plans.rows is None and "no loaded_at_field" in plans.sentence()


def test_a_source_that_cannot_be_read_is_named_not_fatal(warehouse) -> None:
    opened, manifest = warehouse
    manifest["sources"]["source.shop.raw.gone"] = _source("gone", loaded_at_field="_loaded_at")
    [gone] = upstream_facts(opened, manifest, ["source.shop.raw.gone"], WINDOW)
    assert gone.rows is None and "could not be measured" in gone.note


def test_the_owner_of_a_failed_node_is_its_meta_owner_its_sources_or_its_groups():
    from jobs.attribute.triage import owner_of

    manifest = {
        "metadata": {"project_name": "shop"},
        "groups": {"group.shop.finance": {"owner": {"name": "Finance", "email": "fin@shop.example"}}},
        "sources": {"source.shop.raw.orders": {"source_meta": {"owner": "platform@shop.example"}, "meta": {}}},
        "nodes": {
            "model.shop.fct_revenue": {"group": "finance", "config": {"meta": {}}},
            "model.shop.stg_orders": {"config": {"meta": {"owner": "ana@shop.example"}}},
            "test.shop.unique_fct_revenue_day": {"resource_type": "test", "attached_node": "model.shop.fct_revenue"},
            "test.shop.source_unique_raw_orders_id": {"resource_type": "test", "attached_node": None,
                                                      "depends_on": {"nodes": ["source.shop.raw.orders"]}},
            "model.shop.orphan": {},
        },
    }
    assert owner_of(manifest, "model.shop.stg_orders") == "ana@shop.example"
    assert owner_of(manifest, "model.shop.fct_revenue") == "fin@shop.example"  # its group's
    assert owner_of(manifest, "test.shop.unique_fct_revenue_day") == "fin@shop.example"  # what it tests
    assert owner_of(manifest, "test.shop.source_unique_raw_orders_id") == "platform@shop.example"
    assert owner_of(manifest, "model.shop.orphan") is None and owner_of(manifest, "model.shop.gone") is None
