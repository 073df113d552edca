"""`cairn doctor`, `cairn sandbox gc` and the Runtime on a Snowflake deployment, through the real entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from jobs.config import load_config
from jobs.runtime import Runtime
from jobs.warehouse.snowflake import SnowflakeWarehouse
from jobs.warehouse.snowflake_sandbox import SnowflakeSandboxes
from tests.deployment import run_cli
from tests.snowflake_server import FakeSnowflake, fake, server  # noqa: F401 (fixtures)

PASSWORD = "cli-Pa55word-never-shown"

SETUP = ("CREATE OR REPLACE DATABASE CLI_PROD", "CREATE SCHEMA CLI_PROD.ANALYTICS",
         "CREATE TABLE CLI_PROD.ANALYTICS.FCT_REVENUE (REVENUE_DATE DATE, NET_REVENUE NUMBER(10, 2))",
         "CREATE OR REPLACE DATABASE CLI_SANDBOX")


@pytest.fixture
def deployment(tmp_path: Path, fake: FakeSnowflake) -> Path:
    """A one-model dbt project with a Snowflake production target, and a cairn.yml for the acme org."""
    project = tmp_path / "shop"
    (project / "models").mkdir(parents=True)
    (project / "dbt_project.yml").write_text("name: shop\nprofile: shop\nmodels:\n  shop:\n    +materialized: table\n")
    (project / "models" / "fct_revenue.sql").write_text("select current_date as revenue_date, 1 as net_revenue\n")
    (project / "profiles.yml").write_text(yaml.safe_dump({"shop": {"target": "prod", "outputs": {"prod": {
        "type": "snowflake", "user": "deployer", "password": "x", "role": "TRANSFORMER", "warehouse": "PROD_WH",
        "database": "CLI_PROD", "schema": "ANALYTICS", "threads": 1, **fake.connection}}}}))
    config = project / "cairn.yml"
    config.write_text(yaml.safe_dump({
        "project": ".", "repo": ".", "store": f"sqlite:///{tmp_path}/cairn.db",
        "snowflake": {"account": "fakesnow", "user": "cairn", "role": "CAIRN", "warehouse": "CAIRN_WH",
                      "database": "CLI_PROD", "sandbox_database": "CLI_SANDBOX", "org": "acme",
                      "host": "127.0.0.1", "port": fake.port, "protocol": "http", "sandbox_retention": "12h"}}))
    return config


def _grant_read_only(fake: FakeSnowflake) -> None:
    fake.grant("CAIRN", "USAGE", "DATABASE", "CLI_PROD")
    fake.grant("CAIRN", "USAGE", "SCHEMA", "CLI_PROD.ANALYTICS")
    fake.grant("CAIRN", "SELECT", "TABLE", "CLI_PROD.ANALYTICS.FCT_REVENUE")
    fake.grant("CAIRN", "CREATE SCHEMA", "DATABASE", "CLI_SANDBOX")


def test_the_runtime_measures_snowflake_read_only(deployment: Path, fake: FakeSnowflake) -> None:
    rt = Runtime(load_config(deployment, env={"SNOWFLAKE_PASSWORD": PASSWORD}))
    try:
        warehouse = rt.warehouse
        assert isinstance(warehouse, SnowflakeWarehouse) and warehouse.sandbox is None
        assert warehouse.relation_name({"name": "fct_revenue", "schema": "ANALYTICS"}) == "CLI_PROD.ANALYTICS.fct_revenue"
        assert warehouse.query("SELECT COUNT(*) AS N FROM CLI_PROD.ANALYTICS.FCT_REVENUE") == [{"N": 0}]
        assert isinstance(rt.sandboxes(), SnowflakeSandboxes)
    finally:
        rt.close()
    [login] = [login for login in fake.logins if login.user == "cairn"]
    assert json.loads(login.session_parameters["QUERY_TAG"]) == {"app": "cairn", "org": "acme", "purpose": "measure"}
    assert (login.role, login.warehouse) == ("CAIRN", "CAIRN_WH")


def test_doctor_passes_when_production_is_read_only(deployment: Path, fake: FakeSnowflake) -> None:
    _grant_read_only(fake)
    result = run_cli("--config", str(deployment), "doctor", env={"SNOWFLAKE_PASSWORD": PASSWORD})
    assert result.exit_code == 0, result.stderr
    assert "ok   create sandboxes in CLI_SANDBOX: created and dropped CLI_SANDBOX.CAIRN_SBX_" in result.stdout
    assert "ok   read CLI_PROD.ANALYTICS: selected from CLI_PROD.ANALYTICS.FCT_REVENUE" in result.stdout
    assert "ok   no write to CLI_PROD: role CAIRN holds only" in result.stdout
    assert PASSWORD not in result.stdout + result.stderr


def test_doctor_fails_loudly_when_production_is_writable(deployment: Path, fake: FakeSnowflake) -> None:
    _grant_read_only(fake)
    fake.grant("CAIRN", "OWNERSHIP", "SCHEMA", "CLI_PROD.ANALYTICS")
    result = run_cli("--config", str(deployment), "doctor", env={"SNOWFLAKE_PASSWORD": PASSWORD})
    assert result.exit_code == 1
    assert ("FAIL no write to CLI_PROD: PRODUCTION IS WRITABLE by role CAIRN: OWNERSHIP on SCHEMA CLI_PROD.ANALYTICS "
            "(via CAIRN)") in result.stdout
    assert "docs/snowflake.md" in result.stderr


def test_doctor_without_credentials_says_which_to_set(deployment: Path, fake: FakeSnowflake) -> None:
    result = run_cli("--config", str(deployment), "doctor", env={"SNOWFLAKE_PASSWORD": ""})
    assert result.exit_code != 0 and "set env SNOWFLAKE_PASSWORD" in result.stderr


def test_sandbox_gc_drops_sandboxes_past_the_retention(deployment: Path, fake: FakeSnowflake) -> None:
    fake.run("CREATE SCHEMA CLI_SANDBOX.CAIRN_SBX_202611221900_9_ABCDEF",
             "CREATE SCHEMA CLI_SANDBOX.CAIRN_SBX_202611230200_10_FEDCBA")
    at = ("--at", "2026-11-23T08:00")  # 12 h retention: the first is 13 h old, the second 6 h
    env = {"SNOWFLAKE_PASSWORD": PASSWORD}
    dry = run_cli("--config", str(deployment), "sandbox", "gc", "--dry-run", *at, env=env)
    assert dry.exit_code == 0, dry.stderr
    assert "would drop CLI_SANDBOX.CAIRN_SBX_202611221900_9_ABCDEF" in dry.stdout and "FEDCBA" not in dry.stdout
    result = run_cli("--config", str(deployment), "sandbox", "gc", *at, env=env)
    assert result.exit_code == 0, result.stderr
    assert "1 expired sandbox schema(s) dropped in database CLI_SANDBOX." in result.stdout
    left = [row[1] for row in fake.run("SHOW SCHEMAS IN DATABASE CLI_SANDBOX") if row[1].startswith("CAIRN_SBX_")]
    assert left == ["CAIRN_SBX_202611230200_10_FEDCBA"]
    assert fake.sql().count("DROP SCHEMA IF EXISTS CLI_SANDBOX.CAIRN_SBX_202611221900_9_ABCDEF CASCADE") == 1
    fake.run("DROP SCHEMA CLI_SANDBOX.CAIRN_SBX_202611230200_10_FEDCBA")
