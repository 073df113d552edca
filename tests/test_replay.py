"""Weeks of morning checks, replayed day by day: no false pages, and every regression caught.

The quiet replay loads and builds all 75 days up front; each check measures a past day's window
from the current tables, as it would have the morning after. The regression replays load the days
before the regression up front; from the regression on, each day's data arrives the night after it
and that night's production run builds it with the deployed code, so the deploy check (a sandbox
build of the previous code) rebuilds the window it compares.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import pytest

from examples.generate import add_day, drop_source_rows, load
from jobs.core.records import AuditEvent, Incident
from jobs.project.dbt import Dbt
from jobs.store.store import Store
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
REGRESSION_DAYS = 7  # mornings checked after the regression landed, each after that night's run
# Behind an outage: 60% of payments stop arriving for a week; the regression lands in its middle.
OUTAGE = [START + timedelta(days=50 + i) for i in range(7)]
BEHIND_FROM, BEHIND_REGRESSION, BEHIND_LAST = START + timedelta(days=48), OUTAGE[3], START + timedelta(days=60)


def built_warehouse(root: Path, days: int, outage: Sequence[date] = ()) -> Path:
    """`days` of shop data from START (60% of each `outage` day's payments never arrive), built once."""
    root.mkdir(parents=True, exist_ok=True)
    warehouse = root / "warehouse.duckdb"
    load(warehouse, START, days)
    for day in outage:
        drop_source_rows(str(warehouse), day, "payments", 0.6)
    project = copy_shop(root / "shop")
    result = Dbt(project, project, env={"CAIRN_DUCKDB_PATH": str(warehouse)}, target_path=root / "target").build()
    assert result.success and not result.failures, result.failures
    return warehouse


@pytest.fixture(scope="module")
def clean_warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """75 days of shop data and one full dbt build of the unchanged example project."""
    return built_warehouse(tmp_path_factory.mktemp("replay"), DAYS)


def nightly(deployment: Deployment, day: date, outage: Sequence[date] = ()) -> None:
    """`day`'s data arrives and the production run builds it with the deployed code (incrementally)."""
    add_day(str(deployment.warehouse), day)
    if day in outage:
        drop_source_rows(str(deployment.warehouse), day, "payments", 0.6)
    deployment.run()


def deployed(clean_warehouse: Path, root: Path) -> Deployment:
    return deploy_shop(root / "shop", clean_warehouse, at(START, 9))


def replay(deployment: Deployment, store_url: str, first: date, last: date,
           deploys: dict[date, Callable[[], None]] | None = None) -> dict[date, dict[str, str]]:
    """The check each morning from `first` to `last` (01:00 UTC): each contract's status, by day.

    `deploys[day]` runs before that morning's check, with the warehouse released so dbt can write it.
    The detect stage runs in-process (`jobs.detect.check.check`, what `cairn check --at` runs before it
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
def regression(tmp_path_factory: pytest.TempPathFactory) -> Replay:
    """Four weeks of baselines, a docs-only commit on DOCS_DAY, the demo's regression on REGRESSION_DAY.

    From the regression on, each day's data arrives the night after it and is built by that night's
    run with the deployed code, as in production: the deploy check rebuilds the newest window.
    """
    root = tmp_path_factory.mktemp("regression")
    warehouse = built_warehouse(root / "data", (REGRESSION_DAY - START).days)
    deployment, store_url = deployed(warehouse, root), sqlite_url(root / "cairn.db")
    shas = {"clean": deployment.head()}

    def document() -> None:
        deployment.edit(*DOCS_EDIT)
        shas["docs"] = deployment.commit("Say which day revenue_date is", at(DOCS_DAY, 11))

    def regress() -> None:
        shas["regression"] = deployment.land_regression(at(REGRESSION_DAY, 10))
        shas["before regression"] = deployment.git.head_sha(f"{shas['regression']}^")
        nightly(deployment, REGRESSION_DAY)

    # Commits land during the day, after that morning's check: the next morning sees them.
    deploys = {DOCS_DAY + timedelta(days=1): document, REGRESSION_DAY + timedelta(days=1): regress}
    for day in (REGRESSION_DAY + timedelta(days=i) for i in range(1, REGRESSION_DAYS)):
        deploys[day + timedelta(days=1)] = lambda day=day: nightly(deployment, day)

    backfill(deployment, store_url, REGRESSION_FROM)
    statuses = replay(deployment, store_url, REGRESSION_FROM, REGRESSION_DAY + timedelta(days=REGRESSION_DAYS),
                      deploys)
    return Replay(statuses, *stored(store_url), shas)


@pytest.fixture(scope="module")
def behind_an_outage(tmp_path_factory: pytest.TempPathFactory) -> Replay:
    """A source outage opens a no-code incident on revenue; while it is open, the regression lands."""
    root = tmp_path_factory.mktemp("behind")
    warehouse = built_warehouse(root / "data", (BEHIND_REGRESSION - START).days, OUTAGE)
    deployment, store_url = deployed(warehouse, root), sqlite_url(root / "cairn.db")
    shas = {"clean": deployment.head()}

    def regress() -> None:
        shas["regression"] = deployment.land_regression(at(BEHIND_REGRESSION, 10))
        nightly(deployment, BEHIND_REGRESSION, OUTAGE)

    deploys = {BEHIND_REGRESSION + timedelta(days=1): regress}
    day = BEHIND_REGRESSION + timedelta(days=1)
    while day < BEHIND_LAST:
        deploys[day + timedelta(days=1)] = lambda day=day: nightly(deployment, day, OUTAGE)
        day += timedelta(days=1)

    backfill(deployment, store_url, BEHIND_FROM)
    statuses = replay(deployment, store_url, BEHIND_FROM, BEHIND_LAST, deploys)
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
    # The deploy check opens it the first morning (a -28% drop hides in this shop's noise); every
    # morning after, the proven code is still deployed, so every day is flagged, noise or not.
    flagged = [day for day, by in regression.statuses.items() if day > REGRESSION_DAY and by[REVENUE] == "anomalous"]
    checks_since = sum(1 for day in regression.statuses if day > REGRESSION_DAY)
    assert len(flagged) == checks_since
    [incident] = regression.incidents
    assert incident.details.deploy.commits == (regression.shas["regression"],)
    assert incident.resolved_at is None
    names = [e.name for e in regression.events]
    assert names == ["deploy.checked", "incident.opened"] + ["incident.updated"] * (len(flagged) - 1)
    # The docs-only commit reaches no table: no build for it.
    [checked] = [e.data for e in regression.events if e.name == "deploy.checked"]
    assert (checked["from_sha"], checked["to_sha"]) == (regression.shas["docs"], regression.shas["regression"])


def test_a_regression_behind_an_open_incident_gets_its_own(behind_an_outage: Replay) -> None:
    replay = behind_an_outage
    revenue = [i for i in replay.incidents if i.contract_id == REVENUE]
    assert [(i.first_bad_at, i.first_bad_sha) for i in revenue] == [
        (at(OUTAGE[0] + timedelta(days=1)), replay.shas["clean"]),
        (at(BEHIND_REGRESSION + timedelta(days=1)), replay.shas["regression"])]
    outage, regression = revenue
    # Its own incident, linked to the open one, its suspect range the deploy's commits only.
    assert regression.follows_id == outage.id and outage.details.followed_by == regression.id
    assert (regression.last_good_sha, regression.last_good_at) == (replay.shas["clean"], at(BEHIND_REGRESSION))
    assert regression.details.deploy.commits == (replay.shas["regression"],)
    assert regression.status.is_open and outage.status.is_open  # the regression is still deployed
    # The outage is a data problem: no incident anywhere names the regression's SHA but revenue's own.
    assert [i.id for i in replay.incidents if i.first_bad_sha == replay.shas["regression"]] == [regression.id]
    assert {i.contract_id for i in replay.incidents if i.first_bad_sha == replay.shas["clean"]} >= {
        REVENUE, "payments.daily_amount"}
