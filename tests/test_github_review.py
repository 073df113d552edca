"""Review on GitHub: the Slack approval merges the PR behind its head, a rejection closes it.

The Runtime is built from cairn.yml and the environment as `cairn serve` builds it; GitHub is the local
server of tests/github_server.py, and every assertion is on what it was asked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest
from github import Auth, Github
from slack_bolt import BoltRequest
from slack_sdk import WebClient

from bot import ids
from bot.app import create_app
from bot.cards import escape, incident_card
from bot.thread import pr_phrase, thread_steps
from jobs.config import load_config
from jobs.core.records import (
    AttributionDetail,
    Candidate,
    IncidentStatus,
    MergeBlockedDetail,
    PullRequest,
    RankedCause,
    Ranking,
    Verdict,
    Verification,
    VerificationDetail,
)
from jobs.loop.queue import InlineJobs
from jobs.loop.stages import propose_stage
from jobs.propose.review import ReviewRefused, approve, reject
from jobs.runtime import Runtime
from jobs.store.store import Store
from policies.decide import Action
from policies.model import Mode
from tests.deployment import run_cli
from tests.github_server import FakeGitHub
from tests.slack_server import SlackAPI, signed_headers, slash_command_body
from tests.test_forge import TOKEN, Repo, forge_for, github, open_pr, repo, store  # noqa: F401 - fixtures

INCIDENT = 7  # the `github` fixture opens incidents #1 to #7
SECRET = "8f742231b10e8888abcd99yyyzzz85a5"


@dataclass
class Deployment:
    rt: Runtime
    github: FakeGitHub
    pr: PullRequest


def runtime(tmp_path: Path, repo: Repo, github: FakeGitHub, env: dict[str, str], forge: str = "",
            top: str = "") -> Runtime:
    """Cairn as cairn.yml and `env` configure it, on the test's store and repository."""
    (tmp_path / "cairn.yml").write_text(
        f"{top}repo: {repo.path}\nproject: {repo.path}\nstore: sqlite:///{tmp_path}/cairn.db\n"
        f"forge: {{github: {{repo: acme/shop, base_url: '{github.base_url}'{forge}}}}}\n")
    return Runtime(load_config(tmp_path / "cairn.yml", env=env))


@pytest.fixture
def deployment(tmp_path: Path, repo: Repo, store: Store, github: FakeGitHub):  # noqa: F811 - fixtures
    pr = open_pr(forge_for(github, repo, store), INCIDENT, [repo.shas[1]])
    store.update_incident(INCIDENT, status=IncidentStatus.pr_opened, details={"pr": pr})
    rt = runtime(tmp_path, repo, github, {"GITHUB_TOKEN": TOKEN})
    try:
        yield Deployment(rt, github, pr)
    finally:
        rt.close()


def test_an_approval_merges_the_github_pr_at_the_head_the_card_showed(deployment: Deployment) -> None:
    rt, github, pr = deployment.rt, deployment.github, deployment.pr
    assert approve(rt, INCIDENT, pr.head_sha, "slack:U1") == [INCIDENT]
    [merge] = github.calls("PUT", "/repos/acme/shop/pulls/1/merge")
    assert merge.body["sha"] == pr.head_sha and merge.headers["Authorization"] == f"token {TOKEN}"
    assert github.pulls[1]["merged_at"] is not None
    assert rt.store.pull_request_row(INCIDENT)["merged_by"] == "slack:U1"
    incident = rt.store.incident(INCIDENT)
    assert incident.status is IncidentStatus.merged and incident.details.merge.by == "slack:U1"
    assert [e.name for e in rt.store.audit_events(INCIDENT)].count("pr.merged") == 1


def test_a_rejection_closes_the_github_pr(deployment: Deployment) -> None:
    rt, github = deployment.rt, deployment.github
    assert reject(rt, INCIDENT, "an intended change", "slack:U2") == [INCIDENT]
    assert github.pulls[1]["state"] == "closed" and github.comments[1][-1] == "Closed by slack:U2: an intended change"
    assert rt.store.pull_request_for(INCIDENT).state == "closed"
    assert rt.store.incident(INCIDENT).status is IncidentStatus.rejected


# -- branch protection ------------------------------------------------------------------------

@pytest.mark.parametrize("said, then", [
    ('Required status check "dbt-ci" is expected.', "when the required checks pass on GitHub, approve again"),
    ("At least 1 approving review is required by reviewers with write access.",
     "branch protection wants a review on GitHub: once PR #1 is approved there, approve again"),
    ("Repository rule violations found\n\nChanges must be made through the merge queue\n\n",
     "PR #1 on GitHub says what blocks it; approve again once it is cleared"),
])
def test_a_merge_branch_protection_refuses_leaves_the_incident_open_with_the_reason(deployment: Deployment,
                                                                                    said: str, then: str) -> None:
    rt, github, pr = deployment.rt, deployment.github, deployment.pr
    main = github.refs["heads/main"]
    github.fail("PUT", r"/repos/acme/shop/pulls/1/merge", 405, said)  # as GitHub answers a protected branch
    with pytest.raises(ReviewRefused) as refused:
        approve(rt, INCIDENT, pr.head_sha, "slack:U1")
    reason = str(refused.value)  # what the approver is told (perform_review passes it to them)
    assert reason == f"GitHub refused to merge PR #1: {' '.join(said.split()).rstrip('.')}. Nothing was merged; {then}"
    [merge] = github.calls("PUT", "/repos/acme/shop/pulls/1/merge")
    assert merge.body["sha"] == pr.head_sha
    assert github.pulls[1]["merged_at"] is None and github.refs["heads/main"] == main
    # Nothing is marked merged; the incident stays open, waiting, the reason audited and on it.
    assert rt.store.pull_request_for(INCIDENT).state == "open"
    incident = rt.store.incident(INCIDENT)
    assert incident.status is IncidentStatus.pr_opened and incident.status.is_open and incident.details.merge is None
    assert incident.details.merge_blocked == MergeBlockedDetail(by="slack:U1", reason=reason, head_sha=pr.head_sha)
    events = rt.store.audit_events(INCIDENT)
    assert "pr.merged" not in [e.name for e in events]
    [audited] = [e for e in events if e.name == "approval.refused"]
    assert (audited.actor, audited.data) == ("slack:U1", {"head_sha": pr.head_sha, "reason": reason})
    # The card leads with the refusal and still offers the approval; the thread gets a step for it.
    card = incident_card(incident, rt.store.pull_request_for(INCIDENT), Mode.assisted, None)
    assert card.blocks[1].text.text.splitlines()[1] == escape(f"Merge refused: {reason}")
    assert ids.APPROVE in [e.action_id for e in card.blocks[-1].elements]
    [step] = [s for s in thread_steps(incident, None) if s.title == "Merge refused"]
    assert step.lines == (reason, f"Approved by slack:U1 at {pr.head_sha[:7]}; the PR stays open and the incident "
                                  "with it")


def test_once_protection_is_satisfied_the_next_approval_merges(deployment: Deployment) -> None:
    rt, github, pr = deployment.rt, deployment.github, deployment.pr
    keys = []
    for said in ("At least 1 approving review is required by reviewers with write access.",
                 'Required status check "dbt-ci" is expected.'):  # the review is done; now CI is running
        github.fail("PUT", r".*/merge", 405, said)
        with pytest.raises(ReviewRefused):
            approve(rt, INCIDENT, pr.head_sha, "slack:U1")
        keys += [s.key for s in thread_steps(rt.store.incident(INCIDENT), None) if s.title == "Merge refused"]
    assert len(set(keys)) == 2  # another reason, another step in the thread
    assert approve(rt, INCIDENT, pr.head_sha, "slack:U2") == [INCIDENT]
    merged = rt.store.incident(INCIDENT)
    assert merged.status is IncidentStatus.merged and merged.details.merge_blocked is None
    assert len(github.calls("PUT")) == 3 and github.pulls[1]["merged_at"] is not None
    assert [e.name for e in rt.store.audit_events(INCIDENT)].count("approval.refused") == 2


def test_an_autonomous_merge_branch_protection_refuses_waits_for_a_person(tmp_path: Path, repo: Repo,  # noqa: F811
                                                                          store: Store,  # noqa: F811
                                                                          github: FakeGitHub) -> None:  # noqa: F811
    # A dbt project in the checkout (untracked: GitHub's main is the repository's), and a policy that lets
    # Cairn merge reverts of anything under models/ on its own.
    (repo.path / "dbt_project.yml").write_text("name: shop\nversion: '1.0'\nprofile: shop\nmodel-paths: [models]\n")
    (repo.path / "profiles.yml").write_text(f"shop:\n  target: dev\n  outputs:\n    dev:\n      type: duckdb\n"
                                            f"      path: {tmp_path}/shop.duckdb\n")
    (tmp_path / "policy.yml").write_text("mode: autonomous\nautonomous_allowlist: ['path:models']\n")
    rt = runtime(tmp_path, repo, github, {"GITHUB_TOKEN": TOKEN},
                 top="policy: policy.yml\ncontracts: [{id: orders.revenue, kind: volume, model: a, expr: sum(a)}]\n")
    try:
        cause = Candidate(sha=repo.shas[1], author="Dana", authored_at=datetime(2026, 11, 29, tzinfo=timezone.utc),
                          message="Filter a", files=("models/a.sql",), models=("model.shop.a",), distance=1,
                          touches_metric_columns=True)
        fix = Verification(sha=cause.sha, verdict=Verdict.verified, clone_id="duckdb:incident-7",
                           dbt_command="dbt build", before=80.0, after=100.0, reverted=(cause.sha,))
        # Opened as the autonomous propose stage would (without PyGithub's second between writes).
        opened = open_pr(forge_for(github, repo, store), INCIDENT, [cause.sha])
        github.fail("PUT", r".*/merge", 405, 'Required status check "dbt-ci" is expected.')
        store.update_incident(INCIDENT, status=IncidentStatus.verified,
                              details={"verification": VerificationDetail(fix=fix, builds=1),
                                       "attribution": AttributionDetail(candidates=(cause,), ranking=Ranking(
                                           (RankedCause(cause.sha, 0.9, "touches model a"),), "scorer"))})
        assert propose_stage(rt, INCIDENT) == []
    finally:
        rt.close()
    incident = store.incident(INCIDENT)
    assert incident.details.decision.action is Action.auto_merge
    assert incident.status is IncidentStatus.pr_opened and github.pulls[1]["merged_at"] is None
    blocked = incident.details.merge_blocked
    assert (blocked.by, blocked.head_sha) == ("cairn (autonomous mode)", opened.head_sha)
    assert blocked.reason.startswith('GitHub refused to merge PR #1: Required status check "dbt-ci" is expected.')
    [made] = [e for e in store.audit_events(INCIDENT) if e.name == "decision.made"]
    assert made.data["merge_blocked"] == blocked.reason and made.data["status"] == "pr_opened"


def test_a_pr_merged_on_github_reads_as_merged_in_every_report(deployment: Deployment) -> None:
    rt, server, pr = deployment.rt, deployment.github, deployment.pr
    assert rt.store.incident(INCIDENT).details.pr.state == "open"  # what propose recorded
    # Someone merges it in GitHub's own UI: Cairn is not told.
    pull = Github(base_url=server.base_url, auth=Auth.Token(TOKEN)).get_repo("acme/shop").get_pull(pr.number)
    assert pull.merge(sha=pr.head_sha).merged

    env = {"GITHUB_TOKEN": TOKEN}
    shown = run_cli("--config", str(rt.config.path), "incident", str(INCIDENT), "--json", env=env)
    assert shown.exit_code == 0, shown.stderr
    assert json.loads(shown.stdout)["pr"] == {"number": pr.number, "url": pr.url, "branch": pr.branch,
                                              "state": "merged"}
    listed = json.loads(run_cli("--config", str(rt.config.path), "incidents", "--json", env=env).stdout)
    assert [i["pr"]["state"] for i in listed if i["id"] == INCIDENT] == ["merged"]
    terminal = run_cli("--config", str(rt.config.path), "incident", str(INCIDENT), env=env).stdout
    assert f"pull request: {pr_phrase(pr.number, pr.url, pr.branch, 'merged')}" in terminal

    with SlackAPI() as api:
        app = create_app(rt, InlineJobs(rt), WebClient(token=api.token, base_url=api.base_url),
                         signing_secret=SECRET)
        body = slash_command_body(f"show {INCIDENT}", user_id="U0STRANGER")
        reply = app.dispatch(BoltRequest(body=body, headers=signed_headers(SECRET, body))).body
    assert f"pull request: {pr_phrase(pr.number, pr.url, pr.branch, 'merged')}" in json.loads(reply)["text"]
    assert rt.store.pull_request_for(INCIDENT).state == "merged"  # the store's row caught up


def test_a_report_github_refuses_shows_the_store_s_copy(deployment: Deployment) -> None:
    rt, server = deployment.rt, deployment.github
    server.fail("GET", r"^/repos/acme/shop/pulls$", 401, "Bad credentials")
    shown = run_cli("--config", str(rt.config.path), "incident", str(INCIDENT), "--json", env={"GITHUB_TOKEN": TOKEN})
    assert shown.exit_code == 0, shown.stderr
    assert not server.failures  # GitHub was asked, and refused
    assert json.loads(shown.stdout)["pr"]["state"] == "open"
