"""The invariant: no pull request is ever opened for a revert that did not verify on a clone."""

import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest

from jobs.config import load_config
from jobs.contracts.spec import Contract
from jobs.core.records import (
    BaselineStats,
    Candidate,
    IncidentStatus,
    Observation,
    RankedCause,
    Ranking,
    Verdict,
    Verification,
)
from jobs.forge import branch_name
from jobs.propose.decision import UnverifiedRevert, open_verified_pr, propose
from jobs.runtime import Runtime
from jobs.store import switches
from policies.decide import Action
from policies.model import Mode

NOW = datetime(2026, 11, 23, 1, tzinfo=timezone.utc)
CONTRACT = Contract(id="revenue.net_daily", kind="volume", model="fct_revenue", expr="sum(net_revenue)")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=T", "-c", "user.email=t@e", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def base_repo(tmp_path: Path) -> Path:
    """A git repository with one model at its first commit."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "model.sql").write_text("select 1 as amount\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    return repo


@pytest.fixture
def rt(tmp_path: Path):
    repo = base_repo(tmp_path)
    (repo / "model.sql").write_text("select 1 / 100 as amount\n")
    git(repo, "commit", "-qam", "Divide amounts by 100")
    (tmp_path / "cairn.yml").write_text(f"repo: {repo}\nproject: {repo}\nstore: sqlite:///{tmp_path}/cairn.db\n")
    runtime = Runtime(load_config(tmp_path / "cairn.yml", env={}))
    yield runtime
    runtime.close()


def incident(rt: Runtime):
    bad = rt.store.add_observation(Observation("revenue.net_daily", NOW, 80.0, sha=rt.deployed_sha()))
    return rt.store.open_incident("revenue.net_daily", severity="high", first_bad=bad, last_good=None, value=80.0,
                                  baseline=BaselineStats(100.0, 90.0, 110.0, 28), change_pct=-20.0,
                                  reason="down")


def culprit(rt: Runtime) -> Candidate:
    return Candidate(sha=rt.deployed_sha(), author="T", authored_at=NOW, message="Divide amounts by 100",
                     files=("model.sql",), models=(), distance=1, touches_metric_columns=True)


def verification(sha: str, verdict: Verdict) -> Verification:
    return Verification(sha=sha, verdict=verdict, clone_id="duckdb:incident-1-abc", dbt_command="dbt build",
                        before=80.0, after=100.0 if verdict is Verdict.verified else 81.0, reverted=(sha,))


def branches(rt: Runtime) -> str:
    return git(rt.config.repo_dir, "branch", "--list", "cairn/*")


@pytest.mark.parametrize("verdict", [Verdict.not_recovered, Verdict.conflict, Verdict.build_failed])
def test_an_unverified_revert_never_becomes_a_pr(rt: Runtime, verdict: Verdict) -> None:
    opened, cause = incident(rt), culprit(rt)
    ranking = Ranking((RankedCause(cause.sha, 0.9, "r"),), "scorer")
    from policies.decide import Decision

    with pytest.raises(UnverifiedRevert, match="not verified on a clone"):
        open_verified_pr(rt, opened, CONTRACT, cause, verification(cause.sha, verdict), ranking, [cause],
                         Decision(Action.open_pr, Mode.assisted))
    assert rt.store.pull_request_for(opened.id) is None
    assert branches(rt) == ""


def test_a_verified_range_is_not_a_single_commit_revert(rt: Runtime) -> None:
    """Bisection verifies ranges; only the culprit alone, verified, may be proposed."""
    opened, cause = incident(rt), culprit(rt)
    wide = Verification(sha=cause.sha, verdict=Verdict.verified, clone_id="c", dbt_command="d", before=80.0,
                        after=100.0, reverted=(cause.sha, "f" * 40))
    from policies.decide import Decision

    with pytest.raises(UnverifiedRevert):
        open_verified_pr(rt, opened, CONTRACT, cause, wide, Ranking((), "scorer"), [cause],
                         Decision(Action.open_pr, Mode.assisted))
    assert rt.store.pull_request_for(opened.id) is None


def test_no_fix_escalates_without_a_pr(rt: Runtime) -> None:
    opened = incident(rt)
    proposal = propose(rt, opened, CONTRACT, None, [culprit(rt)])
    assert proposal.decision.action is Action.escalate
    assert proposal.pr is None and proposal.status is IncidentStatus.escalated
    assert branches(rt) == "" and rt.store.pull_request_for(opened.id) is None


def test_kill_switch_pulled_before_the_side_effect_records_only(rt: Runtime) -> None:
    opened, cause = incident(rt), culprit(rt)
    switches.pull(rt.store, "warehouse migration", "U123")
    proposal = propose(rt, opened, CONTRACT, verification(cause.sha, Verdict.verified), [cause])
    assert proposal.decision.action is Action.record_only
    assert any("kill switch pulled by U123" in r for r in proposal.decision.reasons)
    assert proposal.pr is None and branches(rt) == ""
    names = [e.name for e in rt.store.audit_events()]
    assert "kill_switch.pulled" in names


def test_verified_revert_opens_one_pr_whatever_the_retries(rt: Runtime) -> None:
    opened, cause = incident(rt), culprit(rt)
    fix = verification(cause.sha, Verdict.verified)
    first = propose(rt, opened, CONTRACT, fix, [cause])
    again = propose(rt, opened, CONTRACT, fix, [cause])
    assert first.pr is not None and first.status is IncidentStatus.pr_opened
    assert again.pr.number == first.pr.number
    assert branches(rt).split() == [branch_name(opened.id)]
    reverted = git(rt.config.repo_dir, "show", f"{branch_name(opened.id)}:model.sql")
    assert reverted == "select 1 as amount"


def test_observe_mode_set_from_chat_records_only(rt: Runtime) -> None:
    opened, cause = incident(rt), culprit(rt)
    switches.set_mode(rt.store, Mode.observe, "U9", "trial week")
    proposal = propose(rt, opened, CONTRACT, verification(cause.sha, Verdict.verified), [cause])
    assert proposal.decision.action is Action.record_only and proposal.pr is None
