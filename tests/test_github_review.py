"""Review on GitHub: the Slack approval merges the PR behind its head, a rejection closes it.

The Runtime is built from cairn.yml and the environment as `cairn serve` builds it; GitHub is the local
server of tests/github_server.py, and every assertion is on what it was asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from jobs.config import load_config
from jobs.records import IncidentStatus, PullRequest
from jobs.report import to_json
from jobs.review import approve, reject
from jobs.runtime import Runtime
from jobs.store import Store
from tests.github_server import FakeGitHub
from tests.test_forge import TOKEN, Repo, forge_for, github, open_pr, repo, store  # noqa: F401 - fixtures

INCIDENT = 7  # the `github` fixture opens incidents #1 to #7


@dataclass
class Deployment:
    rt: Runtime
    github: FakeGitHub
    pr: PullRequest


def runtime(tmp_path: Path, repo: Repo, github: FakeGitHub, env: dict[str, str], forge: str = "") -> Runtime:
    """Cairn as cairn.yml and `env` configure it, on the test's store and repository."""
    (tmp_path / "cairn.yml").write_text(
        f"repo: {repo.path}\nproject: {repo.path}\nstore: sqlite:///{tmp_path}/cairn.db\n"
        f"forge: {{github: {{repo: acme/shop, base_url: '{github.base_url}'{forge}}}}}\n")
    return Runtime(load_config(tmp_path / "cairn.yml", env=env))


@pytest.fixture
def deployment(tmp_path: Path, repo: Repo, store: Store, github: FakeGitHub):  # noqa: F811 - fixtures
    pr = open_pr(forge_for(github, repo, store), INCIDENT, [repo.shas[1]])
    store.update_incident(INCIDENT, status=IncidentStatus.pr_opened, details={"pr": to_json(pr)})
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
    assert incident.status is IncidentStatus.merged and incident.details["merge"]["by"] == "slack:U1"
    assert [e.name for e in rt.store.audit_events(INCIDENT)].count("pr.merged") == 1


def test_a_rejection_closes_the_github_pr(deployment: Deployment) -> None:
    rt, github = deployment.rt, deployment.github
    assert reject(rt, INCIDENT, "an intended change", "slack:U2") == [INCIDENT]
    assert github.pulls[1]["state"] == "closed" and github.comments[1][-1] == "Closed by slack:U2: an intended change"
    assert rt.store.pull_request_for(INCIDENT).state == "closed"
    assert rt.store.incident(INCIDENT).status is IncidentStatus.rejected
