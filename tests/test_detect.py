"""The detect stage on the built example warehouse, with real git commits for the deployed SHAs."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path

import pytest

from jobs.core.records import AssessmentStatus, IncidentStatus
from jobs.detect.backfill import backfill
from jobs.detect.observe import Change, Outcome
from jobs.runtime import Runtime
from jobs.store.store import Store
from tests.conftest import SHOP_START
from tests.deployment import Deployment, at, check_at, deploy_shop, sqlite_url

REVENUE = "revenue.net_daily"
# built_shop holds 2026-09-01 … 2026-10-05; the regression lands on the last day, a Monday.
BACKFILL_AT = at(date(2026, 10, 4))  # baselines for the windows 09-05 … 10-02
CLEAN_CHECKS = (at(date(2026, 10, 4)), at(date(2026, 10, 5)))  # windows 10-03 and 10-04
REGRESSION_LANDS = at(date(2026, 10, 5), 10)
FIRST_BAD = at(date(2026, 10, 6))  # window 10-05, built by the regressing code
REVERT_LANDS = datetime(2026, 10, 6, 2, 30, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Shop:
    """One deployment and the commits that can be deployed on it, each with the warehouse it built."""

    deployment: Deployment
    clean: str
    regressed: str
    reverted: str
    warehouses: dict[str, Path]
    backfilled_store: Path  # 28 days of baselines from the clean deploy; copy it, never write it

    @contextmanager
    def deployed(self, sha: str, store: Path, policy: str | None = None) -> Iterator[Runtime]:
        """Deploy `sha` (code and tables), then give a Runtime on it with `store` (and a policy file
        holding `policy`, named by cairn.yml in the working tree until the next deploy)."""
        self.deployment.checkout(sha)
        if policy is not None:
            path = self.deployment.root / ".cairn" / "policy.yml"
            path.parent.mkdir(exist_ok=True)
            path.write_text(policy)
            config = self.deployment.config_path
            config.write_text(config.read_text().replace("policy: null", f"policy: {path}"))
        staged = self.deployment.warehouse.with_suffix(".staged")
        shutil.copyfile(self.warehouses[sha], staged)
        os.replace(staged, self.deployment.warehouse)  # a new file: no reader sees it half-written
        rt = self.deployment.runtime(sqlite_url(store))
        try:
            yield rt
        finally:
            rt.close()

    def store_with_baselines(self, directory: Path) -> Path:
        path = directory / "cairn.db"
        shutil.copyfile(self.backfilled_store, path)
        return path

    def checked_clean(self, directory: Path) -> Path:
        """A store with baselines whose last check saw the clean deploy: the next deploy is news."""
        path = self.store_with_baselines(directory)
        with self.deployed(self.clean, path) as rt:
            check_at(rt, CLEAN_CHECKS[1])
        return path


@pytest.fixture(scope="module")
def shop(built_shop, tmp_path_factory: pytest.TempPathFactory) -> Shop:
    root = tmp_path_factory.mktemp("detect")
    deployment = deploy_shop(root / "shop", built_shop.db_path, at(SHOP_START, 9))
    clean = deployment.head()
    shutil.copyfile(deployment.warehouse, root / "clean.duckdb")
    rt = deployment.runtime(sqlite_url(root / "backfilled.db"))
    try:
        report = backfill(rt, BACKFILL_AT, 28)
    finally:
        rt.close()
    assert (report.windows, report.anomalous) == (28, 0)

    regressed = deployment.land_regression(REGRESSION_LANDS)
    deployment.rebuild()
    shutil.copyfile(deployment.warehouse, root / "regressed.duckdb")
    deployment.git.run("revert", "--no-commit", regressed)
    reverted = deployment.commit(f"Revert {regressed[:7]}: coupon and PayPal payments are revenue", REVERT_LANDS)

    warehouses = {clean: root / "clean.duckdb", regressed: root / "regressed.duckdb",
                  reverted: root / "clean.duckdb"}
    return Shop(deployment, clean, regressed, reverted, warehouses, root / "backfilled.db")


@dataclass(frozen=True)
class Story:
    """What each check did as the regression landed, was re-measured, and was reverted."""

    steps: dict[str, list[Outcome]]
    store_url: str

    def revenue(self, step: str) -> Outcome:
        [outcome] = [o for o in self.steps[step] if o.contract.id == REVENUE]
        return outcome


@pytest.fixture(scope="module")
def story(shop: Shop, tmp_path_factory: pytest.TempPathFactory) -> Story:
    store = shop.store_with_baselines(tmp_path_factory.mktemp("story"))
    steps = {}
    with shop.deployed(shop.clean, store) as rt:
        steps["clean 10-03"] = check_at(rt, CLEAN_CHECKS[0])
        steps["clean 10-04"] = check_at(rt, CLEAN_CHECKS[1])
    with shop.deployed(shop.regressed, store) as rt:
        steps["regressed"] = check_at(rt, FIRST_BAD)
        steps["regressed, an hour later"] = check_at(rt, at(date(2026, 10, 6), 2))
    with shop.deployed(shop.reverted, store) as rt:
        steps["reverted"] = check_at(rt, at(date(2026, 10, 6), 3))
    return Story(steps, sqlite_url(store))


@pytest.fixture
def store_of() -> Iterator:
    """Open stores by URL and close them after the test."""
    opened: list[Store] = []

    def open_store(url: str) -> Store:
        opened.append(Store.open(url))
        return opened[-1]

    yield open_store
    for store in opened:
        store.close()


def test_clean_data_changes_nothing(story: Story) -> None:
    for step in ("clean 10-03", "clean 10-04"):
        assert {o.change for o in story.steps[step]} == {Change.none}
        assert AssessmentStatus.anomalous not in {o.assessment.status for o in story.steps[step]}
    assert story.revenue("clean 10-04").assessment.status is AssessmentStatus.healthy


def test_an_anomalous_observation_opens_an_incident_with_last_good_and_first_bad(shop: Shop, story: Story,
                                                                                  store_of) -> None:
    opened = story.revenue("regressed")
    last_good = story.revenue("clean 10-04").observation
    assert opened.change is Change.opened
    assert opened.assessment.status is AssessmentStatus.anomalous
    assert opened.assessment.change_pct < -10
    assert [o.contract.id for o in story.steps["regressed"] if o.change is not Change.none] == [REVENUE]

    incident = opened.incident
    assert (incident.contract_id, incident.status, incident.severity) == (REVENUE, IncidentStatus.detected, "high")
    assert (incident.first_bad_at, incident.first_bad_sha) == (FIRST_BAD, shop.regressed)
    assert incident.first_bad_observation_id == opened.observation.id
    assert (incident.last_good_at, incident.last_good_sha) == (CLEAN_CHECKS[1], shop.clean)
    assert incident.last_good_observation_id == last_good.id
    assert incident.value == opened.observation.value
    assert incident.baseline.seasonal and incident.baseline.n == 28  # four weeks, Mondays their own effect
    assert incident.baseline.expected * 0.9 > incident.value
    # A 24% drop hides in this noisy shop's band (|z| near 3); the deploy check saw the code's own effect.
    assert abs(opened.assessment.z) < 3.7
    deploy = incident.details.deploy
    assert (deploy.from_sha, deploy.to_sha, deploy.commits) == (shop.clean, shop.regressed, (shop.regressed,))
    assert deploy.with_deploy == incident.value and deploy.without * 0.8 > incident.value
    assert opened.assessment.reason.startswith(f"deploy {shop.regressed[:7]} changes "
                                               "sum(net_revenue) by -2")

    store = store_of(story.store_url)
    flagged = {o.id: o.anomalous for o in store.observations(REVENUE)}
    assert flagged[opened.observation.id] and not flagged[last_good.id]


def test_a_second_anomalous_observation_updates_the_same_incident(story: Story, store_of) -> None:
    opened, again = story.revenue("regressed"), story.revenue("regressed, an hour later")
    assert again.change is Change.updated
    assert again.incident.id == opened.incident.id
    assert again.incident.status.is_open
    assert again.incident.first_bad_observation_id == opened.observation.id  # the first bad stays first
    assert again.incident.updated_at > opened.incident.updated_at

    store = store_of(story.store_url)
    assert [i.id for i in store.incidents() if i.contract_id == REVENUE] == [opened.incident.id]
    [updated] = [e for e in store.audit_events(opened.incident.id) if e.name == "incident.updated"]
    assert updated.data["observation_id"] == again.observation.id


def test_a_healthy_observation_resolves_the_incident(shop: Shop, story: Story, store_of) -> None:
    resolved = story.revenue("reverted")
    assert resolved.assessment.status is AssessmentStatus.healthy
    assert resolved.change is Change.resolved
    assert resolved.observation.sha == shop.reverted
    assert resolved.incident.id == story.revenue("regressed").incident.id
    assert resolved.incident.status is IncidentStatus.resolved
    assert resolved.incident.resolved_at == at(date(2026, 10, 6), 3)

    store = store_of(story.store_url)
    assert store.open_incident_for(REVENUE) is None
    assert store.incidents(open_only=True) == []


def test_every_transition_is_audited_and_nothing_else(shop: Shop, story: Story, store_of) -> None:
    store = store_of(story.store_url)
    incident_id = story.revenue("regressed").incident.id
    everything = store.audit_events()
    assert [(e.name, e.incident_id, e.actor) for e in everything] == [
        ("deploy.checked", None, "cairn"),  # the regressing deploy, measured on a clone
        ("incident.opened", incident_id, "cairn"),
        ("incident.updated", incident_id, "cairn"),
        ("incident.resolved", incident_id, "cairn"),
        ("deploy.checked", None, "cairn"),  # the revert's deploy: a rise, which revenue does not alert on
    ]
    checked = [e.data for e in everything if e.name == "deploy.checked"]
    assert [(d["from_sha"], d["to_sha"]) for d in checked] == [(shop.clean, shop.regressed),
                                                               (shop.regressed, shop.reverted)]
    assert [[(x["contract"], x["material"]) for x in d["effects"] if x["contract"] == REVENUE] for d in checked] \
        == [[(REVENUE, True)], [(REVENUE, False)]]
    events = [e for e in everything if e.incident_id is not None]
    steps = ("regressed", "regressed, an hour later", "reverted")
    assert [e.data["observation_id"] for e in events] == [story.revenue(s).observation.id for s in steps]
    assert [e.data["sha"] for e in events] == [shop.regressed, shop.regressed, shop.reverted]
    assert {e.data["window_start"] for e in events} == {"2026-10-05T00:00:00+00:00"}


def test_learning_does_nothing(shop: Shop, tmp_path: Path, store_of) -> None:
    with shop.deployed(shop.regressed, tmp_path / "cairn.db") as rt:
        outcomes = check_at(rt, FIRST_BAD)  # the regressed day, but no history to judge it by
    [revenue] = [o for o in outcomes if o.contract.id == REVENUE]
    assert revenue.assessment.status is AssessmentStatus.learning
    assert revenue.assessment.reason == "learning: 0 of 14 baseline points"
    assert {o.change for o in outcomes} == {Change.none}
    assert {o.incident for o in outcomes} == {None}

    store = store_of(sqlite_url(tmp_path / "cairn.db"))
    assert store.incidents() == [] and store.audit_events() == []
    assert [o.anomalous for o in store.observations(REVENUE)] == [False]


def test_rebaseline_since_makes_the_old_level_irrelevant(shop: Shop, tmp_path: Path, store_of) -> None:
    path = shop.store_with_baselines(tmp_path)
    store = store_of(sqlite_url(path))
    since = datetime(2026, 10, 5, tzinfo=timezone.utc)  # the day the change landed, on purpose
    store.rebaseline(REVENUE, since, actor="dana", reason="coupons and PayPal settle in a later release")

    with shop.deployed(shop.regressed, path) as rt:
        outcomes = {o.contract.id: o for o in check_at(rt, FIRST_BAD)}
    revenue = outcomes[REVENUE]
    assert revenue.assessment.status is AssessmentStatus.learning
    assert revenue.assessment.reason == "learning: 0 of 14 baseline points"
    assert revenue.change is Change.none and revenue.incident is None
    # A rebaseline is per contract: the payments total keeps its four weeks of history.
    assert outcomes["payments.daily_amount"].assessment.status is AssessmentStatus.healthy
    assert outcomes["payments.daily_amount"].assessment.baseline.n > 20
    assert store.incidents() == []
    # The deploy is checked for the contracts that judge it; a learning one is not among them.
    [checked] = store.audit_events()
    assert checked.name == "deploy.checked"
    assert REVENUE not in {e["contract"] for e in checked.data["effects"]}
    assert not any(e["material"] for e in checked.data["effects"])


def test_deploy_checks_off_in_the_policy_leave_it_to_the_statistics(shop: Shop, tmp_path: Path, store_of) -> None:
    path = shop.checked_clean(tmp_path)
    with shop.deployed(shop.regressed, path, policy="deploy_checks: {skip: ['fct_revenue']}\n") as rt:
        outcomes = {o.contract.id: o for o in check_at(rt, FIRST_BAD)}
    assert outcomes[REVENUE].change is Change.none  # the -24% drop stays inside its noisy band
    store = store_of(sqlite_url(path))
    [checked] = [e.data for e in store.audit_events() if e.name == "deploy.checked"]
    assert REVENUE not in {e["contract"] for e in checked["effects"]}  # the others still are checked
    assert "orders.daily_count" in {e["contract"] for e in checked["effects"]}

    with shop.deployed(shop.reverted, path, policy="deploy_checks: {enabled: false}\n") as rt:
        check_at(rt, at(date(2026, 10, 6), 3))
    assert [e.name for e in store.audit_events()].count("deploy.checked") == 1


def test_an_intended_change_rebaselines_instead_of_paging(shop: Shop, tmp_path: Path, store_of) -> None:
    from bot.demo import REGRESSION

    path = shop.checked_clean(tmp_path)
    REGRESSION.apply(shop.deployment.root)
    intended = shop.deployment.commit("Settled methods only, as finance asked [cairn:intentional]", REGRESSION_LANDS)
    shop.warehouses[intended] = shop.warehouses[shop.regressed]
    with shop.deployed(intended, path) as rt:
        outcomes = {o.contract.id: o for o in check_at(rt, FIRST_BAD)}
    assert outcomes[REVENUE].change is Change.none and outcomes[REVENUE].incident is None
    store = store_of(sqlite_url(path))
    assert store.incidents() == []
    [rebaselined] = [e for e in store.audit_events() if e.name == "contract.rebaselined"]
    assert rebaselined.data["contract"] == REVENUE and rebaselined.data["commit"] == intended
    assert store.baseline_since(REVENUE) == datetime(2026, 10, 5, tzinfo=timezone.utc)  # the window it landed in
