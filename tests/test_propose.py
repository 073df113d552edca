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
from jobs.project.followers import conflicting_followers
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


# --- a culprit whose revert conflicts: reverted with the later commits that change its lines ------------

MODEL = "select\n  1 as amount,\n  'a' as a,\n  'b' as b,\n  'c' as c,\n  2 as qty\nfrom orders\n"


@pytest.fixture
def followed(tmp_path: Path):
    """A culprit, a later commit rewriting its line, and two decoys: the same file elsewhere, another file."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "model.sql").write_text(MODEL)
    (repo / "other.sql").write_text("select 1\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    sha = {}
    for name, message, path, old, new in [
        ("culprit", "Divide amounts by 100", "model.sql", "1 as amount", "1 / 100 as amount"),
        ("follower", "Round amounts", "model.sql", "1 / 100 as amount", "round(1 / 100, 2) as amount"),
        ("same_file", "Rename qty", "model.sql", "2 as qty", "2 as quantity"),
        ("other_file", "Touch other", "other.sql", "select 1", "select 2"),
    ]:
        (repo / path).write_text((repo / path).read_text().replace(old, new))
        git(repo, "commit", "-qam", message)
        sha[name] = git(repo, "rev-parse", "HEAD")
    (tmp_path / "cairn.yml").write_text(f"repo: {repo}\nproject: {repo}\nstore: sqlite:///{tmp_path}/cairn.db\n")
    runtime = Runtime(load_config(tmp_path / "cairn.yml", env={}))
    yield runtime, sha
    runtime.close()


def culprit_of(sha: dict[str, str]) -> Candidate:
    return Candidate(sha=sha["culprit"], author="T", authored_at=NOW, message="Divide amounts by 100",
                     files=("model.sql",), models=(), distance=0, touches_metric_columns=True)


def group_fix(culprit_sha: str, *followers: str) -> Verification:
    return Verification(sha=culprit_sha, verdict=Verdict.verified, clone_id="duckdb:incident-1-abc",
                        dbt_command="dbt build", before=80.0, after=100.0, reverted=(*followers, culprit_sha),
                        followers=followers)


def test_conflicting_followers_are_the_later_commits_of_the_same_lines(followed) -> None:
    rt, sha = followed
    deployed = rt.deployed_sha()
    assert conflicting_followers(rt.config.repo_dir, sha["culprit"], deployed) == (sha["follower"],)
    assert conflicting_followers(rt.config.repo_dir, sha["same_file"], deployed) == ()  # reverts alone
    assert conflicting_followers(rt.config.repo_dir, sha["culprit"], deployed, limit=0) == ()  # over the bound
    assert git(rt.config.repo_dir, "worktree", "list").count("\n") == 0  # only the checkout


def test_a_verified_group_revert_opens_one_pr_reverting_both_newest_first(followed) -> None:
    rt, sha = followed
    opened = incident(rt)
    cause = culprit_of(sha)
    proposal = propose(rt, opened, CONTRACT, group_fix(sha["culprit"], sha["follower"]), [cause])
    assert proposal.pr is not None and proposal.status is IncidentStatus.pr_opened
    branch = branch_name(opened.id)
    subjects = git(rt.config.repo_dir, "log", "--format=%s", f"main..{branch}").splitlines()
    # git log lists newest first: the follower was reverted first, the culprit on top of it.
    assert subjects == [f"Revert {sha['culprit'][:7]}: Divide amounts by 100",
                        f"Revert {sha['follower'][:7]}: Round amounts"]
    assert git(rt.config.repo_dir, "show", f"{branch}:model.sql") == MODEL.replace("2 as qty", "2 as quantity").strip()
    assert git(rt.config.repo_dir, "show", f"{branch}:other.sql") == "select 2"
    row = rt.store.pull_request_row(opened.id)
    assert row["reverted"] == [sha["follower"], sha["culprit"]]
    assert row["title"].startswith(f"Revert {sha['culprit'][:7]} with {sha['follower'][:7]}: Divide amounts by 100")
    body = row["body"]
    assert "### Commits this PR reverts" in body
    assert f"| `{sha['follower'][:7]}` | Round amounts | reverted with it because it changes the same lines |" in body
    assert f"| `{sha['culprit'][:7]}` | Divide amounts by 100 | the suspected commit |" in body
    section = body.split("### Commits this PR reverts")[1].split("###")[0]
    assert section.count("| `") == 2 and sha["same_file"][:7] not in section  # the decoys are not reverted


@pytest.mark.parametrize("followers", [("same_file", "follower"), ("other_file",), ()])
def test_a_group_that_is_not_exactly_the_conflicting_followers_is_refused(followed, followers) -> None:
    rt, sha = followed
    opened = incident(rt)
    cause = culprit_of(sha)
    fix = group_fix(sha["culprit"], *(sha[f] for f in followers))
    if not followers:  # the follower reverted, but not declared as one
        fix = Verification(**{**fix.__dict__, "reverted": (sha["follower"], sha["culprit"])})
    from policies.decide import Decision

    with pytest.raises(UnverifiedRevert, match="not verified on a clone"):
        open_verified_pr(rt, opened, CONTRACT, cause, fix, Ranking((), "scorer"), [cause],
                         Decision(Action.open_pr, Mode.assisted))
    assert rt.store.pull_request_for(opened.id) is None and branches(rt) == ""


def test_followers_claimed_for_a_culprit_that_reverts_alone_are_refused(rt: Runtime) -> None:
    opened, cause = incident(rt), culprit(rt)
    base = git(rt.config.repo_dir, "rev-parse", "HEAD~1")
    from policies.decide import Decision

    with pytest.raises(UnverifiedRevert):
        open_verified_pr(rt, opened, CONTRACT, cause, group_fix(cause.sha, base), Ranking((), "scorer"), [cause],
                         Decision(Action.open_pr, Mode.assisted))
    assert rt.store.pull_request_for(opened.id) is None and branches(rt) == ""


def test_an_incident_whose_verified_revert_is_already_proposed_shares_that_pr(rt: Runtime) -> None:
    """One culprit, one PR: another run's or check's incident that verified the same revert joins the first."""
    from jobs.core.records import VerificationDetail

    first, cause = incident(rt), culprit(rt)
    fix = verification(cause.sha, Verdict.verified)
    opened = propose(rt, first, CONTRACT, fix, [cause])
    rt.store.update_incident(first.id, status=opened.status, details={
        "pr": opened.pr, "verification": VerificationDetail(attempts=(fix,), builds=1, fix=fix)})
    later = rt.store.open_incident("revenue.gross_daily", severity="high", first_bad=rt.store.add_observation(
        Observation("revenue.gross_daily", NOW, 70.0, sha=rt.deployed_sha())), last_good=None, value=70.0,
        baseline=BaselineStats(100.0, 90.0, 110.0, 28), change_pct=-30.0, reason="down")
    shared = propose(rt, later, CONTRACT, verification(cause.sha, Verdict.verified), [cause])
    assert shared.pr.number == opened.pr.number and shared.status is IncidentStatus.pr_opened
    assert any(f"open as PR #{opened.pr.number} (incident #{first.id})" in r for r in shared.decision.reasons)
    assert branches(rt).split() == [branch_name(first.id)]  # no second branch, no second PR
    joined = rt.store.incident(later.id)
    assert joined.group_id == first.id and joined.status is IncidentStatus.pr_opened
    assert rt.store.incident(first.id).details.group.members == (first.id, later.id)
    [event] = [e for e in rt.store.audit_events(later.id) if e.name == "pr.shared"]
    assert event.data == {"with": first.id, "pr": opened.pr.number, "reverted": [cause.sha]}
    # The PR's conversation says it heals the later incident too (the local forge's is the audit log).
    comments = [e.data["text"] for e in rt.store.audit_events(first.id) if e.name == "forge.pr_comment"]
    assert comments[-1].startswith(f"Cairn incident #{later.id} (revenue.gross_daily) verified the same revert")
