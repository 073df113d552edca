"""An incident's life with more than one cause: a regression on top of an open incident gets its own.

Each test replays a contract's mornings through the real detect stage on a real store (SQLite and
PostgreSQL): four healthy weeks, then what the test is about. No dbt: the observations are written
as `observe` would write them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from jobs.config import load_config
from jobs.core.clock import Clock
from jobs.core.records import FollowsDetail, IncidentStatus, Observation
from jobs.detect.observe import Change, Outcome, detect
from jobs.detect.recovery import recovery_band
from jobs.runtime import Runtime
from tests.test_store import store_url  # noqa: F401 - the SQLite/PostgreSQL store URL fixture

DAY0 = datetime(2026, 9, 7, tzinfo=timezone.utc)  # a Monday
CONTRACT = "revenue.net_daily"
GOOD, BAD, WORSE, FIX = "a" * 40, "b" * 40, "c" * 40, "d" * 40


@dataclass
class Mornings:
    """One contract's daily checks, each a measured value at the SHA deployed that morning."""

    rt: Runtime
    day: int = 0

    def check(self, value: float, sha: str) -> Outcome:
        start = DAY0 + timedelta(days=self.day)
        at = start + timedelta(days=1, hours=1)
        self.rt.clock.set(at)
        saved = self.rt.store.add_observation(Observation(CONTRACT, at, value, start, start + timedelta(days=1), sha,
                                                          {"rows": 400}, count=400))
        self.day += 1
        return detect(self.rt, self.contract, saved)

    @property
    def contract(self):
        # From cairn.yml alone: `rt.contract` would parse a dbt project, and there is none here.
        return self.rt.config.settings.contracts[0]

    def healthy_weeks(self, weeks: int = 4, level: float = 20_000.0) -> None:
        rng = random.Random(11)
        for _ in range(7 * weeks):
            assert self.check(level * rng.gauss(1, 0.04), GOOD).change is Change.none


@pytest.fixture
def mornings(tmp_path: Path, store_url: str):  # noqa: F811 - the imported fixture
    (tmp_path / "cairn.yml").write_text(f"""
store: {store_url}
contracts:
  - id: {CONTRACT}
    kind: volume
    model: fct_revenue
    expr: sum(net_revenue)
    time_column: revenue_date
    window: day
    direction: both
""")
    rt = Runtime(load_config(tmp_path / "cairn.yml", env={}), Clock(DAY0))
    try:
        yield Mornings(rt)
    finally:
        rt.close()


def test_a_deploy_that_makes_an_open_incident_worse_gets_an_incident_of_its_own(mornings: Mornings) -> None:
    mornings.healthy_weeks()
    first = mornings.check(14_000, GOOD)  # -30% with no deploy: a data problem, escalated with no code cause
    assert first.change is Change.opened
    mornings.rt.store.update_incident(first.incident.id, status=IncidentStatus.escalated,
                                      details={"verdict": "no_code_cause"})
    assert mornings.check(14_300, GOOD).change is Change.updated

    worse = mornings.check(7_000, BAD)  # a deploy lands and halves what was left
    assert worse.change is Change.opened and worse.incident.id != first.incident.id
    follower = worse.incident
    assert follower.follows_id == first.incident.id
    # Its suspect range is that deploy alone: the last morning at the old code to the first at the new.
    assert (follower.last_good_sha, follower.first_bad_sha) == (GOOD, BAD)
    assert follower.details.follows == FollowsDetail(incident=first.incident.id, level=14_300, sha=GOOD,
                                                     at=DAY0 + timedelta(days=30, hours=1))
    root = mornings.rt.store.incident(first.incident.id)
    assert worse.others == (root,) and root.details.followed_by == follower.id
    assert [i.id for i in mornings.rt.store.open_incidents_for(CONTRACT)] == [root.id, follower.id]
    events = [e.name for e in mornings.rt.store.audit_events(root.id)]
    assert events == ["incident.opened", "incident.updated", "incident.followed"]

    # Reverting the deploy brings the metric back to where the data problem had it, not to the baseline.
    band = recovery_band(mornings.contract, follower)
    assert band.contains(14_000) and not band.contains(7_000) and not band.contains(band.lower - 1)
    assert band.upper == float("inf")  # a drop recovers at or above the edge


def test_the_same_level_under_new_code_stays_the_open_incident(mornings: Mornings) -> None:
    mornings.healthy_weeks()
    opened = mornings.check(14_000, GOOD).incident
    again = mornings.check(13_600, BAD)  # a deploy that changes nothing this metric shows
    assert (again.change, again.incident.id) == (Change.updated, opened.id)
    assert len(mornings.rt.store.open_incidents_for(CONTRACT)) == 1


def test_a_worse_morning_without_a_deploy_is_the_same_incident(mornings: Mornings) -> None:
    mornings.healthy_weeks()
    opened = mornings.check(14_000, GOOD).incident
    deeper = mornings.check(7_000, GOOD)  # no code changed: nothing new to attribute
    assert (deeper.change, deeper.incident.id) == (Change.updated, opened.id)


def test_a_deploy_that_swings_the_other_way_is_new(mornings: Mornings) -> None:
    mornings.healthy_weeks()
    root = mornings.check(14_000, GOOD).incident
    swung = mornings.check(30_000, BAD)  # double counting after the deploy: anomalous the other way
    assert swung.change is Change.opened and swung.incident.follows_id == root.id
    assert recovery_band(mornings.contract, swung.incident).lower == float("-inf")  # a rise recovers below


def test_a_fix_for_the_later_deploy_closes_its_incident_and_keeps_the_earlier_one(mornings: Mornings) -> None:
    mornings.healthy_weeks()
    root = mornings.check(14_000, GOOD).incident
    follower = mornings.check(7_000, BAD).incident
    undone = mornings.check(14_200, FIX)  # the revert of BAD shipped: back to the data problem's level
    assert undone.change is Change.resolved and undone.incident.id == follower.id
    assert undone.incident.status is IncidentStatus.resolved
    assert [i.id for i in undone.others] == [root.id] and undone.others[0].value == 14_200
    assert [i.id for i in mornings.rt.store.open_incidents_for(CONTRACT)] == [root.id]


def test_a_healthy_morning_closes_the_whole_chain(mornings: Mornings) -> None:
    mornings.healthy_weeks()
    root = mornings.check(14_000, GOOD).incident
    mornings.rt.store.update_incident(root.id, status=IncidentStatus.escalated, details={"verdict": "no_code_cause"})
    follower = mornings.check(7_000, BAD).incident
    back = mornings.check(20_400, FIX)  # the data came back and the deploy was reverted
    assert back.change is Change.resolved
    assert {back.incident.id, *(i.id for i in back.others)} == {root.id, follower.id}
    assert mornings.rt.store.open_incidents_for(CONTRACT) == []


def test_a_data_problem_resolves_on_the_first_healthy_morning(mornings: Mornings) -> None:
    """No code was to blame, so there is no culprit to lose from a suspect range by closing early."""
    mornings.healthy_weeks()
    root = mornings.check(14_000, GOOD).incident
    mornings.rt.store.update_incident(root.id, status=IncidentStatus.escalated, details={"verdict": "no_code_cause"})
    back = mornings.check(19_800, GOOD)
    assert (back.change, back.incident.id) == (Change.resolved, root.id)


def test_a_code_regression_needs_three_healthy_mornings_under_the_same_code(mornings: Mornings) -> None:
    mornings.healthy_weeks()
    root = mornings.check(14_000, BAD).incident
    assert mornings.check(19_800, BAD).change is Change.none  # one quiet day is not a recovery
    assert mornings.check(20_100, BAD).change is Change.none
    third = mornings.check(20_300, BAD)
    assert (third.change, third.incident.id) == (Change.resolved, root.id)
