"""Weeks of morning checks, replayed day by day on a warehouse built once: no false pages, one true one.

All 75 days are loaded and built up front; each check measures a past day's window from the current
tables, as it would have the morning after. The regression is deployed with a full refresh, so the
windows checked after it see the regressing code.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import pytest

from examples.generate import load
from jobs.dbt import Dbt
from jobs.records import AuditEvent, Incident
from jobs.store import Store
from tests.conftest import copy_shop
from tests.deployment import DOCS_EDIT, Deployment, at, check_at, deploy_shop, sqlite_url

pytestmark = pytest.mark.slow

START = date(2026, 9, 1)
DAYS = 75  # 2026-09-01 … 2026-11-14
LAST_CHECK = START + timedelta(days=DAYS)  # its 01:00 check measures the last loaded day
REVENUE = "revenue.net_daily"
QUIET_FROM = START + timedelta(days=15)  # 61 checks: windows 09-15 … 11-14
REGRESSION_FROM = START + timedelta(days=29)  # after a full 28 days of real baselines
DOCS_DAY, REGRESSION_DAY = START + timedelta(days=40), START + timedelta(days=60)


@pytest.fixture(scope="module")
def clean_warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """75 days of shop data and one full dbt build of the unchanged example project."""
    root = tmp_path_factory.mktemp("replay")
    warehouse = root / "warehouse.duckdb"
    load(warehouse, START, DAYS)
    project = copy_shop(root / "shop")
    result = Dbt(project, project, env={"CAIRN_DUCKDB_PATH": str(warehouse)}, target_path=root / "target").build()
    assert result.success and not result.failures, result.failures
    return warehouse


def deployed(clean_warehouse: Path, root: Path) -> Deployment:
    return deploy_shop(root / "shop", clean_warehouse, at(START, 9))


def replay(deployment: Deployment, store_url: str, first: date, last: date,
           deploys: dict[date, Callable[[], None]] | None = None) -> dict[date, dict[str, str]]:
    """The check each morning from `first` to `last` (01:00 UTC): each contract's status, by day.

    `deploys[day]` runs before that morning's check, with the warehouse released so dbt can write it.
    The detect stage runs in-process (`jobs.detect.check`, what `cairn check --at` runs before it
    heals new incidents), with a fresh Runtime after each deploy.
    """
    statuses = {}
    rt = deployment.runtime(store_url)
    try:
        day = first
        while day <= last:
            if deploys and day in deploys:
                rt.close()
                deploys[day]()
                rt = deployment.runtime(store_url)
            statuses[day] = {o.contract.id: o.assessment.status.value for o in check_at(rt, at(day))}
            day += timedelta(days=1)
    finally:
        rt.close()
    return statuses


def backfill(deployment: Deployment, store_url: str, day: date) -> None:
    """`cairn backfill --days 28 --at DAY 01:00`, through the CLI."""
    result = deployment.cli("backfill", "--days", "28", "--at", at(day).isoformat(), store_url=store_url)
    assert result.exit_code == 0, result.stderr
    assert "observations over 28 windows" in result.stdout


@dataclass(frozen=True)
class Replay:
    statuses: dict[date, dict[str, str]]  # each contract's status, by check day
    incidents: list[Incident]
    events: list[AuditEvent]
    shas: dict[str, str]


def stored(store_url: str) -> tuple[list[Incident], list[AuditEvent]]:
    store = Store.open(store_url)
    try:
        return store.incidents(), store.audit_events()
    finally:
        store.close()


@pytest.fixture(scope="module")
def quiet(clean_warehouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Replay:
    """Cairn installed two weeks after the data starts, then checked every morning for 61 days."""
    root = tmp_path_factory.mktemp("quiet")
    deployment, store_url = deployed(clean_warehouse, root), sqlite_url(root / "cairn.db")
    # The older half of the 28 backfilled windows predates the data and reads zero: it must stay
    # out of every baseline.
    backfill(deployment, store_url, QUIET_FROM)
    statuses = replay(deployment, store_url, QUIET_FROM, LAST_CHECK)
    return Replay(statuses, *stored(store_url), {"clean": deployment.head()})


@pytest.fixture(scope="module")
def regression(clean_warehouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Replay:
    """Four weeks of baselines, a docs-only commit on DOCS_DAY, the demo's regression on REGRESSION_DAY."""
    root = tmp_path_factory.mktemp("regression")
    deployment, store_url = deployed(clean_warehouse, root), sqlite_url(root / "cairn.db")
    shas = {"clean": deployment.head()}

    def document() -> None:
        deployment.edit(*DOCS_EDIT)
        shas["docs"] = deployment.commit("Say which day revenue_date is", at(DOCS_DAY, 11))

    def regress() -> None:
        shas["regression"] = deployment.land_regression(at(REGRESSION_DAY, 10))
        shas["before regression"] = deployment.git.head_sha(f"{shas['regression']}^")
        deployment.rebuild()

    # Commits land during the day, after that morning's check: the next morning sees them.
    deploys = {DOCS_DAY + timedelta(days=1): document, REGRESSION_DAY + timedelta(days=1): regress}

    backfill(deployment, store_url, REGRESSION_FROM)
    statuses = replay(deployment, store_url, REGRESSION_FROM, LAST_CHECK, deploys)
    return Replay(statuses, *stored(store_url), shas)


def test_the_quiet_replay_is_judged_not_learning(quiet: Replay) -> None:
    assert len(quiet.statuses) >= 60
    by_contract = Counter((contract, status) for day in quiet.statuses.values() for contract, status in day.items())
    # Weekly-seasonal contracts learn until four same-weekday points exist (two weeks here), and
    # again for four weeks on a weekday that lost a flagged point; the others are scored daily.
    for contract in ("revenue.net_daily", "payments.daily_amount", "orders.daily_count"):
        scored = by_contract[contract, "healthy"] + by_contract[contract, "anomalous"]
        assert scored >= len(quiet.statuses) // 2, (contract, by_contract)
    for contract in ("orders.freshness", "payments.coupon_share", "payments.method_mix", "mrr.level",
                     "orders.unpaid_completed_rate"):
        assert by_contract[contract, "healthy"] == len(quiet.statuses), (contract, by_contract)


def test_a_quiet_replay_raises_no_incident(quiet: Replay) -> None:
    assert [(i.contract_id, i.first_bad_at.date().isoformat()) for i in quiet.incidents] == []


def test_a_regressing_commit_raises_exactly_one_incident(regression: Replay) -> None:
    found = [(i.contract_id, i.first_bad_sha, i.last_good_sha, i.first_bad_at, i.last_good_at)
             for i in regression.incidents]
    assert found == [(REVENUE, regression.shas["regression"], regression.shas["before regression"],
                      at(REGRESSION_DAY + timedelta(days=1)), at(REGRESSION_DAY))]
    assert regression.shas["before regression"] == regression.shas["docs"]
    # One open incident while the regression stays deployed: opened once, updated on every morning that
    # flags it, and never resolved by a day that noise lifts back into the band.
    flagged = [day for day, by in regression.statuses.items() if day > REGRESSION_DAY and by[REVENUE] == "anomalous"]
    checks_since = sum(1 for day in regression.statuses if day > REGRESSION_DAY)
    assert len(flagged) >= checks_since // 2, [(d.isoformat(), b[REVENUE]) for d, b in regression.statuses.items() if d > REGRESSION_DAY]
    assert [e.name for e in regression.events] == ["incident.opened"] + ["incident.updated"] * (len(flagged) - 1)
    assert regression.incidents[0].resolved_at is None
