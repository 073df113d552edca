"""`cairn ingest`: real dbt runs of the shop (green, then a broken deploy) recorded on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone

import duckdb
import pytest
import yaml

from bot.messages import BUILD_HELD
from jobs.config import load_config
from jobs.core.clock import Clock
from jobs.core.errors import ArtifactError
from jobs.core.runs import BUILD, FRESHNESS
from jobs.detect.ingest import ingest, ingest_target
from jobs.runs.artifacts import parse_run, read_target
from jobs.runtime import Runtime
from tests.dbt_runs import BROKEN_MODEL, FAILING_TEST, PII_TEST
from tests.deployment import run_cli
from tests.test_cli import documented_json_fields
from tests.test_store import store_url  # noqa: F401 - the SQLite and PostgreSQL stores

NOW = datetime(2026, 10, 1, 7, tzinfo=timezone.utc)


@pytest.fixture
def rt(shop_runs, store_url):  # noqa: F811
    runtime = Runtime(load_config(shop_runs.root / "cairn.yml", env={"CAIRN_DATABASE_URL": store_url}), Clock(NOW))
    yield runtime
    runtime.close()


def node(run, unique_id: str, phase: str = BUILD):
    return next(n for n in run.nodes if n.unique_id.startswith(unique_id) and n.phase == phase)


def test_a_failed_run_is_read_as_dbt_reported_it(shop_runs):
    run = parse_run(read_target(shop_runs.failed))
    raw = json.loads((shop_runs.failed / "run_results.json").read_text())
    assert run.invocation_id == raw["metadata"]["invocation_id"] and run.command == "build"
    assert run.project == "shop" and run.status == "failed"
    assert len([n for n in run.nodes if n.phase == BUILD]) == len(raw["results"])

    broken = node(run, BROKEN_MODEL)
    assert broken.status == "error" and "refund_reason_code" in broken.message
    assert broken.path == "models/staging/stg_refunds.sql" and broken.resource_type == "model"
    assert broken.started_at <= broken.completed_at and broken.execution_time > 0

    with duckdb.connect(str(shop_runs.root / "warehouse.duckdb"), read_only=True) as con:
        duplicated = con.execute("select count(*) from (select order_id from main.stg_order_items "
                                 "group by 1 having count(*) > 1)").fetchone()[0]
    failing = node(run, FAILING_TEST)
    assert failing.status == "fail" and failing.failures == duplicated > 0

    downstream = node(run, "model.shop.int_order_payments")  # reads stg_refunds
    assert downstream.status == "skipped" and not downstream.failed
    emails = node(run, PII_TEST)  # a singular test: its failing rows are emails shared by several customers
    assert emails.status == "fail" and emails.failures > 0 and "count(*) > 1" in emails.compiled_code
    assert {n.unique_id for n in run.failures if n.phase == BUILD} == {BROKEN_MODEL, failing.unique_id, emails.unique_id}

    sources = json.loads((shop_runs.failed / "sources.json").read_text())["results"]
    freshness = {n.unique_id: n for n in run.nodes if n.phase == FRESHNESS}
    assert {r["unique_id"]: r["status"] for r in sources} == {k: n.status for k, n in freshness.items()}
    orders = freshness["source.shop.raw.orders"]
    assert orders.details["criteria"]["error_after"] == {"count": 24, "period": "hour"}
    assert orders.path == "models/staging/_sources.yml" and orders.details["max_loaded_at"]


def test_a_green_run_has_no_failures_and_no_freshness(shop_runs):
    run = parse_run(read_target(shop_runs.green))
    assert run.status == "success" and not run.failures
    assert run.counts(FRESHNESS) == {} and run.counts().get("pass", 0) > 0


def test_ingest_records_every_node_and_the_deployed_sha(rt, shop_runs):
    failed = ingest_target(rt, shop_runs.failed)
    green = ingest_target(rt, shop_runs.green)
    assert failed.new and green.new
    # The green deploy recorded its SHA in the run (DBT_ENV_CUSTOM_ENV_CAIRN_SHA); the broken one did not, so
    # the configured branch's last commit before dbt wrote the manifest stands in.
    assert (green.run.sha, green.run.sha_source) == (shop_runs.green_sha, "run environment")
    assert (failed.run.sha, failed.run.sha_source) == (shop_runs.failed_sha, "main at manifest time")

    stored = rt.store.run(failed.run.invocation_id[:8])
    assert stored == failed.run and stored.ingested_at == NOW
    assert stored.nodes == parse_run(read_target(shop_runs.failed)).nodes  # every field, through the database
    # newest first by when dbt ran them, not when they were ingested
    assert [r.invocation_id for r in rt.store.runs()] == [failed.run.invocation_id, green.run.invocation_id]
    events = [e for e in rt.store.audit_events() if e.name == "run.ingested"]
    assert [e.data["invocation_id"] for e in events] == [failed.run.invocation_id, green.run.invocation_id]
    assert events[0].data["status"] == "failed" and BROKEN_MODEL in events[0].data["failures"]


def test_a_re_ingested_run_changes_nothing(rt, shop_runs, tmp_path):
    first = ingest_target(rt, shop_runs.failed, sha=shop_runs.failed_sha)
    assert first.run.sha_source == "given"
    rt.clock.set(NOW.replace(hour=9))
    copy = shutil.copytree(shop_runs.failed, tmp_path / "again")  # the same run, delivered twice
    again = ingest_target(rt, copy, sha="0" * 40)
    assert not again.new and again.run == first.run and again.run.ingested_at == NOW
    assert len(rt.store.runs()) == 1
    assert [e.name for e in rt.store.audit_events() if e.name.startswith("run.")] == ["run.ingested",
                                                                                      "run.incidents_recorded"]
    # Its failures opened their incidents once (tests/test_run_incidents.py); delivered again, nothing more.
    opened = [e for e in rt.store.audit_events() if e.name == "incident.opened"]
    assert len(opened) == len(first.run.failures) == len(first.incidents.opened) and not again.incidents.moved
    # A racing second writer is refused by the database and gets the stored run back.
    run, new = rt.store.record_run(parse_run(read_target(copy)))
    assert not new and run == first.run


def test_a_run_without_sources_json_has_only_build_results(rt, shop_runs, tmp_path):
    target = shutil.copytree(shop_runs.failed, tmp_path / "target")
    (target / "sources.json").unlink()
    done = ingest(rt, read_target(target))
    assert done.run.counts(FRESHNESS) == {} and done.run.failures


@pytest.mark.parametrize("name, edit, error", [
    ("run_results.json", lambda d: "{not json", "<dir>/run_results.json: not valid JSON (line 1, column 2)"),
    ("run_results.json", lambda d: "[]", "<dir>/run_results.json: expected a JSON object, got list"),
    ("run_results.json", lambda d: {**d, "metadata": None}, "<dir>/run_results.json: metadata: missing"),
    ("run_results.json", lambda d: {**d, "metadata": {**d["metadata"], "invocation_id": ""}},
     "<dir>/run_results.json: metadata.invocation_id: expected a non-empty string, got ''"),
    ("run_results.json", lambda d: {**d, "metadata": {**d["metadata"], "generated_at": "yesterday"}},
     "<dir>/run_results.json: metadata.generated_at: 'yesterday' is not an ISO 8601 time"),
    ("run_results.json", lambda d: {**d, "results": {}}, "<dir>/run_results.json: results: expected a list, got dict"),
    ("run_results.json", lambda d: {**d, "results": [{**d["results"][0], "status": None}]},
     "<dir>/run_results.json: results[0].status: missing"),
    ("run_results.json", lambda d: {**d, "results": [{**d["results"][0], "timing": [{"started_at": 5}]}]},
     "<dir>/run_results.json: results[0].timing[0].started_at: 5 is not an ISO 8601 time"),
    ("manifest.json", lambda d: {**d, "metadata": "v12"}, "<dir>/manifest.json: metadata: expected an object, got str"),
    ("sources.json", lambda d: {**d, "results": [{"status": "pass"}]}, "<dir>/sources.json: results[0].unique_id: missing"),
])
def test_bad_artifacts_are_refused_naming_the_file_and_field(rt, shop_runs, tmp_path, name, edit, error):
    target = shutil.copytree(shop_runs.failed, tmp_path / "target")
    changed = edit(json.loads((target / name).read_text()))
    (target / name).write_text(changed if isinstance(changed, str) else json.dumps(changed))
    with pytest.raises(ArtifactError) as raised:
        ingest_target(rt, target)
    assert str(raised.value).replace(str(target), "<dir>") == error
    assert rt.store.runs() == []


def test_cairn_ingest_and_runs_on_the_command_line(shop_runs, tmp_path):
    env = {"CAIRN_DATABASE_URL": f"sqlite:///{tmp_path}/cairn.db"}
    config = str(shop_runs.root / "cairn.yml")
    first = run_cli("--config", config, "ingest", str(shop_runs.failed), env=env)
    assert first.exit_code == 0, first.stderr
    head, *failures = first.stdout.splitlines()
    assert "failed" in head and shop_runs.failed_sha[:7] in head and "1 error, 2 fail" in head
    assert any(BROKEN_MODEL in line and "refund_reason_code" in line for line in failures)
    assert any(FAILING_TEST in line and "failing rows" in line for line in failures)

    again = run_cli("--config", config, "ingest", str(shop_runs.failed), env=env)
    assert again.exit_code == 0 and "already recorded; nothing changed" in again.stdout

    assert run_cli("--config", config, "ingest", str(shop_runs.green), env=env).exit_code == 0
    listed = run_cli("--config", config, "runs", env=env)
    assert listed.exit_code == 0
    lines = listed.stdout.splitlines()
    assert "failed" in lines[0] and BROKEN_MODEL in lines[1] and "success" in lines[-1]

    as_json = json.loads(run_cli("--config", config, "runs", "--json", "--limit", "1", env=env).stdout)
    assert [r["status"] for r in as_json] == ["failed"] and as_json[0]["sha"] == shop_runs.failed_sha
    assert set(documented_json_fields("`cairn runs --json`")) <= set(as_json[0])
    failing = sorted(n["unique_id"] for n in as_json[0]["nodes"] if n["status"] == "fail")
    assert [uid.rsplit(".", 1)[0] if uid.count(".") > 2 else uid for uid in failing] == [PII_TEST, FAILING_TEST]

    missing = run_cli("--config", config, "ingest", str(tmp_path / "nowhere"), env=env)
    assert missing.exit_code == 1 and "no such directory" in missing.stderr and "Traceback" not in missing.stderr


def test_cairn_runs_with_nothing_recorded(shop_runs, tmp_path):
    listed = run_cli("--config", str(shop_runs.root / "cairn.yml"), "runs",
                     env={"CAIRN_DATABASE_URL": f"sqlite:///{tmp_path}/cairn.db"})
    assert listed.exit_code == 0 and "No production runs recorded yet" in listed.stdout


def test_with_schedule_build_the_clock_builds_production_and_ingests_the_run(shop_runs, tmp_path):
    root = shutil.copytree(shop_runs.root, tmp_path / "shop", ignore=shutil.ignore_patterns(
        "target", "artifacts", "logs", ".cairn"))
    marts = root / "models" / "marts" / "_marts.yml"  # no contracts: this tick's check has nothing to measure
    declared = yaml.safe_load(marts.read_text())
    for model in declared["models"]:
        model.get("config", {}).get("meta", {}).pop("cairn", None)
    marts.write_text(yaml.safe_dump(declared))
    (root / "cairn.yml").write_text("project: .\nprofiles_dir: .\nrepo: .\nbranch: main\nschedule: {build: true}\n")
    env = {"CAIRN_DATABASE_URL": f"sqlite:///{tmp_path}/cairn.db", "CAIRN_DUCKDB_PATH": str(root / "warehouse.duckdb")}
    assert run_cli("--config", str(root / "cairn.yml"), "kill", "quarter close", env=env).exit_code == 0
    held = run_cli("--config", str(root / "cairn.yml"), "scheduler", "--once", env=env)
    assert held.exit_code == 0 and BUILD_HELD in held.stdout and not (root / ".cairn" / "production-run").exists()
    assert run_cli("--config", str(root / "cairn.yml"), "unkill", env=env).exit_code == 0
    ticked = run_cli("--config", str(root / "cairn.yml"), "scheduler", "--once", env=env)
    assert ticked.exit_code == 0, ticked.stderr
    [head] = [line for line in ticked.stdout.splitlines() if "(run environment)" in line]  # dbt prints errors too
    assert " failed " in head and f"✗ {BROKEN_MODEL}" in ticked.stdout and "check done" in ticked.stdout
    assert (root / ".cairn" / "production-run" / "sources.json").is_file()

    runtime = Runtime(load_config(root / "cairn.yml", env=env), Clock(NOW))
    try:
        [run] = runtime.store.runs()
    finally:
        runtime.close()
    # The deployed SHA travels with the run itself, as a deploy should pass it (docs/runs.md).
    assert (run.source, run.sha, run.sha_source) == ("scheduler", shop_runs.failed_sha, "run environment")
    assert run.counts(FRESHNESS) and {BROKEN_MODEL} <= {n.unique_id for n in run.failures}
