"""Shared fixtures: the demo `shop` warehouse, loaded and built once per session."""

from __future__ import annotations

import gc
import json
import shutil
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHOP = ROOT / "examples" / "shop"
SHOP_START = date(2026, 9, 1)
SHOP_DAYS = 35


@dataclass(frozen=True)
class BuiltShop:
    """A private copy of examples/shop, its DuckDB file and the results of one `dbt build`."""

    project_dir: Path
    db_path: Path
    target_path: Path
    manifest: dict[str, Any]
    results: Any  # dbt's RunExecutionResult


def copy_shop(destination: Path) -> Path:
    """Copy the demo project without build output, so nothing is ever built inside examples/."""
    shutil.copytree(SHOP, destination, ignore=shutil.ignore_patterns("target", "logs", "*.duckdb", ".cairn"))
    return destination


def release_duckdb() -> None:
    """Close the DuckDB file dbt-duckdb keeps open in-process after an invocation.

    Until then the process holds it read-write: a read-only connection here, or any connection
    from another process, is refused.
    """
    from dbt.adapters.duckdb.connections import DuckDBConnectionManager

    DuckDBConnectionManager.close_all_connections()
    gc.collect()


@pytest.fixture(scope="session")
def built_shop(tmp_path_factory: pytest.TempPathFactory) -> BuiltShop:
    """35 days of demo data and a full in-process `dbt build` of the shop project."""
    from dbt.cli.main import dbtRunner

    from examples.generate import load

    root = tmp_path_factory.mktemp("shop")
    project_dir = copy_shop(root / "shop")
    db_path = root / "warehouse.duckdb"
    target_path = root / "target"
    load(db_path, SHOP_START, SHOP_DAYS)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CAIRN_DUCKDB_PATH", str(db_path))
        env.setenv("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
        outcome = dbtRunner().invoke([
            "build", "--project-dir", str(project_dir), "--profiles-dir", str(project_dir),
            "--target-path", str(target_path), "--log-path", str(root / "logs"), "--quiet",
        ])
    release_duckdb()
    if outcome.exception is not None:
        raise outcome.exception
    manifest = json.loads((target_path / "manifest.json").read_text())
    return BuiltShop(project_dir, db_path, target_path, manifest, outcome.result)


@pytest.fixture(scope="session")
def scenario_baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shop under git, built, backfilled and checked (tests/test_scenarios.py): copy it, never edit it."""
    from tests.test_scenarios import build_baseline

    return build_baseline(tmp_path_factory.mktemp("scenario-baseline") / "shop")


@pytest.fixture(scope="session")
def shop_runs(tmp_path_factory: pytest.TempPathFactory):
    """Two real production runs of the shop under git: green, then broken (tests/dbt_runs.py)."""
    from tests.dbt_runs import make_runs

    return make_runs(tmp_path_factory.mktemp("runs") / "shop")
