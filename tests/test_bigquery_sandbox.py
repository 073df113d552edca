"""BigQuery sandboxes, the cost guard, cleanup and `cairn doctor`, against a local fake of the REST API."""

from __future__ import annotations

import json
import re
import stat
from datetime import datetime, timedelta, timezone

import pytest
import yaml

from jobs.warehouse.bigquery_doctor import WRITE_PERMISSIONS, doctor, production_tables
from jobs.warehouse.bigquery_sandbox import BigQuerySandbox, gc_sandboxes
from jobs.warehouse.clone_build import (
    MACROS_FILE,
    RelationOutsideSandbox,
    check_relations,
    redirect_macros,
    stateful_sources,
)
from jobs.warehouse.cost_guard import CostRefused, billed_by_dbt, check_budget, estimate
from jobs.warehouse.statement_guard import Dataset
from tests.bigquery_server import FakeBigQuery

UTC = timezone.utc
NOW = datetime(2026, 11, 23, 9, tzinfo=UTC)
LAST_GOOD = datetime(2026, 11, 22, 1, tzinfo=UTC)


@pytest.fixture
def fake():
    with FakeBigQuery() as server:
        server.add_dataset("acme-prod", "analytics", location="EU")
        server.add_table("acme-prod", "analytics", "fct_orders")
        yield server


@pytest.fixture
def box(fake):
    with BigQuerySandbox.create(fake.client(), incident_id=12, location="EU", org="acme",
                                expiration=timedelta(hours=6)) as sandbox:
        yield sandbox


def _node(name: str, schema: str, database: str = "acme-sbx", kind: str = "model", **config) -> dict:
    return {"unique_id": f"{kind}.shop.{name}", "resource_type": kind, "name": name, "alias": name,
            "database": database, "schema": schema, "config": config, "depends_on": {"nodes": []}}


def test_the_sandbox_is_a_labelled_expiring_dataset_in_the_sandbox_project(fake, box) -> None:
    assert re.fullmatch(r"cairn_sbx_12_[0-9a-f]{6}", box.dataset.dataset)
    [insert] = fake.requests
    assert insert.call == "datasets.insert" and insert.path == "/projects/acme-sbx/datasets"
    assert insert.body["datasetReference"] == {"projectId": "acme-sbx", "datasetId": box.dataset.dataset}
    assert insert.body["location"] == "EU"
    assert insert.body["labels"] == {"cairn-incident": "12", "cairn-org": "acme"}
    assert insert.body["defaultTableExpirationMs"] == str(6 * 3600 * 1000)
    assert box.clone_id == f"bigquery:acme-sbx.{box.dataset.dataset}@none"


def test_it_is_dropped_with_its_contents_on_exit_even_after_an_error(fake) -> None:
    with pytest.raises(RuntimeError):
        with BigQuerySandbox.create(fake.client(), incident_id=3, location="EU", org="acme",
                                    expiration=timedelta(days=1)) as sandbox:
            fake.add_table(sandbox.dataset.project, sandbox.dataset.dataset, "leftover")
            raise RuntimeError("boom")
    delete = fake.requests[-1]
    assert delete.call == "datasets.delete" and delete.query["deleteContents"] == ["true"]
    assert delete.path == f"/projects/acme-sbx/datasets/{sandbox.dataset.dataset}"
    assert (sandbox.dataset.project, sandbox.dataset.dataset) not in fake.datasets


def test_clones_hold_the_last_good_state(fake, box) -> None:
    clones = box.clone(box.warehouse(10**10), [("acme-prod", "analytics", "fct_orders")], at=LAST_GOOD,
                       now=NOW, time_travel=timedelta(days=7))
    statement = (f"CREATE TABLE `acme-sbx.{box.dataset.dataset}.fct_orders` CLONE `acme-prod.analytics.fct_orders`"
                 " FOR SYSTEM_TIME AS OF TIMESTAMP '2026-11-22 01:00:00.000000+00'")
    assert [c.statement for c in clones] == [statement] and clones[0].note == ""
    assert fake.queries() == [statement]
    job = next(r for r in reversed(fake.requests) if r.call == "jobs.insert").body
    assert job["configuration"]["labels"] == {"cairn-incident": "12", "cairn-org": "acme"}
    assert job["jobReference"]["location"] == "EU"
    assert box.clone_id == f"bigquery:acme-sbx.{box.dataset.dataset}@2026-11-22T01:00:00+00:00"
    assert ("acme-sbx", box.dataset.dataset, "fct_orders") in fake.tables


def test_outside_time_travel_the_current_state_is_cloned_and_said(fake, box) -> None:
    [clone] = box.clone(box.warehouse(None), [("acme-prod", "analytics", "fct_orders")],
                        at=NOW - timedelta(days=9), now=NOW, time_travel=timedelta(days=7))
    assert "FOR SYSTEM_TIME" not in clone.statement and clone.snapshot is None
    assert "outside the 7-day time-travel window: cloned at its current state" in clone.note
    assert box.clone_id.endswith("@current")


def test_the_generated_profile_points_dbt_at_the_sandbox(box, tmp_path) -> None:
    path = box.write_profile(tmp_path, "shop", production_project="acme-prod", credentials="/etc/cairn/key.json",
                             maximum_bytes_billed=5 * 1024**3, api_endpoint="http://127.0.0.1:9")
    output = yaml.safe_load(path.read_text())["shop"]["outputs"]["cairn_sandbox"]
    assert output == {
        "type": "bigquery", "project": "acme-prod", "execution_project": "acme-sbx",
        "dataset": box.dataset.dataset, "location": "EU", "threads": 4, "maximum_bytes_billed": 5 * 1024**3,
        "priority": "interactive", "job_retries": 1, "job_execution_timeout_seconds": 3600,
        "method": "service-account", "keyfile": "/etc/cairn/key.json", "api_endpoint": "http://127.0.0.1:9",
    }
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    adc = yaml.safe_load(box.write_profile(tmp_path, "shop", production_project="p", credentials="adc",
                                           maximum_bytes_billed=1).read_text())
    assert adc["shop"]["outputs"]["cairn_sandbox"]["method"] == "oauth"


def test_layer_b_refuses_writes_outside_the_sandbox() -> None:
    sandbox = Dataset("acme-sbx", "cairn_sbx_12_abc123")
    manifest = {"nodes": {
        "model.shop.a": _node("a", "cairn_sbx_12_abc123"),
        "model.shop.b": _node("b", "cairn_sbx_12_abc123_marts"),
        "model.shop.c": _node("c", "cairn_sbx_12_abc123", database="acme-prod"),
        "test.shop.t": {**_node("t", "dbt_test__audit", kind="test", store_failures=True),
                        "depends_on": {"nodes": ["model.shop.a"]}},
        "test.shop.u": {**_node("u", "dbt_test__audit", kind="test"), "depends_on": {"nodes": ["model.shop.a"]}},
    }}
    with pytest.raises(RelationOutsideSandbox) as info:
        check_relations(manifest, ["model.shop.a", "model.shop.b", "model.shop.c"], sandbox)
    message = str(info.value)
    assert "model.shop.b -> acme-sbx.cairn_sbx_12_abc123_marts" in message
    assert "model.shop.c -> acme-prod.cairn_sbx_12_abc123" in message
    assert "test.shop.t -> acme-sbx.dbt_test__audit" in message and "test.shop.u" not in message
    manifest["nodes"]["test.shop.t"]["schema"] = "cairn_sbx_12_abc123"
    check_relations(manifest, ["model.shop.a"], sandbox)
    manifest["nodes"]["model.shop.b"].update(schema="cairn_sbx_12_abc123", alias="a")
    with pytest.raises(RelationOutsideSandbox, match="model.shop.a and model.shop.b would both write"):
        check_relations(manifest, ["model.shop.a", "model.shop.b"], sandbox)


def test_writes_are_redirected_unless_the_project_places_them_itself(tmp_path) -> None:
    (tmp_path / "dbt_project.yml").write_text("name: shop\nmacro-paths: [dbt_macros]\n")
    sandbox = Dataset("acme-sbx", "cairn_sbx_12_abc123")
    assert redirect_macros(tmp_path, {"macros": {}}, sandbox) == ["generate_schema_name", "generate_database_name"]
    text = (tmp_path / "dbt_macros" / MACROS_FILE).read_text()
    assert "generate_schema_name(custom_schema_name=none, node=none) -%}cairn_sbx_12_abc123{%- endmacro" in text
    assert "-%}acme-sbx{%- endmacro" in text
    own = {"macros": {"macro.shop.generate_schema_name": {"name": "generate_schema_name", "package_name": "shop"}}}
    assert redirect_macros(tmp_path, own, sandbox) == ["generate_database_name"]
    assert "generate_schema_name" not in (tmp_path / "dbt_macros" / MACROS_FILE).read_text()


def test_only_incremental_models_and_snapshots_need_clones() -> None:
    production = {"nodes": {
        "model.shop.inc": _node("inc", "analytics", database="acme-prod", materialized="incremental"),
        "model.shop.tab": _node("tab", "analytics", database="acme-prod", materialized="table"),
        "snapshot.shop.snap": _node("snap", "snapshots", database="acme-prod", kind="snapshot",
                                    materialized="snapshot"),
    }}
    assert stateful_sources(production, ["model.shop.tab", "model.shop.inc", "snapshot.shop.snap", "model.x.y"],
                            "acme-prod") == [("acme-prod", "analytics", "inc"), ("acme-prod", "snapshots", "snap")]


def test_gc_drops_only_this_orgs_expired_sandboxes(fake) -> None:
    day = 24 * 3600 * 1000
    created = int((NOW - timedelta(days=2)).timestamp() * 1000)
    fake.add_dataset("acme-sbx", "cairn_sbx_1_aaaaaa", labels={"cairn-org": "acme", "cairn-incident": "1"},
                     created_ms=created, expiration_ms=day)
    fake.add_dataset("acme-sbx", "cairn_sbx_2_bbbbbb", labels={"cairn-org": "acme", "cairn-incident": "2"},
                     created_ms=int(NOW.timestamp() * 1000) - 3600_000, expiration_ms=day)
    fake.add_dataset("acme-sbx", "cairn_sbx_3_cccccc", labels={"cairn-org": "other"}, created_ms=created,
                     expiration_ms=day)
    fake.add_dataset("acme-sbx", "cairn_sbx_4_dddddd", created_ms=created, expiration_ms=day)
    fake.add_dataset("acme-sbx", "marketing", labels={"cairn-org": "acme"}, created_ms=created, expiration_ms=day)
    client = fake.client()
    assert gc_sandboxes(client, org="acme", now=NOW, dry_run=True) == ["acme-sbx.cairn_sbx_1_aaaaaa"]
    assert ("acme-sbx", "cairn_sbx_1_aaaaaa") in fake.datasets
    assert gc_sandboxes(client, org="acme", now=NOW) == ["acme-sbx.cairn_sbx_1_aaaaaa"]
    assert sorted(d for p, d in fake.datasets if p == "acme-sbx") == [
        "cairn_sbx_2_bbbbbb", "cairn_sbx_3_cccccc", "cairn_sbx_4_dddddd", "marketing"]
    listing = next(r for r in fake.requests if r.call == "datasets.list")
    assert listing.query["filter"] == ["labels.cairn-org:acme"]
    [delete] = [r for r in fake.requests if r.call == "datasets.delete"]
    assert delete.path == "/projects/acme-sbx/datasets/cairn_sbx_1_aaaaaa" and delete.query["deleteContents"] == ["true"]


def test_cost_guard_sums_dry_runs_and_refuses_over_budget(fake, box) -> None:
    fake.answer(r"stg_orders", [], bytes_processed=40 * 1024**3)
    fake.answer(r"stg_payments", [], bytes_processed=30 * 1024**3)
    compiled = {"nodes": {
        "model.shop.a": {"resource_type": "model", "compiled_code": "select * from `acme-prod.analytics.stg_orders`"},
        "model.shop.b": {"resource_type": "model", "compiled_code": "select * from `acme-prod.analytics.stg_payments`"},
        "test.shop.t": {"resource_type": "test", "compiled_code": "select 1"},
    }}
    warehouse = box.warehouse(50 * 1024**3)
    guess = estimate(warehouse.dry_run, compiled, ["model.shop.a", "model.shop.b", "test.shop.t"])
    assert guess.total == 70 * 1024**3 and set(guess.nodes) == {"model.shop.a", "model.shop.b"}
    assert all(r.dry_run for r in fake.requests if r.call == "jobs.insert")
    with pytest.raises(CostRefused) as info:
        check_budget(guess, 50 * 1024**3, box.clone_id)
    assert "estimates 70.0 GiB (75161927680 bytes), over the budget of 50.0 GiB" in str(info.value)
    assert "model.shop.a 40.0 GiB" in str(info.value)
    assert info.value.audit_data()["estimated_bytes"] == 70 * 1024**3
    check_budget(guess, 70 * 1024**3)


def test_bytes_billed_by_dbt_come_from_run_results(tmp_path) -> None:
    (tmp_path / "run_results.json").write_text(json.dumps({"results": [
        {"adapter_response": {"bytes_billed": 10485760}}, {"adapter_response": {}}, {"adapter_response": None},
        {"adapter_response": {"bytes_billed": 20971520}}]}))
    assert billed_by_dbt(tmp_path) == 31457280 and billed_by_dbt(tmp_path / "none") == 0


def test_doctor_reports_a_production_write_permission(fake) -> None:
    fake.add_dataset("acme-sbx", "placeholder", location="EU")
    manifest = {"nodes": {
        "model.shop.fct_orders": _node("fct_orders", "analytics", database="acme-prod", materialized="incremental"),
        "model.shop.fct_revenue": _node("fct_revenue", "analytics", database="acme-prod", materialized="table"),
        "model.shop.stg_orders": _node("stg_orders", "staging", database="acme-prod", materialized="view"),
        "model.other.elsewhere": _node("elsewhere", "x", database="other-proj", materialized="table"),
    }}
    assert production_tables(manifest, "acme-prod") == [("acme-prod", "analytics", "fct_orders"),
                                                         ("acme-prod", "analytics", "fct_revenue"),
                                                         ("acme-prod", "staging", "stg_orders")]
    findings = doctor(fake.client(), project="acme-prod", location="EU", org="acme", manifest=manifest)
    assert all(f.ok for f in findings), findings
    assert [f.check for f in findings] == [
        "create sandboxes in acme-sbx (EU)", "read acme-prod.analytics.fct_orders",
        "no write to acme-prod.analytics.fct_orders", "no write to acme-prod.analytics.fct_revenue",
        "read acme-prod.staging.stg_orders", "no write to acme-prod.staging.stg_orders"]
    probe = fake.requests[0]
    assert probe.call == "datasets.insert" and probe.body["datasetReference"]["datasetId"].startswith("cairn_sbx_doctor_")
    assert fake.requests[1].call == "datasets.delete"
    iam = next(r for r in fake.requests if r.call == "tables.testIamPermissions")
    assert iam.path == "/projects/acme-prod/datasets/analytics/tables/fct_orders:testIamPermissions"
    assert iam.body == {"permissions": list(WRITE_PERMISSIONS)}

    fake.granted[("acme-prod", "analytics", "fct_orders")] = {"bigquery.tables.updateData"}
    findings = doctor(fake.client(), project="acme-prod", location="EU", org="acme", manifest=manifest)
    [bad] = [f for f in findings if not f.ok]
    assert bad.check == "no write to acme-prod.analytics.fct_orders"
    assert "PRODUCTION IS WRITABLE" in bad.detail and "bigquery.tables.updateData" in bad.detail
