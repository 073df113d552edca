"""dbt-bigquery's insert_overwrite scripts, rendered by real dbt, through the request guard to the fake API.

A one-model project builds an incremental `events` table partitioned by `day` whose previous build
is already in the sandbox, so dbt takes the incremental path and sends its multi-statement script.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from jobs.warehouse.request_guard import guarded
from tests.bigquery_server import FakeBigQuery
from tests.test_bigquery_guard import DYNAMIC_SCRIPT, SANDBOX, SANDBOX_EVENTS, STATIC_SCRIPT

os.environ["DBT_SEND_ANONYMOUS_USAGE_STATS"] = "false"

# The model the scripts in tests/test_bigquery_guard.py were rendered from.
EVENTS_SQL = """{{ config(materialized='incremental', incremental_strategy='insert_overwrite',
          partition_by={'field': 'day', 'data_type': 'date'}, partitions=var('partitions', none),
          on_schema_change=var('on_schema_change', 'ignore')) }}
select day, count(*) as n from `acme-prod`.`analytics`.`raw_events`
{% if is_incremental() %}where day >= {{ var('since', '_dbt_max_partition') }}{% endif %}
group by day
"""
COLUMNS = [{"name": "day", "type": "DATE", "mode": "NULLABLE"}, {"name": "n", "type": "INTEGER", "mode": "NULLABLE"}]
# Static partitions; on_schema_change makes dbt create `__dbt_tmp` in a job of its own first, which
# would be a script too if it declared _dbt_max_partition: one the fake could not carry out.
STATIC = ("{partitions: ['current_date()', 'date_sub(current_date(), interval 1 day)'], "
          "on_schema_change: append_new_columns, since: 'date_sub(current_date(), interval 1 day)'}")


@pytest.fixture
def fake():
    with FakeBigQuery() as server:
        server.add_dataset("acme-prod", "analytics", location="EU")
        server.add_dataset(SANDBOX.project, SANDBOX.dataset, location="EU")
        for project, dataset in (("acme-prod", "analytics"), (SANDBOX.project, SANDBOX.dataset)):
            server.add_table(project, dataset, "events", schema=COLUMNS)  # built before: dbt merges into it
        yield server


def _build(tmp_path: Path, fake: FakeBigQuery, *, target: str = "sandbox", dbt_vars: str = "{}"):
    """`dbt run` of the one model with Cairn's request guard on, as in a sandbox build."""
    from dbt.cli.main import dbtRunner

    (tmp_path / "models").mkdir(exist_ok=True)
    (tmp_path / "models" / "events.sql").write_text(EVENTS_SQL)
    (tmp_path / "dbt_project.yml").write_text(yaml.safe_dump({
        "name": "io", "version": "1.0.0", "config-version": 2, "profile": "io", "model-paths": ["models"]}))
    output = {"type": "bigquery", "method": "oauth-secrets", "token": "anonymous", "location": "EU",
              "threads": 1, "api_endpoint": fake.endpoint}
    (tmp_path / "profiles.yml").write_text(yaml.safe_dump({"io": {"target": "sandbox", "outputs": {
        "sandbox": {**output, "project": SANDBOX.project, "dataset": SANDBOX.dataset},
        "prod": {**output, "project": "acme-prod", "dataset": "analytics"}}}}))
    with guarded(SANDBOX):
        outcome = dbtRunner().invoke([
            "run", "--project-dir", str(tmp_path), "--profiles-dir", str(tmp_path), "--target", target,
            "--vars", dbt_vars, "--target-path", str(tmp_path / "target"), "--log-path", str(tmp_path / "logs"),
            "--quiet"])
    assert outcome.exception is None
    [result] = outcome.result
    return result


def _script(sql: str) -> str:
    """dbt's script without its query comment, in single spaces, with one name for the `__dbt_tmp` table."""
    sql = re.sub(r"__dbt_tmp\d+", "__dbt_tmp", sql.split("*/", 1)[1])
    return " ".join(sql.split())


@pytest.mark.slow
@pytest.mark.parametrize("dbt_vars, expected", [("{}", DYNAMIC_SCRIPT), (STATIC, STATIC_SCRIPT)],
                         ids=["dynamic", "static"])
def test_dbt_bigquery_insert_overwrite_scripts_reach_the_sandbox(tmp_path, fake, dbt_vars, expected) -> None:
    result = _build(tmp_path, fake, dbt_vars=dbt_vars)
    assert result.status == "success", result.message
    assert result.adapter_response["code"] == "SCRIPT"  # the fake reports it as BigQuery does
    sent = fake.queries(dry_run=False)[-1]
    assert _script(sent) == _script("*/" + expected.format(target=SANDBOX_EVENTS))


@pytest.mark.slow
def test_a_script_merging_into_production_never_leaves_the_process(tmp_path, fake) -> None:
    result = _build(tmp_path, fake, target="prod")
    assert result.status == "error"
    assert "refused before sending" in result.message and "MERGE acme-prod.analytics.events" in result.message
    assert not [q for q in fake.queries() if re.search(r"merge into `acme-prod`", q, re.I)]
