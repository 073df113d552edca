"""Layer (a): every statement Cairn sends is parsed; a write outside the sandbox never leaves the process."""

from __future__ import annotations

import json

import pytest

from jobs.warehouse.bigquery import BigQueryWarehouse
from jobs.warehouse.request_guard import check_request, guarded
from jobs.warehouse.statement_guard import Dataset, ProductionWriteRefused, check, written_targets
from tests.bigquery_server import FakeBigQuery

SANDBOX = Dataset("acme-sbx", "cairn_sbx_12_a1b2c3")
JOB_PROJECT = "acme-sbx"  # where jobs run: an unqualified dataset resolves here

# Production names in every spelling BigQuery accepts, and the statements that would write them.
PRODUCTION_WRITES = [
    # quoted whole, quoted per part, unquoted
    "CREATE OR REPLACE TABLE `acme-prod.analytics.fct_revenue` AS SELECT 1 AS x",
    "CREATE TABLE `acme-prod`.`analytics`.`fct_revenue` (x INT64)",
    "INSERT INTO `acme-prod`.analytics.fct_revenue (x) VALUES (1)",
    "UPDATE `acme-prod.analytics.fct_revenue` SET x = 1 WHERE TRUE",
    "DELETE FROM `acme-prod.analytics`.fct_revenue WHERE TRUE",
    "MERGE `acme-prod.analytics.fct_revenue` T USING (SELECT 1 AS x) S ON FALSE WHEN NOT MATCHED THEN INSERT ROW",
    "TRUNCATE TABLE `acme-prod.analytics.fct_revenue`",
    "DROP TABLE IF EXISTS `acme-prod.analytics.fct_revenue`",
    "DROP VIEW `acme-prod.analytics.stg_orders`",
    "ALTER TABLE `acme-prod.analytics.fct_revenue` ADD COLUMN y INT64",
    "ALTER TABLE `acme-prod.analytics.fct_revenue` RENAME TO fct_revenue_old",
    "CREATE VIEW `acme-prod.analytics.v` AS SELECT 1 AS x",
    "CREATE FUNCTION `acme-prod.analytics.f`(x INT64) AS (x)",
    "LOAD DATA INTO `acme-prod.analytics.fct_revenue` FROM FILES (format = 'CSV', uris = ['gs://b/x.csv'])",
    # default project: the dataset alone resolves in the job's project, outside the sandbox dataset
    "INSERT INTO analytics.fct_revenue (x) VALUES (1)",
    "DROP TABLE analytics.fct_revenue",
    "CREATE TABLE acme_sbx_other.t AS SELECT 1 AS x",
    # cross-project: the sandbox's dataset name in another project is not the sandbox
    "CREATE TABLE `acme-prod.cairn_sbx_12_a1b2c3.t` AS SELECT 1 AS x",
    "DROP SCHEMA `acme-prod.analytics` CASCADE",
    "DROP SCHEMA analytics",
    "CREATE SCHEMA `acme-prod`.cairn_sbx_12_a1b2c3",
    # a clone into production, with and without time travel
    "CREATE TABLE `acme-prod.analytics.fct_revenue` CLONE `acme-sbx.cairn_sbx_12_a1b2c3.fct_revenue`",
    "CREATE OR REPLACE TABLE `acme-prod.analytics.fct_orders` CLONE `acme-prod.analytics.fct_orders` "
    "FOR SYSTEM_TIME AS OF TIMESTAMP '2026-11-22 01:00:00+00'",
    # scripts: one bad statement among good ones
    "SELECT 1; DELETE FROM `acme-prod.analytics.fct_revenue` WHERE TRUE",
    "CREATE TABLE `acme-sbx.cairn_sbx_12_a1b2c3.t` CLONE `acme-prod.analytics.t` FOR SYSTEM_TIME AS OF "
    "TIMESTAMP '2026-11-22 01:00:00+00'; DROP TABLE `acme-prod.analytics.t`",
    "CREATE TEMP TABLE x AS SELECT 1 AS y; INSERT INTO `acme-prod.analytics.t` SELECT * FROM x",
    # an unqualified table resolves against a default dataset Cairn never sets
    "DROP TABLE fct_revenue",
    # statements the guard cannot see into are refused whole
    "EXECUTE IMMEDIATE 'DROP TABLE `acme-prod.analytics.fct_revenue`'",
    "CALL `acme-prod.analytics.cleanup`()",
    "BEGIN DROP TABLE `acme-prod.analytics.fct_revenue`; END",
    "EXPORT DATA OPTIONS (uri = 'gs://b/*.csv', format = 'CSV') AS SELECT 1 AS x",
    "SET @@dataset_id = 'analytics'",
    "DECLARE x INT64; SET @@dataset_project_id = 'acme-prod'",
    "ALTER SCHEMA analytics SET OPTIONS (description = 'x')",
    "CREATE SNAPSHOT TABLE `acme-prod.analytics.snap` CLONE `acme-prod.analytics.fct_revenue`",
    "CREATE TABLE `acme-sbx.cairn_sbx_12_a1b2c3.t` CLONE `acme-prod.analytics.t` FOR SYSTEM_TIME AS OF "
    "(SELECT 1); DROP TABLE x",
]

SANDBOX_WRITES = {
    "CREATE TABLE `acme-sbx.cairn_sbx_12_a1b2c3.fct_orders` CLONE `acme-prod.analytics.fct_orders` "
    "FOR SYSTEM_TIME AS OF TIMESTAMP '2026-11-22 01:00:00.000000+00'":
        ["CREATE TABLE acme-sbx.cairn_sbx_12_a1b2c3.fct_orders"],
    "CREATE OR REPLACE TABLE `acme-sbx`.`cairn_sbx_12_a1b2c3`.`fct_revenue` AS "
    "SELECT * FROM `acme-prod.analytics.stg_orders`":
        ["CREATE TABLE acme-sbx.cairn_sbx_12_a1b2c3.fct_revenue"],
    "INSERT INTO cairn_sbx_12_a1b2c3.t (x) VALUES (1)": ["INSERT acme-sbx.cairn_sbx_12_a1b2c3.t"],
    "MERGE `ACME-SBX.cairn_sbx_12_a1b2c3.t` T USING `acme-prod.analytics.t` S ON T.id = S.id "
    "WHEN MATCHED THEN UPDATE SET x = S.x": ["MERGE ACME-SBX.cairn_sbx_12_a1b2c3.t"],
    "DROP SCHEMA `acme-sbx.cairn_sbx_12_a1b2c3` CASCADE": ["DROP SCHEMA acme-sbx.cairn_sbx_12_a1b2c3"],
    "CREATE TEMP TABLE x AS SELECT 1 AS y": ["CREATE TABLE x"],
    "CREATE TEMP TABLE x AS SELECT 1 AS y; DROP TABLE IF EXISTS x": ["CREATE TABLE x", "DROP TABLE x"],
    "DECLARE x INT64 DEFAULT 1": [],
    "DECLARE n INT64; SET n = (SELECT COUNT(*) FROM `acme-prod.analytics.t`); SET (a, b) = (1, 2)": [],
    "SELECT 1; -- a comment after the last semicolon\n": [],
    "SELECT * FROM `acme-prod.analytics.fct_revenue` FOR SYSTEM_TIME AS OF TIMESTAMP '2026-11-22'": [],
    "WITH a AS (SELECT 1 AS x) SELECT * FROM a UNION ALL SELECT 2": [],
}


@pytest.mark.parametrize("sql", PRODUCTION_WRITES)
def test_every_production_write_is_refused(sql) -> None:
    with pytest.raises(ProductionWriteRefused, match="refused before sending"):
        check(sql, default_project=JOB_PROJECT, sandbox=SANDBOX)


@pytest.mark.parametrize("sql", PRODUCTION_WRITES)
def test_refused_statements_never_leave_the_process(sql) -> None:
    with FakeBigQuery() as fake:
        warehouse = BigQueryWarehouse(fake.client(), sandbox=SANDBOX)
        with pytest.raises(ProductionWriteRefused):
            warehouse.execute(sql)
        assert fake.requests == []


@pytest.mark.parametrize("sql, targets", list(SANDBOX_WRITES.items()))
def test_writes_inside_the_sandbox_pass(sql, targets) -> None:
    found = check(sql, default_project=JOB_PROJECT, sandbox=SANDBOX)
    assert [f"{t.statement} {t}" for t in found] == targets


def test_with_no_sandbox_nothing_may_be_written() -> None:
    with pytest.raises(ProductionWriteRefused, match="no dataset"):
        check("INSERT INTO `acme-sbx.cairn_sbx_12_a1b2c3.t` (x) VALUES (1)", default_project=JOB_PROJECT,
              sandbox=None)
    assert check("SELECT COUNT(*) FROM `acme-prod.analytics.t`", default_project=JOB_PROJECT, sandbox=None) == []


def test_the_refusal_names_each_target_and_the_sandbox() -> None:
    with pytest.raises(ProductionWriteRefused) as info:
        check("DROP TABLE `acme-prod.analytics.a`, analytics.b", default_project=JOB_PROJECT, sandbox=SANDBOX)
    message = str(info.value)
    assert "DROP TABLE acme-prod.analytics.a" in message and "DROP TABLE acme-sbx.analytics.b" in message
    assert "sandbox dataset acme-sbx.cairn_sbx_12_a1b2c3" in message


def test_unreadable_sql_is_refused() -> None:
    with pytest.raises(ProductionWriteRefused, match="not BigQuery SQL Cairn can read"):
        written_targets("SELECT 'unterminated", JOB_PROJECT)


# --- scripts: dbt-bigquery's insert_overwrite builds -------------------------------------------

# dbt-bigquery 1.11.3 (dbt-core 1.11.16) rendered these for an incremental model `events`
# partitioned by `day`; tests/test_bigquery_scripts.py renders them afresh through real dbt and
# compares. Only dbt's query comment, blank lines and trailing spaces are dropped, and the merge
# target is left to fill in.
# Dynamic partitions: the model's rows go to a real `__dbt_tmp` table beside the target.
DYNAMIC_SCRIPT = """
    -- generated script to merge partitions into `acme-sbx`.`cairn_sbx_12_a1b2c3`.`events`
      declare dbt_partitions_for_replacement array<date>;
       -- 1. create a temp table with model data
        declare _dbt_max_partition date default (
      select max(day) from `acme-sbx`.`cairn_sbx_12_a1b2c3`.`events`
      where day is not null
    );
    create or replace table `acme-sbx`.`cairn_sbx_12_a1b2c3`.`events__dbt_tmp134123295387`
    partition by day
    OPTIONS(
      expiration_timestamp=TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL 12 hour)
    )
    as (
select day, count(*) as n from `acme-prod`.`analytics`.`raw_events`
where day >= _dbt_max_partition
group by day
    );
      -- 2. define partitions to update
      set (dbt_partitions_for_replacement) = (
          select as struct
              -- IGNORE NULLS: this needs to be aligned to _dbt_max_partition, which ignores null
              array_agg(distinct date(day) IGNORE NULLS)
          from `acme-sbx`.`cairn_sbx_12_a1b2c3`.`events__dbt_tmp134123295387`
      );
      -- 3. run the merge statement
    merge into {target} as DBT_INTERNAL_DEST
        using (
        select
        * from `acme-sbx`.`cairn_sbx_12_a1b2c3`.`events__dbt_tmp134123295387`
      ) as DBT_INTERNAL_SOURCE
        on FALSE
    when not matched by source
         and date(DBT_INTERNAL_DEST.day) in unnest(dbt_partitions_for_replacement)
        then delete
    when not matched then insert
        (`day`, `n`)
    values
        (`day`, `n`)
;
      -- 4. clean up the temp table
      drop table if exists `acme-sbx`.`cairn_sbx_12_a1b2c3`.`events__dbt_tmp134123295387`
"""
# Static `partitions=[...]` with on_schema_change set: the `__dbt_tmp` table was made by an earlier
# job; note dbt's `;-- 2.`, which sqlglot reads as an empty statement holding a comment.
STATIC_SCRIPT = """
        -- 1. run the merge statement
    merge into {target} as DBT_INTERNAL_DEST
        using (
      select
        * from `acme-sbx`.`cairn_sbx_12_a1b2c3`.`events__dbt_tmp134123485165`
  ) as DBT_INTERNAL_SOURCE
        on FALSE
    when not matched by source
         and date(dbt_internal_dest.day) in (
                current_date(), date_sub(current_date(), interval 1 day)
            )
        then delete
    when not matched then insert
        (`day`, `n`)
    values
        (`day`, `n`)
;-- 2. clean up the temp table
        drop table if exists `acme-sbx`.`cairn_sbx_12_a1b2c3`.`events__dbt_tmp134123485165`;
"""
# The shape older dbt-bigquery versions sent (and an overridden macro still may): a script temp table.
TEMP_TABLE_SCRIPT = """
-- generated script to merge partitions into `acme-sbx`.`cairn_sbx_12_a1b2c3`.`events`
declare dbt_partitions_for_replacement array<date>;
create temporary table `events__dbt_tmp` as (select day, count(*) as n from `acme-prod`.`analytics`.`raw_events` group by day);
set (dbt_partitions_for_replacement) = (select as struct array_agg(distinct date(`day`) IGNORE NULLS) from `events__dbt_tmp`);
merge into {target} as DBT_INTERNAL_DEST using (select * from `events__dbt_tmp`) as DBT_INTERNAL_SOURCE on FALSE
  when not matched by source and date(DBT_INTERNAL_DEST.day) in unnest(dbt_partitions_for_replacement) then delete
  when not matched then insert (`day`, `n`) values (`day`, `n`);
drop table if exists `events__dbt_tmp`;
"""
SANDBOX_EVENTS = "`acme-sbx`.`cairn_sbx_12_a1b2c3`.`events`"
TMP = "acme-sbx.cairn_sbx_12_a1b2c3.events__dbt_tmp"
SCRIPTS = {
    "dynamic": (DYNAMIC_SCRIPT, [f"CREATE TABLE {TMP}134123295387", "MERGE acme-sbx.cairn_sbx_12_a1b2c3.events",
                                 f"DROP TABLE {TMP}134123295387"]),
    "static": (STATIC_SCRIPT, ["MERGE acme-sbx.cairn_sbx_12_a1b2c3.events", f"DROP TABLE {TMP}134123485165"]),
    "temp table": (TEMP_TABLE_SCRIPT, ["CREATE TABLE events__dbt_tmp", "MERGE acme-sbx.cairn_sbx_12_a1b2c3.events",
                                       "DROP TABLE events__dbt_tmp"]),
}
PRODUCTION_EVENTS = {  # the merge target in production, spelled every way BigQuery reads it
    "`acme-prod`.`analytics`.`events`": "acme-prod.analytics.events",
    "`acme-prod.analytics.events`": "acme-prod.analytics.events",
    "acme-prod.analytics.events": "acme-prod.analytics.events",
    "`acme-prod`.analytics.events": "acme-prod.analytics.events",
    "analytics.events": "acme-sbx.analytics.events",  # the job's project: still not the sandbox dataset
    "`acme-prod.cairn_sbx_12_a1b2c3.events`": "acme-prod.cairn_sbx_12_a1b2c3.events",
}
UNREADABLE = {  # statements the guard cannot see into, each put into an otherwise allowed script
    "EXECUTE": "EXECUTE IMMEDIATE 'DROP TABLE `acme-prod.analytics.events`';",
    "CALL": "CALL `acme-sbx.cairn_sbx_12_a1b2c3.cleanup`();",
    "BEGIN": "BEGIN\n  SELECT 1;\nEND;",
    "IF": "IF TRUE THEN\n  SELECT 1;\nEND IF;",
    "LOOP": "LOOP\n  LEAVE;\nEND LOOP;",
    "EXPORT": "EXPORT DATA OPTIONS (uri = 'gs://b/*.csv', format = 'CSV') AS SELECT 1 AS x;",
    "SET": "SET @@dataset_id = 'analytics';",
}


@pytest.mark.parametrize("script, targets", SCRIPTS.values(), ids=SCRIPTS)
def test_insert_overwrite_scripts_into_the_sandbox_pass(script, targets) -> None:
    found = check(script.format(target=SANDBOX_EVENTS), default_project=JOB_PROJECT, sandbox=SANDBOX)
    assert [f"{t.statement} {t}" for t in found] == targets


@pytest.mark.parametrize("target", PRODUCTION_EVENTS)
@pytest.mark.parametrize("script", [s for s, _ in SCRIPTS.values()], ids=SCRIPTS)
def test_insert_overwrite_scripts_merging_into_production_are_refused(script, target) -> None:
    with pytest.raises(ProductionWriteRefused) as info:
        check(script.format(target=target), default_project=JOB_PROJECT, sandbox=SANDBOX)
    assert f"MERGE {PRODUCTION_EVENTS[target]} writes outside sandbox dataset" in str(info.value)


def test_an_insert_overwrite_script_writes_nothing_on_a_read_only_connection() -> None:
    with pytest.raises(ProductionWriteRefused, match="no dataset"):
        check(DYNAMIC_SCRIPT.format(target=SANDBOX_EVENTS), default_project=JOB_PROJECT, sandbox=None)


@pytest.mark.parametrize("verb, statement", UNREADABLE.items(), ids=UNREADABLE)
def test_one_unreadable_statement_refuses_the_whole_script(verb, statement) -> None:
    script = DYNAMIC_SCRIPT.format(target=SANDBOX_EVENTS).replace("array<date>;", f"array<date>;\n{statement}", 1)
    with pytest.raises(ProductionWriteRefused) as info:
        check(script, default_project=JOB_PROJECT, sandbox=SANDBOX)
    assert f"Cairn does not send {verb} statements" in str(info.value)
    assert "Nothing in this request was sent" in str(info.value)


@pytest.mark.parametrize("sql", [
    "DROP TABLE IF EXISTS events__dbt_tmp",  # no temp table of that name
    "DROP TEMP TABLE events__dbt_tmp",  # saying TEMP does not make it one
    "DROP TABLE events__dbt_tmp; CREATE TEMP TABLE events__dbt_tmp AS SELECT 1 AS x",  # not yet created
    "CREATE TABLE `acme-sbx.cairn_sbx_12_a1b2c3.events__dbt_tmp` AS SELECT 1 AS x; DROP TABLE events__dbt_tmp",
    "CREATE TEMP TABLE t AS SELECT 1 AS x; DROP TABLE t; DROP TABLE IF EXISTS t",  # already dropped
    "CREATE TEMP TABLE t AS SELECT 1 AS x; DROP VIEW t",
    "CREATE TEMP FUNCTION t() AS (1); DROP TABLE t",
    "CREATE TEMP TABLE t AS SELECT 1 AS x; INSERT INTO t SELECT 2",  # only its DROP is let through
])
def test_a_bare_name_the_script_did_not_create_as_a_temp_table_is_checked_like_any_name(sql) -> None:
    with pytest.raises(ProductionWriteRefused, match="is not a dataset-qualified name"):
        check(sql, default_project=JOB_PROJECT, sandbox=SANDBOX)


# --- the same guard under every API request a sandbox build makes (dbt-bigquery's included) -----

API = "https://bigquery.googleapis.com/bigquery/v2/projects"
SBX = f"{API}/acme-sbx/datasets/cairn_sbx_12_a1b2c3"


def _job(sql: str, **query) -> dict:
    return {"jobReference": {"projectId": "acme-sbx"}, "configuration": {"query": {"query": sql, **query}}}


REQUESTS_REFUSED = [
    ("POST", f"{API}/acme-sbx/jobs", _job("DROP TABLE `acme-prod.analytics.fct_revenue`")),
    ("POST", f"{API}/acme-sbx/queries", {"query": "DELETE FROM analytics.fct_revenue WHERE TRUE"}),
    ("POST", f"{API}/acme-sbx/jobs", _job("SELECT 1", destinationTable={
        "projectId": "acme-prod", "datasetId": "analytics", "tableId": "fct_revenue"}, writeDisposition="WRITE_TRUNCATE")),
    ("POST", f"{API}/acme-sbx/jobs", _job("SELECT 1", defaultDataset={"projectId": "acme-prod", "datasetId": "analytics"})),
    ("POST", f"{API}/acme-sbx/jobs", {"configuration": {"copy": {"sourceTables": [], "destinationTable": {
        "projectId": "acme-prod", "datasetId": "analytics", "tableId": "t"}}}}),
    ("POST", f"{API}/acme-sbx/jobs", {"configuration": {"extract": {"destinationUris": ["gs://b/x"]}}}),
    ("POST", "https://bigquery.googleapis.com/upload/bigquery/v2/projects/acme-sbx/jobs?uploadType=multipart",
     b'--b\r\ncontent-type: application/json\r\n\r\n{"configuration": {"load": {"destinationTable": '
     b'{"projectId": "acme-prod", "datasetId": "analytics", "tableId": "seed"}}}}\r\n--b\r\n1,2\r\n--b--'),
    ("POST", f"{API}/acme-prod/datasets", {"datasetReference": {"projectId": "acme-prod", "datasetId": "analytics_x"}}),
    ("DELETE", f"{API}/acme-prod/datasets/analytics?deleteContents=true", None),
    ("DELETE", f"{API}/acme-prod/datasets/analytics/tables/fct_revenue", None),
    ("PATCH", f"{API}/acme-prod/datasets/analytics/tables/fct_revenue", {"description": "x"}),
    ("POST", f"{API}/acme-prod/datasets/analytics/tables/fct_revenue/insertAll", {"rows": []}),
    ("POST", f"{API}/acme-prod/datasets/analytics/tables/fct_revenue:setIamPolicy", {"policy": {}}),
    ("POST", f"{API}/acme-sbx/jobs", b"not json"),
    ("POST", f"{API}/acme-sbx/routines", {}),
    ("POST", f"{API}/acme-sbx/jobs", _job(DYNAMIC_SCRIPT.format(target="`acme-prod`.`analytics`.`events`"))),
]

REQUESTS_ALLOWED = [
    ("GET", f"{API}/acme-prod/datasets/analytics/tables/fct_revenue", None),
    ("POST", f"{API}/acme-sbx/jobs", _job("SELECT * FROM `acme-prod.analytics.fct_revenue`")),
    ("POST", f"{API}/acme-sbx/jobs", json.dumps(_job(
        "create or replace table `acme-sbx`.`cairn_sbx_12_a1b2c3`.`fct_revenue` as (select 1 as x)"))),
    ("POST", f"{API}/acme-sbx/queries", {"query": "select count(*) as failures from `acme-prod.analytics.t`"}),
    ("POST", f"{API}/acme-sbx/datasets", {"datasetReference": {"projectId": "acme-sbx", "datasetId": "cairn_sbx_12_a1b2c3"}}),
    ("DELETE", f"{SBX}/tables/fct_orders__dbt_tmp", None),
    ("POST", f"{API}/acme-prod/datasets/analytics/tables/fct_revenue:testIamPermissions", {"permissions": []}),
    ("POST", f"{API}/acme-sbx/jobs", _job(DYNAMIC_SCRIPT.format(target=SANDBOX_EVENTS))),
    ("POST", f"{API}/acme-sbx/jobs/abc/cancel", None),
    ("PUT", "https://bigquery.googleapis.com/upload/bigquery/v2/projects/acme-sbx/jobs?uploadType=resumable&upload_id=x", b"1,2"),
    ("POST", "https://slack.com/api/chat.postMessage", {"text": "not BigQuery"}),
]


@pytest.mark.parametrize("method, url, body", REQUESTS_REFUSED, ids=lambda v: str(v)[:60] if isinstance(v, str) else "")
def test_a_sandbox_build_may_not_send_these(method, url, body) -> None:
    with pytest.raises(ProductionWriteRefused, match="refused before sending"):
        check_request(method, url, body, SANDBOX)


@pytest.mark.parametrize("method, url, body", REQUESTS_ALLOWED, ids=lambda v: str(v)[:60] if isinstance(v, str) else "")
def test_a_sandbox_build_may_send_these(method, url, body) -> None:
    check_request(method, url, body, SANDBOX)


def test_the_request_guard_covers_every_client_in_the_process_while_it_is_on() -> None:
    with FakeBigQuery() as fake:
        fake.add_dataset("acme-prod", "analytics")
        client = fake.client()  # not Cairn's warehouse: a client of its own, as dbt-bigquery makes
        with guarded(SANDBOX):
            with pytest.raises(ProductionWriteRefused):
                client.query("DROP TABLE `acme-prod.analytics.fct_revenue`")
            with pytest.raises(ProductionWriteRefused):
                client.delete_dataset("acme-prod.analytics", delete_contents=True)
            assert list(client.query("select 1").result()) == []
        assert {r.call for r in fake.requests} == {"jobs.insert", "jobs.getQueryResults"}
        assert [r.sql for r in fake.requests if r.sql] == ["select 1"]
        client.delete_dataset("acme-prod.analytics", delete_contents=True)  # the guard is off again
        assert fake.requests[-1].call == "datasets.delete"
