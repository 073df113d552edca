"""The revert search: rank order for a few candidates, ~log2(n) builds for many."""

import math
from datetime import datetime, timedelta, timezone

import pytest

from jobs.core.records import Candidate, Verdict, Verification
from jobs.verify.bisect import find_fix

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


def commits(n: int) -> list[Candidate]:
    return [Candidate(sha=f"{i:040x}", author="a", authored_at=T0 + timedelta(hours=i), message=f"c{i}",
                      files=("models/x.sql",), models=("model.shop.x",), distance=1,
                      touches_metric_columns=None) for i in range(n)]


def world(culprit: Candidate):
    """A warehouse where only reverting `culprit` (alone or with others) recovers the metric."""
    built: list[tuple[str, ...]] = []

    def try_revert(group) -> Verification:
        shas = tuple(c.sha for c in group)
        built.append(shas)
        verdict = Verdict.verified if culprit.sha in shas else Verdict.not_recovered
        return Verification(sha=shas[0], verdict=verdict, clone_id="c", dbt_command="dbt build", before=1.0,
                            after=2.0, reverted=shas)
    return try_revert, built


@pytest.mark.parametrize("n", [1, 3, 4])
def test_few_candidates_are_tried_in_rank_order(n: int) -> None:
    ranked = commits(n)[::-1]
    try_revert, built = world(ranked[-1])
    search = find_fix(ranked, try_revert)
    assert search.fix is not None and search.fix.reverted == (ranked[-1].sha,)
    assert built == [(c.sha,) for c in ranked]


@pytest.mark.parametrize("n", [5, 8, 32, 100])
@pytest.mark.parametrize("position", [0, 1, 0.5, -2, -1])
def test_many_candidates_bisect(n: int, position: float) -> None:
    history = commits(n)
    culprit = history[int(position * (n - 1)) if isinstance(position, float) else position]
    ranked = history[::-1]  # the scorer liked the newest best, and may be wrong
    try_revert, built = world(culprit)
    search = find_fix(ranked, try_revert, max_builds=20)
    assert search.fix is not None and search.fix.reverted == (culprit.sha,)
    assert search.builds <= math.ceil(math.log2(n)) + 3
    assert all(shas == tuple(sorted(shas)) for shas in built[1:]), "suffixes revert in commit order"


def test_top_ranked_right_costs_one_build() -> None:
    history = commits(32)
    try_revert, built = world(history[7])
    assert find_fix([history[7], *history[:7], *history[8:]], try_revert).builds == 1


def test_nothing_recovers_means_no_code_cause() -> None:
    def try_revert(group) -> Verification:
        return Verification(sha=group[0].sha, verdict=Verdict.not_recovered, clone_id="c", dbt_command="d",
                            before=1.0, after=1.0, reverted=tuple(c.sha for c in group))
    search = find_fix(commits(16)[::-1], try_revert)
    assert search.fix is None and search.builds == 2


def test_build_budget_is_respected() -> None:
    history = commits(64)
    try_revert, built = world(history[40])
    search = find_fix(history[::-1], try_revert, max_builds=3)
    assert search.builds == 3 and search.fix is None


def test_no_candidates_no_builds() -> None:
    search = find_fix([], lambda group: pytest.fail("nothing to build"))
    assert search.builds == 0 and search.fix is None


def conflicting_world(culprit: Candidate, follower: str):
    """Reverting `culprit` alone conflicts; with `follower` it recovers."""
    built: list[tuple[str, ...]] = []

    def try_revert(group, followers=()) -> Verification:
        shas = (*followers, *(c.sha for c in group))
        built.append(shas)
        verdict = (Verdict.verified if follower in followers else Verdict.conflict) if culprit.sha in shas \
            else Verdict.not_recovered
        return Verification(sha=group[0].sha, verdict=verdict, clone_id="c", dbt_command="d", before=1.0, after=2.0,
                            reverted=shas, followers=tuple(followers))
    return try_revert, built


def test_a_conflicting_culprit_is_retried_with_its_followers() -> None:
    ranked = commits(3)[::-1]
    follower = "f" * 40
    try_revert, built = conflicting_world(ranked[1], follower)
    search = find_fix(ranked, try_revert, followers=lambda c: (follower,) if c == ranked[1] else ())
    assert built == [(ranked[0].sha,), (ranked[1].sha,), (follower, ranked[1].sha)]
    assert search.fix is not None and search.fix.reverted == (follower, ranked[1].sha)


def test_the_retry_counts_against_the_budget() -> None:
    [culprit] = commits(1)
    try_revert, built = conflicting_world(culprit, "f" * 40)
    search = find_fix([culprit], try_revert, max_builds=1, followers=lambda c: ("f" * 40,))
    assert search.builds == 1 and search.fix is None and search.attempts[0].verdict is Verdict.conflict
    no_followers = find_fix([culprit], try_revert, followers=lambda c: ())
    assert no_followers.builds == 1 and no_followers.fix is None


@pytest.mark.parametrize("position", [0, 3, 6, 7])
def test_a_deploy_checks_build_stands_in_for_reverting_every_candidate(position: int) -> None:
    history = commits(8)
    ranked = history[::-1]
    try_revert, built = world(history[position])
    deploy_reverted = {c.sha for c in history} | {"f" * 40}  # the check also reverted a commit of another contract
    search = find_fix(ranked, try_revert, recovered_without=deploy_reverted)
    assert search.fix is not None and search.fix.reverted == (history[position].sha,)
    assert tuple(c.sha for c in history) not in built  # no build of every candidate at once
    assert built[:2] == [(ranked[0].sha,), (ranked[1].sha,)][:len(built)]  # the top two alone, then bisection
    without = find_fix(ranked, world(history[position])[0])
    assert search.builds <= without.builds <= math.ceil(math.log2(8)) + 3
    assert search.builds == {7: 1, 6: 2}.get(position, search.builds)


def test_the_runner_up_found_right_after_a_deploy_check_costs_two_builds() -> None:
    history = commits(8)
    ranked = [history[3], history[5], *history[:3], history[4], *history[6:]]
    try_revert, built = world(history[5])
    search = find_fix(ranked, try_revert, recovered_without={c.sha for c in history})
    assert built == [(history[3].sha,), (history[5].sha,)] and search.fix.reverted == (history[5].sha,)


def test_a_deploy_check_that_missed_a_candidate_does_not_stand_in() -> None:
    history = commits(8)
    try_revert, built = world(history[2])
    search = find_fix(history[::-1], try_revert, recovered_without={c.sha for c in history[1:]})
    assert tuple(c.sha for c in history) in built and search.fix.reverted == (history[2].sha,)
