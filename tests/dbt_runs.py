"""Real production runs of the shop for the run-ingestion tests: a green `dbt build`, then a deploy
that breaks a staging model and adds a failing test, with `dbt source freshness` after it."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path

from dbt_common.events.functions import reset_metadata_vars

from examples.generate import load
from jobs.project.dbt import Dbt
from jobs.project.git import Git
from tests.conftest import copy_shop

START, DAYS = date(2026, 9, 1), 10
GITIGNORE = "target/\nlogs/\n*.duckdb\n*.duckdb.wal\n.cairn/\ndbt_packages/\nartifacts/\n"
BROKEN_MODEL = "model.shop.stg_refunds"  # reads a column the source does not have: a runtime SQL error
FAILING_TEST = "test.shop.unique_stg_order_items_order_id"  # an order has several lines: rows fail
PII_TEST = "test.shop.assert_customer_emails_are_unique"  # a singular test whose failing rows hold emails


@dataclass(frozen=True)
class ShopRuns:
    """The deployment at `root` and the artifacts of its two production runs."""

    root: Path
    green: Path  # target dir of the first, clean build
    failed: Path  # target dir of the broken deploy's build, with sources.json
    green_sha: str
    failed_sha: str


def commit(root: Path, message: str, when: datetime) -> str:
    stamp = when.isoformat()
    git = Git(root)
    git.run("add", "-A")
    git.run("-c", "user.name=Dev", "-c", "user.email=dev@shop.test", "commit", "-q", "-m", message,
            env={"GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp})
    return git.head_sha()


def make_runs(root: Path) -> ShopRuns:
    copy_shop(root)
    (root / ".gitignore").write_text(GITIGNORE)
    Git(root).run("init", "-q", "-b", "main")
    green_sha = commit(root, "Shop analytics project", datetime(2026, 9, 1, 9, tzinfo=timezone.utc))
    load(str(root / "warehouse.duckdb"), START, DAYS)
    env = {"CAIRN_DUCKDB_PATH": str(root / "warehouse.duckdb")}
    reset_metadata_vars()  # dbt keeps the first DBT_ENV_CUSTOM_ENV_ variables it sees for the whole process
    # The green deploy tells dbt its SHA (recorded in the run's metadata.env); the broken one does not.
    result = Dbt(root, root, env={**env, "DBT_ENV_CUSTOM_ENV_CAIRN_SHA": green_sha}, target_path=root / "target").build()
    assert result.success, result.failures
    reset_metadata_vars()
    green = shutil.copytree(root / "target", root / "artifacts" / "green")

    refunds = root / "models" / "staging" / "stg_refunds.sql"
    refunds.write_text(refunds.read_text().replace("reason as refund_reason", "refund_reason_code as refund_reason"))
    staging = root / "models" / "staging" / "_staging.yml"
    text = staging.read_text()
    marker = "      - name: order_id\n        description: The order the line belongs to.\n        data_tests:\n"
    assert marker in text
    staging.write_text(text.replace(marker, marker + "          - unique\n", 1))
    (root / "tests").mkdir(exist_ok=True)
    (root / "tests" / "assert_customer_emails_are_unique.sql").write_text(
        "select email, count(*) as customers, min(customer_id) as first_customer_id\n"
        "from {{ ref('stg_customers') }}\nwhere email is not null\ngroup by email\nhaving count(*) > 1\n")
    failed_sha = commit(root, "Refund reasons from the new code column; order lines and emails unique",
                        datetime(2026, 9, 10, 9, tzinfo=timezone.utc))
    dbt = Dbt(root, root, env=env, target_path=root / "target")
    result = dbt.build()
    assert not result.success
    freshness = dbt.invoke("source", "freshness")
    assert (root / "target" / "sources.json").is_file(), freshness
    failed = shutil.copytree(root / "target", root / "artifacts" / "failed")
    return ShopRuns(root, green, failed, green_sha, failed_sha)


DRIFTED_MODEL = "model.shop.stg_orders"  # its source's order_id was renamed by the loader
UNCOMPILABLE_MODEL = "model.shop.stg_feed"  # raises a compiler error when dbt compiles it


def drifted_run(runs: ShopRuns, root: Path) -> Path:
    """A copy of the deployment whose loader renamed raw.orders.order_id, with a model that does not compile;
    the target dir of `dbt build` of those two models."""
    shutil.copytree(runs.root, root, ignore=shutil.ignore_patterns("target", "artifacts", "logs"))
    import duckdb

    with duckdb.connect(str(root / "warehouse.duckdb")) as con:
        con.execute("ALTER TABLE raw.orders RENAME COLUMN order_id TO order_ref")
    (root / "models" / "staging" / "stg_feed.sql").write_text(
        "{% if execute %}{{ exceptions.raise_compiler_error('the feed macro moved to the ops package') }}{% endif %}\n"
        "select 1 as id\n")
    dbt = Dbt(root, root, env={"CAIRN_DUCKDB_PATH": str(root / "warehouse.duckdb")}, target_path=root / "target")
    result = dbt.build(select="stg_orders stg_feed")
    assert not result.success and {n.unique_id for n in result.failures} == {DRIFTED_MODEL, UNCOMPILABLE_MODEL}
    return root / "target"
