"""A revert verified end to end on Snowflake: real dbt-snowflake against fakesnow's server, through
`jobs.verify.verification.verify_revert` and the Snowflake adapter.

A small payments project is built into production with a regression (PayPal payments dropped from
revenue); verification reverts it in a sandbox schema, builds there through Cairn's generated
profile, re-measures the revenue contract on the sandbox and proves it is back in its band. The
recording layer (tests/snowflake_server.py) shows every statement and session: the clone's AT
clause, the query tag and statement timeout of every dbt session, and that nothing wrote production.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timedelta, timezone

import pytest
import yaml

from jobs.config import SnowflakeSettings
from jobs.contracts.spec import Contract
from jobs.core.records import BaselineStats, Verdict, Verification
from jobs.project.dbt import Dbt
from jobs.project.git import Git
from jobs.verify.verification import verify_revert
from jobs.warehouse.snowflake_cost import WarehouseTimeRefused
from jobs.warehouse.snowflake_sandbox import SnowflakeSandboxes
from tests.snowflake_server import FakeSnowflake, fake, server  # noqa: F401 (fixtures)
from tests.test_bigquery_verify import Scenario, _commit, _git

os.environ["DBT_SEND_ANONYMOUS_USAGE_STATS"] = "false"
os.environ.setdefault("SNOWFLAKE_PASSWORD", "snow")  # the generated profile reads it, as dbt reads env_var()

UTC = timezone.utc
AT = datetime(2026, 11, 23, 6, tzinfo=UTC)  # the incident's check; Nov 22 is the window
LAST_GOOD = datetime(2026, 11, 23, 1, tzinfo=UTC)  # the regression deployed at 02:00
NOW = datetime(2026, 11, 23, 7, tzinfo=UTC)
HEALTHY, REGRESSED = 150.0, 100.0
PAYMENTS = [(1, 1, "2026-11-21", 80, "card"), (2, 2, "2026-11-21", 20, "paypal"), (3, 3, "2026-11-22", 60, "card"),
            (4, 4, "2026-11-22", 40, "card"), (5, 5, "2026-11-22", 50, "paypal"), (6, 6, "2026-11-22", 30, "card")]
FAILED = (6, 6, "2026-11-22", 30, "card")  # status 'failed': never revenue
WRITE = re.compile(r"^\s*(?:create\s+(?:or\s+replace\s+)?(?:transient\s+|temporary\s+)*(?:table|view|schema)|insert\s+into|"
                   r"delete\s+from|merge\s+into|update|drop\s+(?:table|view|schema)(?:\s+if\s+exists)?|truncate\s+table|"
                   r"alter\s+(?:table|view|schema))\s+(\S+)", re.I)

PROJECT = {
    "dbt_project.yml": "name: pay\nprofile: pay\nmodels:\n  pay:\n    +materialized: table\n",
    "models/sources.yml": (
        "sources:\n  - name: raw\n    database: PAY_PROD\n    schema: RAW\n    tables: [{name: payments}]\n"
        "models:\n  - name: int_payments\n    columns:\n      - name: payment_id\n"
        "        data_tests: [unique, not_null]\n"),
    "models/int_payments.sql": (
        "{{ config(materialized='view') }}\nselect payment_id, order_id, paid_on, amount, method\n"
        "from {{ source('raw', 'payments') }}\nwhere status = 'succeeded'\n"),
    "models/fct_orders.sql": (
        "{{ config(materialized='incremental', unique_key='order_id', incremental_strategy='delete+insert') }}\n"
        "select order_id, paid_on, sum(amount) as amount from {{ ref('int_payments') }} group by 1, 2\n"),
    "models/fct_revenue.sql": (
        "select paid_on as revenue_date, sum(amount) as net_revenue from {{ ref('fct_orders') }} group by 1\n"),
}
REGRESSION = ("where status = 'succeeded'\n", "where status = 'succeeded'\n  and method = 'card'\n")
ESCAPE = ("select paid_on as revenue_date", "{{ config(pre_hook=\"delete from PAY_PROD.ANALYTICS.FCT_ORDERS\") }}\n"
                                            "select paid_on as revenue_date")


@pytest.fixture(scope="module")
def scenario(server, tmp_path_factory) -> Scenario:
    """Production built at the regression on the fake; its manifest as Cairn's prod state."""
    root = tmp_path_factory.mktemp("sfverify")
    repo = root / "repo"
    for name, text in PROJECT.items():
        (repo / "pay" / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / "pay" / name).write_text(text)
    Git(repo).run("init", "-q", "-b", "main")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "Payments project")
    sha = {"regression": _commit(repo, "Only card payments", "pay/models/int_payments.sql", *REGRESSION)}
    _git(repo, "checkout", "-q", "-b", "escape")
    sha["escape"] = _commit(repo, "Sneaky hook", "pay/models/fct_revenue.sql", *ESCAPE)
    _git(repo, "checkout", "-q", "main")

    rows = ", ".join(f"({p}, {o}, '{d}', {a}, '{m}', '{'failed' if (p, o, d, a, m) == FAILED else 'succeeded'}')"
                     for p, o, d, a, m in PAYMENTS)
    server.run("CREATE OR REPLACE DATABASE PAY_PROD", "CREATE SCHEMA PAY_PROD.RAW", "CREATE SCHEMA PAY_PROD.ANALYTICS",
               "CREATE TABLE PAY_PROD.RAW.PAYMENTS (PAYMENT_ID INT, ORDER_ID INT, PAID_ON DATE, AMOUNT NUMBER(10, 2), "
               "METHOD VARCHAR, STATUS VARCHAR)", f"INSERT INTO PAY_PROD.RAW.PAYMENTS VALUES {rows}")
    profiles = root / "prod-profile"
    profiles.mkdir()
    (profiles / "profiles.yml").write_text(yaml.safe_dump({"pay": {"target": "prod", "outputs": {"prod": {
        "type": "snowflake", "user": "deployer", "password": "snow", "role": "TRANSFORMER", "warehouse": "PROD_WH",
        "database": "PAY_PROD", "schema": "ANALYTICS", "threads": 1, **server.connection}}}}))
    production = Dbt(repo / "pay", profiles, target_path=root / "prod-state")
    assert production.build().success  # what the deploy built: revenue without PayPal
    assert server.run("SELECT NET_REVENUE FROM PAY_PROD.ANALYTICS.FCT_REVENUE WHERE REVENUE_DATE = '2026-11-22'") \
        == [(REGRESSED,)]
    contract = Contract.model_validate({"id": "revenue.net_daily", "kind": "volume", "model": "fct_revenue",
                                        "expr": "sum(net_revenue)", "time_column": "revenue_date", "window": "day",
                                        "direction": "drop"})
    band = BaselineStats(expected=HEALTHY, lower=140.0, upper=160.0, n=7)
    return Scenario(repo, root / "prod-state", root / "sandboxes", sha, contract, band)


def _verify(s: Scenario, fake: FakeSnowflake, deployed: str = "regression", snapshot_at: datetime = LAST_GOOD, **settings) -> Verification:
    config = SnowflakeSettings(**{"account": "fakesnow", "user": "cairn", "role": "CAIRN", "warehouse": "CAIRN_WH",
                                  # Sandboxes in the production database (the default): fakesnow cannot
                                  # describe a table of another database than the session's, and dbt's
                                  # incremental builds describe theirs (test_snowflake_sandbox.py uses two).
                                  "database": "PAY_PROD", "host": "127.0.0.1",
                                  "port": fake.port, "protocol": "http", "org": "acme", "budget_seconds": 900,
                                  **settings})
    sandboxes = SnowflakeSandboxes(config, password="snow", root=s.sandboxes, now=NOW, snapshot_at=snapshot_at)
    return verify_revert(
        sandboxes=sandboxes, repo=s.repo, project_subdir="pay", deployed_sha=s.sha[deployed],
        shas=[s.sha["regression"]], models=["model.pay.int_payments"], contract=s.contract,
        metric_model="fct_revenue", prod_state=s.prod_state, band=s.band, before=REGRESSED, at=AT, incident_id=12,
        sandboxes_root=s.sandboxes)


def _writes_outside_sandboxes(fake: FakeSnowflake) -> list[str]:
    """Statements from Cairn or its dbt sessions that write anything but a sandbox schema."""
    return [s for s in fake.sql() if (write := WRITE.match(s))
            and not re.match(r"PAY_PROD\.CAIRN_SBX_\w+(\.\w+)?$", write.group(1), re.I)]


def test_a_revert_is_verified_on_a_sandbox_schema_and_production_is_untouched(scenario, fake) -> None:
    v = _verify(scenario, fake)
    assert v.verdict is Verdict.verified, v.detail
    assert v.before == REGRESSED and v.after == HEALTHY and v.sha == scenario.sha["regression"]

    sent = fake.sql()
    schema = re.search(r"CREATE TRANSIENT SCHEMA PAY_PROD\.(CAIRN_SBX_202611230700_12_[0-9A-F]{6}) ", sent[0]).group(1)
    sandbox = f"PAY_PROD.{schema}"
    # 1. the incremental model cloned at the last good time, the only clone; the evidence names it
    clone = (f"CREATE TABLE {sandbox}.fct_orders CLONE PAY_PROD.ANALYTICS.fct_orders "
             "AT(TIMESTAMP => '2026-11-23 01:00:00.000000 +00:00'::TIMESTAMP_TZ)")
    assert sent[1] == clone and [c["statement"] for c in v.clones] == [clone]
    assert v.clone_id == f"snowflake:{sandbox}@2026-11-23T01:00:00+00:00"
    # 2. EXPLAIN of each model the build selects, before dbt builds anything
    explains = [i for i, q in enumerate(sent) if q.startswith("EXPLAIN USING JSON")]
    first_build = next(i for i, q in enumerate(sent) if q.startswith("create or replace") and "int_payments" in q)
    assert len(explains) == 3 and max(explains) < first_build and v.estimated_bytes == 3 * fake.explain_bytes
    # 3. dbt-snowflake's build: every write in the sandbox schema, parents read from production
    built = " ".join(sent)
    assert f"create or replace   view {sandbox}.int_payments" in built
    assert f"create or replace transient table {sandbox}.fct_revenue" in built
    assert f"delete from {sandbox}.fct_orders" in built and f"insert into {sandbox}.fct_orders" in built
    assert "from PAY_PROD.RAW.payments" in built
    assert _writes_outside_sandboxes(fake) == []
    assert "--target cairn_sandbox" in v.dbt_command and f"--defer --state {scenario.prod_state}" in v.dbt_command
    assert {"model.pay.int_payments", "model.pay.fct_orders", "model.pay.fct_revenue"} <= set(v.built)
    assert v.tests["pass"] == 2 and v.tests["fail"] == v.tests["error"] == 0
    # 4. every session: Cairn's role and warehouse, the incident's query tag, the statement timeout
    dbt_sessions = [login for login in fake.logins if login.user == "cairn" and login.schema == schema]
    assert dbt_sessions and all(login.warehouse == "CAIRN_WH" and login.role == "CAIRN" for login in dbt_sessions)
    for login in [login for login in fake.logins if login.user == "cairn"]:
        assert login.session_parameters["STATEMENT_TIMEOUT_IN_SECONDS"] == 900
        tag = json.loads(login.session_parameters["QUERY_TAG"])
        assert tag["incident"] == "12" and tag["org"] == "acme" and tag.get("sandbox", schema) == schema
    # 5. the re-measure on the sandbox; row deltas: the two PayPal payments the commit removed
    measure = next(q for q in sent if '"c0_value"' in q)
    assert f"FROM {sandbox}.fct_revenue" in measure and "revenue_date >= CAST('2026-11-22 00:00:00'" in measure
    [delta] = v.deltas
    assert (delta.model, delta.key, delta.added, delta.removed, delta.changed) == ("int_payments", ("PAYMENT_ID",), 0, 2, 0)
    # 6. the sandbox dropped, the work directory gone
    assert sent[-1] == f"DROP SCHEMA IF EXISTS {sandbox} CASCADE"
    assert schema not in [row[1] for row in fake.run("SHOW SCHEMAS IN DATABASE PAY_PROD")]
    assert not any(scenario.sandboxes.iterdir())


def test_outside_time_travel_the_current_state_is_cloned_and_the_evidence_says_so(scenario, fake) -> None:
    v = _verify(scenario, fake, snapshot_at=NOW - timedelta(days=3))
    assert v.verdict is Verdict.verified and v.clone_id.endswith("@current")
    assert "fct_orders: 2026-11-20T07:00:00+00:00 is outside the 1-day time-travel window" in v.detail
    [clone] = [q for q in fake.sql() if " CLONE " in q]
    assert clone.endswith("CLONE PAY_PROD.ANALYTICS.fct_orders")


def test_a_warehouse_time_overrun_is_refused_before_building(scenario, fake) -> None:
    fake.explain(r"fct_orders", 10 * 1024**3)  # 10 GiB at 200 MiB/s: 52 s against a 60 s budget, plus the rest
    fake.explain_bytes = 1024**3
    with pytest.raises(WarehouseTimeRefused) as refused:
        _verify(scenario, fake, budget_seconds=60)
    assert "about 62 warehouse-seconds at 200.0 MiB/s" in str(refused.value)
    assert refused.value.audit_data()["budget_seconds"] == 60
    assert not [q for q in fake.sql() if q.startswith("create or replace")]  # dbt built nothing
    assert fake.sql()[-1].startswith("DROP SCHEMA IF EXISTS PAY_PROD.CAIRN_SBX_")


def test_sql_in_a_model_cannot_write_production(scenario, fake) -> None:
    """THE safety test on Snowflake: a pre-hook deletes production rows; the statement never leaves."""
    orders = fake.run("SELECT COUNT(*) FROM PAY_PROD.ANALYTICS.FCT_ORDERS")
    v = _verify(scenario, fake, deployed="escape")
    assert v.verdict is Verdict.build_failed
    assert "model.pay.fct_revenue: error" in v.detail and "refused before sending" in v.detail
    assert "DELETE PAY_PROD.ANALYTICS.FCT_ORDERS writes outside sandbox schema" in v.detail
    assert not [q for q in fake.sql() if q.lower().startswith("delete from pay_prod.analytics")]
    assert _writes_outside_sandboxes(fake) == []
    assert fake.run("SELECT COUNT(*) FROM PAY_PROD.ANALYTICS.FCT_ORDERS") == orders == [(3,)]
