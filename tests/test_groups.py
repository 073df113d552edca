"""Incident groups on a real store (SQLite and PostgreSQL) and a real git repository, without dbt.

One deploy breaks several contracts: the incidents one check opens over the same suspect range form
one group whose leader does the work. The mornings are replayed through the real detect stage as
tests/test_lifecycle.py does; the group's PR is opened on the local forge in a real repository.
"""

from __future__ import annotations

import dataclasses
import os
import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from jobs.attribute import groups
from jobs.attribute.attribution import Attribution
from jobs.config import load_config
from jobs.contracts.spec import Contract
from jobs.core.clock import Clock
from jobs.core.records import (
    AttributionDetail,
    Candidate,
    GroupDetail,
    Incident,
    IncidentStatus,
    LeftGroupDetail,
    MemberResult,
    Observation,
    RankedCause,
    Ranking,
    Verdict,
    Verification,
)
from jobs.detect.observe import Change, detect
from jobs.loop.failures import mark_errored
from jobs.loop.queue import RQJobs, perform_review, perform_stage
from jobs.loop.stages import attribute_stage, propose_stage, verify_stage
from jobs.project.lineage import Lineage
from jobs.propose.decision import UnverifiedRevert, propose
from jobs.propose.review import approve, reject
from jobs.runtime import Runtime
from tests.test_propose import base_repo, git
from tests.test_store import store_url  # noqa: F401 - the SQLite/PostgreSQL store URL fixture

DAY0 = datetime(2026, 9, 7, tzinfo=timezone.utc)  # a Monday
REVENUE, ORDERS, MRR = "revenue.net_daily", "orders.daily_count", "mrr.level"
GOOD, OTHER = "a" * 40, "e" * 40


@dataclass
class Shop:
    """Three contracts' daily checks; the deployed SHA is the repository's head unless a test says otherwise."""

    rt: Runtime
    day: int = 0

    def check(self, values: dict[str, float], sha: str | None = None) -> dict[str, object]:
        start = DAY0 + timedelta(days=self.day)
        at = start + timedelta(days=1, hours=1)
        self.rt.clock.set(at)
        outcomes = {}
        for contract in self.rt.config.settings.contracts:
            if contract.id not in values:
                continue
            saved = self.rt.store.add_observation(Observation(contract.id, at, values[contract.id], start,
                                                              start + timedelta(days=1), sha or self.head(),
                                                              {"rows": 400}, count=400))
            outcomes[contract.id] = detect(self.rt, contract, saved)
        self.day += 1
        return outcomes

    def head(self) -> str:
        return self.rt.deployed_sha()

    def healthy_days(self, sha: str, contracts: tuple[str, ...] = (REVENUE, ORDERS)) -> None:
        """Two weeks, enough for a baseline (min_points is 7)."""
        rng = random.Random(11)
        for _ in range(14):
            outcomes = self.check({c: LEVELS[c] * rng.gauss(1, 0.03) for c in contracts}, sha)
            assert all(o.change is Change.none for o in outcomes.values())

    def deploy(self, message: str) -> str:
        repo = self.rt.config.repo_dir
        (repo / "model.sql").write_text("select 1 / 100 as amount\n")
        git(repo, "commit", "-qam", message)
        return self.head()

    def opened(self, outcomes: dict[str, object]) -> list[Incident]:
        return [o.incident for o in outcomes.values() if o.change is Change.opened]


LEVELS = {REVENUE: 20_000.0, ORDERS: 480.0, MRR: 90_000.0}


@pytest.fixture
def shop(tmp_path: Path, store_url: str):  # noqa: F811 - the imported fixture
    repo = base_repo(tmp_path)
    contracts = "".join(f"""
  - id: {contract}
    kind: volume
    model: fct_{contract.split('.')[0]}
    expr: sum(amount)
    time_column: day
    window: day
    direction: drop
""" for contract in LEVELS)
    (tmp_path / "cairn.yml").write_text(f"repo: {repo}\nproject: {repo}\nstore: {store_url}\ncontracts:{contracts}")
    rt = Runtime(load_config(tmp_path / "cairn.yml", env={}), Clock(DAY0))
    try:
        yield Shop(rt)
    finally:
        rt.close()


def contract(shop: Shop, contract_id: str) -> Contract:
    # From cairn.yml alone: `rt.contract` would parse a dbt project, and there is none here.
    return next(c for c in shop.rt.config.settings.contracts if c.id == contract_id)


def broken_together(shop: Shop) -> tuple[list[Incident], str]:
    """Revenue and orders drop in the same deploy, grouped as the check would group them."""
    shop.healthy_days(shop.head())
    bad = shop.deploy("Divide amounts by 100")
    opened = shop.opened(shop.check({REVENUE: 12_000.0, ORDERS: 300.0}))
    assert [i.contract_id for i in opened] == [REVENUE, ORDERS]
    groups.form(shop.rt.store, opened)
    return [shop.rt.store.incident(i.id) for i in opened], bad


# -- grouping at detection time ----------------------------------------------------------------


def test_incidents_one_deploy_opens_over_the_same_range_form_one_group(shop: Shop) -> None:
    (revenue, orders), _ = broken_together(shop)
    assert revenue.group_id == orders.group_id == revenue.id < orders.id  # the lowest ID leads, itself included
    assert groups.leads(revenue) and not groups.leads(orders)
    assert revenue.details.group == orders.details.group == GroupDetail(leader=revenue.id,
                                                                        members=(revenue.id, orders.id))
    assert [i.id for i in groups.members(shop.rt.store, orders)] == [revenue.id, orders.id]
    # Audited once per member, however often the grouping runs (a retried check job).
    groups.form(shop.rt.store, [revenue, orders])
    grouped = [e for e in shop.rt.store.audit_events() if e.name == groups.GROUPED]
    assert sorted(e.incident_id for e in grouped) == [revenue.id, orders.id]
    assert grouped[0].data == {"group": revenue.id, "members": [revenue.id, orders.id]}


def test_different_suspect_ranges_or_none_do_not_group(shop: Shop) -> None:
    shop.healthy_days(GOOD)
    # Revenue drops with no deploy (an empty range, a data problem); orders drops after a deploy.
    revenue = shop.opened(shop.check({REVENUE: 12_000.0}, GOOD))
    orders = shop.opened(shop.check({ORDERS: 300.0}, OTHER))
    assert groups.form(shop.rt.store, revenue + orders) == {}
    assert groups.form(shop.rt.store, revenue) == {}  # an empty range alone
    assert all(shop.rt.store.incident(i.id).group_id is None for i in revenue + orders)
    assert not [e for e in shop.rt.store.audit_events() if e.name == groups.GROUPED]


def test_an_incident_that_follows_another_is_grouped_with_the_deploys_other_incidents(shop: Shop) -> None:
    shop.healthy_days(GOOD)
    [earlier] = shop.opened(shop.check({REVENUE: 14_000.0, ORDERS: 480.0}, GOOD))  # a data problem, no deploy
    outcomes = shop.check({REVENUE: 7_000.0, ORDERS: 300.0}, OTHER)  # a deploy halves it and breaks orders
    follower, orders = shop.opened(outcomes)
    assert follower.follows_id == earlier.id and (follower.last_good_sha, follower.first_bad_sha) == (GOOD, OTHER)
    assert (orders.last_good_sha, orders.first_bad_sha) == (GOOD, OTHER)
    leaders = groups.form(shop.rt.store, [follower, orders])
    assert leaders == {follower.id: follower.id, orders.id: follower.id}
    assert shop.rt.store.incident(earlier.id).group_id is None  # its range is not the deploy's


def test_a_members_stages_do_nothing_its_leader_does_the_work(shop: Shop) -> None:
    (revenue, orders), _ = broken_together(shop)
    for stage, status in ((attribute_stage, IncidentStatus.detected), (verify_stage, IncidentStatus.verifying),
                          (propose_stage, IncidentStatus.verified)):
        shop.rt.store.update_incident(orders.id, status=status)
        assert stage(shop.rt, orders.id) == []
        assert shop.rt.store.incident(orders.id).status is status
    assert not [e for e in shop.rt.store.audit_events(orders.id) if e.name.startswith(("attribution", "decision"))]


def test_a_failing_leader_stops_its_whole_group(shop: Shop) -> None:
    (revenue, orders), _ = broken_together(shop)
    stopped = mark_errored(shop.rt.store, revenue.id, "verify", RuntimeError("disk full"))
    assert stopped == [revenue.id, orders.id]
    for incident in (revenue, orders):
        after = shop.rt.store.incident(incident.id)
        assert after.status is IncidentStatus.errored and after.details.error.reason == "RuntimeError: disk full"
    assert mark_errored(shop.rt.store, revenue.id, "verify", RuntimeError("again")) == []  # written once


# -- partial recovery: who stays, who leaves ----------------------------------------------------


def attempt(sha: str, *results: tuple[int, Verdict], reverted: tuple[str, ...] | None = None) -> Verification:
    members = tuple(MemberResult(i, f"c{i}", verdict, 10.0, 20.0 if verdict is Verdict.verified else 11.0)
                    for i, verdict in results)
    every = all(m.verdict is Verdict.verified for m in members)
    return Verification(sha=sha, verdict=Verdict.verified if every else Verdict.not_recovered, clone_id="c",
                        dbt_command="dbt build", before=10.0, after=members[0].after, reverted=reverted or (sha,),
                        members=members)


def test_the_members_a_tried_revert_brought_back_go_on_with_it_the_most_first() -> None:
    v, n = Verdict.verified, Verdict.not_recovered
    tried = [attempt("a", (1, n), (2, v), (3, n), (4, n)),
             attempt("r", (1, v), (2, v), (3, v), (4, n), reverted=("r", "s")),
             attempt("b", (1, n), (2, v), (3, v), (4, n)), attempt("c", (1, v), (2, n), (3, v), (4, n))]
    parts = groups.partition(tried, [1, 2, 3, 4])
    # b brings back two (a range revert never counts; c ties and is later); then c the one left it can.
    assert [(fix.sha, ids) for fix, ids in parts] == [("b", [2, 3]), ("c", [1])]
    kept, alone = parts[0][0], parts[1][0]
    assert kept.verdict is alone.verdict is Verdict.verified and [m.incident_id for m in kept.members] == [2, 3]
    assert (kept.before, kept.after) == (10.0, 20.0)
    assert groups.partition([attempt("d", (1, n), (2, n))], [1, 2]) == []


def test_a_member_the_fix_does_not_recover_leaves_and_runs_its_own_loop(shop: Shop) -> None:
    (revenue, orders), bad = broken_together(shop)
    store = shop.rt.store
    for incident in (revenue, orders):
        store.update_incident(incident.id, status=IncidentStatus.verifying, details={
            "attribution": AttributionDetail(ranking=Ranking((), "scorer"))})
    left = groups.leave(store, store.incident(revenue.id), groups.NOT_RECOVERED, fix=bad)
    assert left.group_id is None and left.status is IncidentStatus.detected
    assert left.details.attribution is None and left.details.group is None  # its own loop recomputes them
    assert left.details.left_group == LeftGroupDetail(group=revenue.id, why="not_recovered", fix=bad)
    assert groups.run_label(left) == f"own{revenue.id}"
    theirs = AttributionDetail(ranking=Ranking((RankedCause(bad, 0.9, "the group's"),), "scorer"))
    [alone] = groups.regroup(store, [store.incident(orders.id)], {"group_attribution": theirs}, fix=bad)
    # A group of one is no group: the last member goes on alone, with the attribution its fix came from.
    assert alone.group_id is None and alone.status is IncidentStatus.verifying
    assert alone.details.left_group == LeftGroupDetail(group=revenue.id, why="split", fix=bad)
    assert groups.run_label(alone) == ""  # it verifies nothing again: its next job is its own propose
    assert alone.details.group_attribution == theirs
    events = [(e.incident_id, e.data["why"]) for e in store.audit_events() if e.name == groups.LEFT]
    assert events == [(revenue.id, "not_recovered"), (orders.id, "split")]


def test_when_the_leader_leaves_the_lowest_remaining_member_leads(shop: Shop) -> None:
    shop.healthy_days(shop.head(), (REVENUE, ORDERS, MRR))
    shop.deploy("Divide amounts by 100")
    opened = shop.opened(shop.check({REVENUE: 12_000.0, ORDERS: 300.0, MRR: 50_000.0}))
    groups.form(shop.rt.store, opened)
    leader, *rest = [shop.rt.store.incident(i.id) for i in opened]
    groups.leave(shop.rt.store, leader, groups.NOT_RECOVERED)
    theirs = AttributionDetail(ranking=Ranking((), "scorer"))
    regrouped = groups.regroup(shop.rt.store, rest, {"group_attribution": theirs})
    assert [i.group_id for i in regrouped] == [rest[0].id, rest[0].id]
    assert regrouped[0].details.group == GroupDetail(leader=rest[0].id, members=tuple(r.id for r in rest))
    assert regrouped[0].details.group_attribution == theirs and regrouped[1].details.group_attribution is None


# -- one PR for the group, and review acting on it from any member's card ----------------------


def open_group_pr(shop: Shop) -> tuple[list[Incident], Verification]:
    (revenue, orders), bad = broken_together(shop)
    cause = Candidate(sha=bad, author="T", authored_at=DAY0, message="Divide amounts by 100", files=("model.sql",),
                      models=(), distance=1, touches_metric_columns=True)
    fix = attempt(bad, (revenue.id, Verdict.verified), (orders.id, Verdict.verified))
    proposal = propose(shop.rt, revenue, contract(shop, REVENUE), fix, [cause],
                       group=[(orders, contract(shop, ORDERS))])
    assert proposal.status is IncidentStatus.pr_opened
    for incident in (revenue, orders):  # as the leader's propose stage moves its members
        shop.rt.store.update_incident(incident.id, status=proposal.status, details={"pr": proposal.pr})
    return [shop.rt.store.incident(i.id) for i in (revenue, orders)], fix


def test_one_pr_for_the_group_names_every_incident_it_recovers(shop: Shop) -> None:
    (revenue, orders), _ = open_group_pr(shop)
    store = shop.rt.store
    pr = groups.pull_request(store, orders)
    assert pr is not None and pr == groups.pull_request(store, revenue) and pr.incident_id == revenue.id
    assert store.pull_request_for(orders.id) is None  # one PR, recorded once: the leader's
    assert f"{REVENUE} {revenue.change_pct:+.1f}% and 1 more, Cairn #{revenue.id})" in pr.title
    body = store.pull_request_row(revenue.id)["body"]
    assert "### Incidents this revert recovers" in body
    assert f"| #{orders.id} | `{ORDERS}` | {orders.change_pct:+.1f}% | 10 | 20 | verified |" in body
    assert f"for incidents #{revenue.id}, #{orders.id}." in body
    assert git(shop.rt.config.repo_dir, "branch", "--list", "cairn/*").split() == [f"cairn/incident-{revenue.id}"]


def test_a_group_revert_that_left_a_member_behind_is_never_a_pr(shop: Shop) -> None:
    (revenue, orders), bad = broken_together(shop)
    cause = Candidate(sha=bad, author="T", authored_at=DAY0, message="m", files=(), models=(), distance=1,
                      touches_metric_columns=True)
    behind = dataclasses.replace(attempt(bad, (revenue.id, Verdict.verified), (orders.id, Verdict.not_recovered)),
                                 verdict=Verdict.verified)  # even if a caller claims the group verified
    with pytest.raises(UnverifiedRevert, match=f"for #{orders.id}"):
        propose(shop.rt, revenue, contract(shop, REVENUE), behind, [cause], group=[(orders, contract(shop, ORDERS))])
    assert groups.pull_request(shop.rt.store, revenue) is None


def test_approve_on_a_members_card_merges_the_groups_pr_and_every_member(shop: Shop) -> None:
    (revenue, orders), _ = open_group_pr(shop)
    pr = groups.pull_request(shop.rt.store, orders)
    assert approve(shop.rt, orders.id, pr.head_sha, "slack:U1") == [revenue.id, orders.id]
    assert shop.rt.store.pull_request_for(revenue.id).state == "merged"
    for incident in (revenue, orders):
        after = shop.rt.store.incident(incident.id)
        assert after.status is IncidentStatus.merged and after.details.merge.by == "slack:U1"
        assert [e.name for e in shop.rt.store.audit_events(incident.id)].count("pr.merged") == 1
    assert approve(shop.rt, revenue.id, pr.head_sha, "slack:U2") == []  # a repeated click on the other card


def test_reject_on_a_members_card_closes_the_groups_pr_and_rejects_every_member(shop: Shop) -> None:
    (revenue, orders), _ = open_group_pr(shop)
    assert reject(shop.rt, orders.id, "the division is intended", "slack:U1") == [revenue.id, orders.id]
    assert shop.rt.store.pull_request_for(revenue.id).state == "closed"
    for incident in (revenue, orders):
        after = shop.rt.store.incident(incident.id)
        assert after.status is IncidentStatus.rejected
        assert after.details.rejection.reason == "the division is intended"


# -- the group's suspects ----------------------------------------------------------------------


def suspect(sha: str, model: str, distance: int) -> Candidate:
    return Candidate(sha=sha, author="T", authored_at=DAY0, message=sha, files=(f"models/{model}.sql",),
                     models=(f"model.shop.{model}",), distance=distance, touches_metric_columns=True)


def lineage(metric: str, *chain: str) -> Lineage:
    nodes = [f"model.shop.{m}" for m in (*chain, metric)]
    return Lineage(root=nodes[-1], names={n: n.rsplit(".", 1)[1] for n in nodes},
                   distances={n: len(nodes) - 1 - i for i, n in enumerate(nodes)},
                   edges=tuple(zip(nodes, nodes[1:])), node_files={})


def test_a_commit_that_may_explain_several_members_leads_the_groups_ranking_with_all_it_touches() -> None:
    macro, decoy = "m" * 40, "d" * 40
    revenue = Attribution(lineage("fct_revenue", "stg_payments", "fct_orders", "stg_orders"),
                          (suspect(macro, "stg_payments", 3), suspect(decoy, "stg_orders", 1)),
                          Ranking((RankedCause(decoy, 0.6, "Close."), RankedCause(macro, 0.3, "Far.")), "scorer"))
    mrr = Attribution(lineage("fct_mrr", "stg_plans"), (suspect(macro, "stg_plans", 1),),
                      Ranking((RankedCause(macro, 0.8, "Its own model's parent."),), "scorer"))
    suspects = groups.group_attribution({1: revenue, 2: mrr})
    ranking = suspects.ranking
    assert [c.sha for c in ranking.causes] == [macro, decoy]  # 0.3 + 0.8 over the decoy's 0.6 for one
    assert ranking.causes[0].confidence == 0.8 and ranking.causes[0].rationale == (
        "It touches the lineage of 2 of the group's 2 metrics. Its own model's parent.")
    assert ranking.causes[1].rationale.startswith("It touches the lineage of 1 of the group's 2 metrics.")
    [group_macro] = [c for c in suspects.candidates if c.sha == macro]
    # Its revert must rebuild every model it touches in any member's lineage, not only the leader's.
    assert group_macro.models == ("model.shop.stg_payments", "model.shop.stg_plans")
    assert group_macro.distance == 1 and suspects.lineage_path[macro] == ["stg_plans", "fct_mrr"]


# -- the queue: whose cards refresh, whose stages run ------------------------------------------


@pytest.fixture
def redis():
    from redis import Redis

    connection = Redis.from_url(os.environ.get("CAIRN_TEST_REDIS_URL", "redis://127.0.0.1:6379/13"))
    connection.flushdb()
    yield connection
    connection.flushdb()


def test_a_review_on_a_members_card_refreshes_every_card_of_the_group(shop: Shop, redis) -> None:
    (revenue, orders), _ = open_group_pr(shop)
    jobs = RQJobs(shop.rt.config, redis, shop.rt.clock)
    pr = groups.pull_request(shop.rt.store, orders)
    perform_review(shop.rt, jobs, "approve", orders.id, "slack:U1", pr.head_sha)
    assert sorted(job.args[0] for job in jobs.notifications.jobs) == [revenue.id, orders.id]
    assert jobs.stages.count == 0


def test_a_members_own_stage_job_only_refreshes_its_card(shop: Shop, redis) -> None:
    (revenue, orders), _ = broken_together(shop)
    jobs = RQJobs(shop.rt.config, redis, shop.rt.clock)
    perform_stage(shop.rt, jobs, "attribute", orders.id, may_retry=False)
    assert [job.args[0] for job in jobs.notifications.jobs] == [orders.id] and jobs.stages.count == 0


def test_a_member_that_left_runs_its_own_jobs_beside_the_groups(shop: Shop, redis) -> None:
    (revenue, _orders), _ = broken_together(shop)
    jobs = RQJobs(shop.rt.config, redis, shop.rt.clock)
    jobs.stage("attribute", revenue.id)  # the group's, run by its leader: its job is kept after it finished
    left = groups.leave(shop.rt.store, revenue, groups.NOT_RECOVERED)
    jobs.stage("attribute", revenue.id, run=groups.run_label(left))  # RQ refuses a second job with one ID
    assert jobs.stages.job_ids == [f"cairn-attribute-{revenue.id}", f"cairn-attribute-{revenue.id}-own{revenue.id}"]
