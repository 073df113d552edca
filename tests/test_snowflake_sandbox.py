"""Snowflake sandboxes, the statement and cost guards, cleanup and `cairn doctor`, against fakesnow's server."""

from __future__ import annotations

import json
import re
import stat
from datetime import datetime, timedelta, timezone

import pytest
import yaml

from jobs.config import Environment, SnowflakeSettings, parse_settings
from jobs.core.errors import ConfigError
from jobs.warehouse.cost_guard import Estimate
from jobs.warehouse.snowflake_cost import WarehouseTimeRefused, check_budget
from jobs.warehouse.snowflake_doctor import doctor
from jobs.warehouse.snowflake_sandbox import SnowflakeSandbox, SnowflakeSandboxes, created_at, gc_sandboxes, query_tag
from jobs.warehouse.statement_guard import ProductionWriteRefused
from tests.snowflake_server import FakeSnowflake, fake, server  # noqa: F401 (fixtures)

UTC = timezone.utc
NOW = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
LAST_GOOD = datetime(2026, 11, 22, 23, tzinfo=UTC)
PASSWORD = "s3cret-Pa55word!"

SETUP = ("CREATE OR REPLACE DATABASE SF_PROD", "CREATE SCHEMA SF_PROD.ANALYTICS",
         "CREATE TABLE SF_PROD.ANALYTICS.FCT_ORDERS (ORDER_ID INT, AMOUNT NUMBER(10, 2))",
         "INSERT INTO SF_PROD.ANALYTICS.FCT_ORDERS VALUES (1, 10.5), (2, 20)",
         "CREATE OR REPLACE DATABASE SF_SANDBOX")


def _settings(fake: FakeSnowflake, **overrides) -> SnowflakeSettings:
    return SnowflakeSettings(**{"account": "fakesnow", "user": "cairn", "role": "CAIRN", "warehouse": "CAIRN_WH",
                                "database": "SF_PROD", "sandbox_database": "SF_SANDBOX", "host": "127.0.0.1",
                                "port": fake.port, "protocol": "http", "org": "acme", "budget_seconds": 600,
                                **overrides})


def _sandboxes(fake: FakeSnowflake, tmp_path, **overrides) -> SnowflakeSandboxes:
    return SnowflakeSandboxes(_settings(fake, **overrides), password=PASSWORD, root=tmp_path, now=NOW)


def _schemas(fake: FakeSnowflake) -> list[str]:
    return sorted(row[1] for row in fake.run("SHOW SCHEMAS IN DATABASE SF_SANDBOX") if row[1].startswith("CAIRN_SBX_"))


def test_a_sandbox_is_a_transient_schema_named_by_its_time_and_dropped_on_exit(fake, tmp_path) -> None:
    sandboxes = _sandboxes(fake, tmp_path)
    with sandboxes.connection(query_tag("acme", "verify", incident="12")) as session:
        with SnowflakeSandbox.create(session, database="sf_sandbox", label="12", org="acme", now=NOW) as box:
            assert re.fullmatch(r"CAIRN_SBX_202611230930_12_[0-9A-F]{6}", box.dataset.dataset)
            assert str(box.dataset) in [f"SF_SANDBOX.{s}" for s in _schemas(fake)]
            assert box.clone_id == f"snowflake:{box.dataset}@none"
        assert _schemas(fake) == []
    create, drop = fake.sql()
    assert create.startswith(f"CREATE TRANSIENT SCHEMA {box.dataset} DATA_RETENTION_TIME_IN_DAYS = 0 COMMENT = ")
    assert drop == f"DROP SCHEMA IF EXISTS {box.dataset} CASCADE"
    assert created_at(box.dataset.dataset) == datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
    # The session: Cairn's user, role and warehouse, its query tag, a statement timeout, UTC.
    [login] = [login for login in fake.logins if login.user == "cairn"]
    assert (login.user, login.role, login.warehouse) == ("cairn", "CAIRN", "CAIRN_WH")
    assert json.loads(login.session_parameters["QUERY_TAG"]) == {"app": "cairn", "org": "acme", "purpose": "verify",
                                                                 "incident": "12"}
    assert login.session_parameters["STATEMENT_TIMEOUT_IN_SECONDS"] == 600
    assert login.session_parameters["TIMEZONE"] == "UTC"


def test_clones_hold_the_snapshot_time_table_by_table(fake, tmp_path) -> None:
    with _sandboxes(fake, tmp_path).connection("t") as session, \
            SnowflakeSandbox.create(session, database="SF_SANDBOX", label="12", org="acme", now=NOW) as box:
        [clone] = box.clone([("SF_PROD", "ANALYTICS", "FCT_ORDERS")], at=LAST_GOOD, now=NOW,
                            time_travel=timedelta(days=1))
        statement = (f"CREATE TABLE {box.dataset}.FCT_ORDERS CLONE SF_PROD.ANALYTICS.FCT_ORDERS "
                     "AT(TIMESTAMP => '2026-11-22 23:00:00.000000 +00:00'::TIMESTAMP_TZ)")
        assert clone.statement == statement and clone.note == "" and clone.snapshot == LAST_GOOD
        assert fake.statements[-1].sql == statement  # as sent; the fake cloned the current state
        assert box.clone_id == f"snowflake:{box.dataset}@2026-11-22T23:00:00+00:00"
        assert session.query(f"SELECT COUNT(*) AS N FROM {box.dataset}.FCT_ORDERS") == [{"N": 2}]


def test_outside_time_travel_the_current_state_is_cloned_and_said(fake, tmp_path) -> None:
    with _sandboxes(fake, tmp_path).connection("t") as session, \
            SnowflakeSandbox.create(session, database="SF_SANDBOX", label="12", org="acme", now=NOW) as box:
        [old] = box.clone([("SF_PROD", "ANALYTICS", "FCT_ORDERS")], at=NOW - timedelta(days=3), now=NOW,
                          time_travel=timedelta(days=1))
        assert old.statement == f"CREATE TABLE {box.dataset}.FCT_ORDERS CLONE SF_PROD.ANALYTICS.FCT_ORDERS"
        assert "outside the 1-day time-travel window: cloned at its current state" in old.note
        assert box.clone_id.endswith("@current")

        fake.time_travel = False  # Snowflake refuses AT for a table without history that far back
        session.execute(f"DROP TABLE {box.dataset}.FCT_ORDERS")
        [fallen] = box.clone([("SF_PROD", "ANALYTICS", "FCT_ORDERS")], at=LAST_GOOD, now=NOW,
                             time_travel=timedelta(days=1))
        assert fallen.snapshot is None and "holds no time travel for it at 2026-11-22T23:00:00+00:00" in fallen.note
        assert "AT(TIMESTAMP" in fake.sql()[-2] and "AT(" not in fake.sql()[-1]


def test_columns_are_read_from_the_information_schema_and_a_missing_table_is_none(fake, tmp_path) -> None:
    with _sandboxes(fake, tmp_path).connection("t") as warehouse:
        columns = warehouse.columns("SF_PROD.ANALYTICS.FCT_ORDERS")
        assert set(columns) == {"order_id", "amount"} and all(columns.values())
        assert warehouse.columns("SF_PROD.ANALYTICS.GONE") is None


def test_production_is_read_only_for_cairns_own_sessions(fake, tmp_path) -> None:
    with _sandboxes(fake, tmp_path).connection("t") as session:
        with pytest.raises(ProductionWriteRefused, match="writes outside no schema"):
            session.execute("DELETE FROM SF_PROD.ANALYTICS.FCT_ORDERS")
        with SnowflakeSandbox.create(session, database="SF_SANDBOX", label="12", org="acme", now=NOW) as box:
            with pytest.raises(ProductionWriteRefused) as refused:
                session.execute(f"INSERT INTO SF_PROD.ANALYTICS.FCT_ORDERS SELECT * FROM {box.dataset}.X")
            assert f"INSERT SF_PROD.ANALYTICS.FCT_ORDERS writes outside sandbox schema {box.dataset}" in str(refused.value)
            with pytest.raises(ProductionWriteRefused, match="not a fully qualified name"):
                session.execute("CREATE TABLE FCT_ORDERS (A INT)")
            session.execute(f"CREATE TABLE {box.dataset}.SCRATCH (A INT)")  # inside: sent
    assert not [s for s in fake.sql() if "SF_PROD.ANALYTICS.FCT_ORDERS" in s or s.startswith("CREATE TABLE FCT")]
    assert fake.run("SELECT COUNT(*) FROM SF_PROD.ANALYTICS.FCT_ORDERS") == [(2,)]


def test_the_generated_profile_names_the_warehouse_tag_and_no_secret(fake, tmp_path) -> None:
    settings = _settings(fake)
    with _sandboxes(fake, tmp_path).connection("t") as session, \
            SnowflakeSandbox.create(session, database="SF_SANDBOX", label="12", org="acme", now=NOW) as box:
        path = box.write_profile(tmp_path / "p", "shop", settings, tag='{"incident":"12"}', key_path=None)
        output = yaml.safe_load(path.read_text())["shop"]["outputs"]["cairn_sandbox"]
        assert output == {
            "type": "snowflake", "account": "fakesnow", "user": "cairn", "role": "CAIRN", "warehouse": "CAIRN_WH",
            "database": "SF_PROD", "schema": box.dataset.dataset, "threads": 4, "query_tag": '{"incident":"12"}',
            "client_session_keep_alive": False, "connect_retries": 1, "connect_timeout": 60, "protocol": "http",
            "password": "{{ env_var('SNOWFLAKE_PASSWORD') }}", "host": "127.0.0.1", "port": fake.port}
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and PASSWORD not in path.read_text()
        keyed = box.write_profile(tmp_path / "k", "shop", settings, tag="t", key_path=tmp_path / "cairn.p8")
        output = yaml.safe_load(keyed.read_text())["shop"]["outputs"]["cairn_sandbox"]
        assert output["private_key_path"] == str(tmp_path / "cairn.p8") and "password" not in output


def test_credentials_stay_out_of_errors_config_and_repr(fake, tmp_path) -> None:
    sandboxes = SnowflakeSandboxes(_settings(fake), password=None, root=tmp_path, now=NOW)
    with pytest.raises(ConfigError, match="set env SNOWFLAKE_PASSWORD"):
        sandboxes.connection("t")
    key = tmp_path / "cairn.p8"
    key.write_text("-----BEGIN PRIVATE KEY-----\nnot really a key\n-----END PRIVATE KEY-----\n")
    keyed = SnowflakeSandboxes(_settings(fake, private_key_file=key), password=None, root=tmp_path, now=NOW)
    with pytest.raises(ConfigError) as bad:
        keyed.connection("t")
    assert str(key) in str(bad.value) and "not really" not in str(bad.value)
    env = Environment.from_env({"SNOWFLAKE_PASSWORD": PASSWORD, "SNOWFLAKE_PRIVATE_KEY_PASSPHRASE": "phrase-123"})
    assert PASSWORD not in repr(env) and "phrase-123" not in repr(env)
    assert {"snowflake_password", "snowflake_private_key_passphrase"} <= Environment.secrets()
    section = {"account": "a", "user": "u", "role": "r", "warehouse": "w", "database": "d",
               "private_key_file": "-----BEGIN PRIVATE KEY-----abc"}
    with pytest.raises(ConfigError, match="snowflake.private_key_file: holds a key, not a path") as inline:
        parse_settings({"snowflake": section}, "cairn.yml")
    assert "abc" not in str(inline.value)


def test_the_cost_guard_refuses_over_budget_in_warehouse_seconds(fake, tmp_path) -> None:
    fake.explain(r"FCT_ORDERS", 3 * 1024**3)
    with _sandboxes(fake, tmp_path).connection("t") as session:
        assert session.explain("SELECT * FROM SF_PROD.ANALYTICS.FCT_ORDERS") == 3 * 1024**3
        assert session.explain("SELECT 1") == 1_000_000
    assert fake.sql()[0] == "EXPLAIN USING JSON SELECT * FROM SF_PROD.ANALYTICS.FCT_ORDERS"
    guess = Estimate(3 * 1024**3 + 1_000_000, {"model.shop.fct_orders": 3 * 1024**3, "model.shop.a": 1_000_000})
    rate = 100 * 1024**2  # 100 MiB a second: 3 GiB is ~31 s
    assert check_budget(guess, 60, rate) == 31
    with pytest.raises(WarehouseTimeRefused) as refused:
        check_budget(guess, 30, rate, "snowflake:X.Y@current")
    message = str(refused.value)
    assert "would scan 3.0 GiB, about 31 warehouse-seconds at 100.0 MiB/s" in message
    assert "over the budget of 30 (snowflake.budget_seconds" in message and "model.shop.fct_orders 3.0 GiB" in message
    assert refused.value.audit_data() == {
        "scanned_bytes": guess.total, "estimated_seconds": 31, "budget_seconds": 30, "scan_bytes_per_second": rate,
        "nodes": guess.nodes, "clone_id": "snowflake:X.Y@current"}


def test_gc_drops_only_sandboxes_older_than_the_retention(fake, tmp_path) -> None:
    fake.run("CREATE SCHEMA SF_SANDBOX.CAIRN_SBX_202611211200_3_AAAAAA",
             "CREATE SCHEMA SF_SANDBOX.CAIRN_SBX_202611230800_4_BBBBBB",
             "CREATE SCHEMA SF_SANDBOX.CAIRN_SBX_NOTATIME_5_CCCCCC", "CREATE SCHEMA SF_SANDBOX.MARKETING")
    with _sandboxes(fake, tmp_path).connection("gc") as session:
        old = ["SF_SANDBOX.CAIRN_SBX_202611211200_3_AAAAAA"]
        assert gc_sandboxes(session, database="sf_sandbox", older_than=timedelta(days=1), now=NOW,
                            dry_run=True) == old
        assert "CAIRN_SBX_202611211200_3_AAAAAA" in _schemas(fake)
        assert gc_sandboxes(session, database="SF_SANDBOX", older_than=timedelta(days=1), now=NOW) == old
    assert _schemas(fake) == ["CAIRN_SBX_202611230800_4_BBBBBB", "CAIRN_SBX_NOTATIME_5_CCCCCC"]
    assert [s for s in fake.sql() if s.startswith("DROP")] == ["DROP SCHEMA IF EXISTS " + old[0] + " CASCADE"]
    fake.run("DROP SCHEMA SF_SANDBOX.CAIRN_SBX_202611230800_4_BBBBBB", "DROP SCHEMA SF_SANDBOX.CAIRN_SBX_NOTATIME_5_CCCCCC",
             "DROP SCHEMA SF_SANDBOX.MARKETING")


def _manifest() -> dict:
    node = {"resource_type": "model", "name": "fct_orders", "alias": "fct_orders", "database": "SF_PROD",
            "schema": "ANALYTICS", "config": {"materialized": "table"}}
    return {"nodes": {"model.shop.fct_orders": node}}


def test_doctor_reports_a_production_write_grant(fake, tmp_path) -> None:
    fake.grant("CAIRN", "USAGE", "DATABASE", "SF_PROD")
    fake.grant("CAIRN", "SELECT", "TABLE", "SF_PROD.ANALYTICS.FCT_ORDERS")
    fake.grant("CAIRN", "CREATE SCHEMA", "DATABASE", "SF_SANDBOX")
    fake.grant("CAIRN", "USAGE", "ROLE", "LOADER")
    with _sandboxes(fake, tmp_path).connection("doctor") as session:
        findings = doctor(session, _settings(fake), _manifest(), NOW)
    assert all(f.ok for f in findings), findings
    assert [f.check for f in findings] == ["create sandboxes in SF_SANDBOX", "read SF_PROD.ANALYTICS", "no write to SF_PROD"]
    assert fake.sql()[0].startswith("CREATE TRANSIENT SCHEMA SF_SANDBOX.CAIRN_SBX_202611230930_doctor_".upper()[:-1])
    assert "SHOW GRANTS TO ROLE LOADER" in fake.sql()  # the grants of roles granted to Cairn's count too

    fake.grant("LOADER", "INSERT", "TABLE", "SF_PROD.ANALYTICS.FCT_ORDERS")
    with _sandboxes(fake, tmp_path).connection("doctor") as session:
        [bad] = [f for f in doctor(session, _settings(fake), _manifest(), NOW) if not f.ok]
    assert bad.check == "no write to SF_PROD"
    assert "PRODUCTION IS WRITABLE by role CAIRN: INSERT on TABLE SF_PROD.ANALYTICS.FCT_ORDERS (via LOADER)" in bad.detail
