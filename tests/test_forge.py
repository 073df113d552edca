"""The forges on real git: the local forge in a tmp repository, the GitHub forge against a local GitHub."""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest

from jobs.core.records import Observation
from jobs.forge import CheckProof, ForgeError, MergeBlocked, StaleApproval
from jobs.forge.github import GitHubForge
from jobs.forge.local import LocalForge
from jobs.forge.revert import blob_bytes, commit_fix, fix_ref
from jobs.project.git import Git
from jobs.store.store import Store
from tests.github_server import FakeGitHub

TOKEN = "ghp_test_token_never_logged_0123456789"
PROOF = CheckProof(title="orders.revenue: 81,600 → 100,240 (verified)", summary="**verified**: 12 passed")
ENV = {**os.environ, "GIT_AUTHOR_NAME": "Dana", "GIT_AUTHOR_EMAIL": "dana@example.com",
       "GIT_COMMITTER_NAME": "Dana", "GIT_COMMITTER_EMAIL": "dana@example.com"}


class Repo:
    """A dbt-ish repository with four commits; `shas[i]` is commit i."""

    def __init__(self, path: Path):
        self.path = path
        path.mkdir()
        self.git = Git(path)
        self.git.run("init", "-q", "-b", "main")
        self.shas = [
            self.commit("initial", {"models/a.sql": "select 1 as a\n", "models/b.sql": "select 2 as b\n",
                                    "README.md": "shop\n"}),
            self.commit("Filter a", {"models/a.sql": "select 1 as a where false\n"}),
            self.commit("Add c, change b", {"models/b.sql": "select 3 as b\n", "models/c.sql": "select 4\n"}),
            self.commit("Docs", {"README.md": "shop analytics\n"}),
        ]

    def commit(self, message: str, files: dict[str, str | None], branch: str | None = None) -> str:
        for name, text in files.items():
            (self.path / name).parent.mkdir(parents=True, exist_ok=True)
            if text is None:
                (self.path / name).unlink()
            else:
                (self.path / name).write_text(text)
        self.git.run("add", "-A", env=ENV)
        self.git.run("commit", "-q", "-m", message, env=ENV)
        return self.git.head_sha()

    def show(self, rev: str, path: str) -> str | None:
        return self.git.run("show", f"{rev}:{path}", check=False) or None


@pytest.fixture
def repo(tmp_path) -> Repo:
    return Repo(tmp_path / "repo")


@pytest.fixture
def store(tmp_path):
    store = Store.open(f"sqlite:///{tmp_path}/cairn.db")
    yield store
    store.close()


def incident(store: Store, contract_id: str = "orders.revenue") -> int:
    bad = Observation(contract_id, datetime(2026, 11, 30, tzinfo=timezone.utc), 1.0)
    return store.open_incident(contract_id, severity="high", first_bad=bad, last_good=None, value=1.0,
                               baseline=None, change_pct=None, reason="dropped").id


def open_pr(forge, incident_id: int, revert_of, base: str = "main"):
    return forge.open_revert_pr(incident_id, base, revert_of, f"Revert for #{incident_id}", "body", ["cairn", "revert"],
                                PROOF)


# -- the local forge ---------------------------------------------------------------------------

def test_local_open_reverts_newest_first_without_touching_the_checkout(repo, store):
    (repo.path / "models/a.sql").write_text("-- work in progress\n")  # the user's uncommitted change
    (repo.path / "scratch.sql").write_text("select 'untracked'\n")
    repo.git.run("add", "scratch.sql")
    before = (repo.git.head_sha(), repo.git.run("status", "--porcelain"), repo.git.run("diff", "--cached"))
    forge, iid = LocalForge(repo.git, store), incident(store)

    pr = open_pr(forge, iid, [repo.shas[1][:10], repo.shas[2]])

    assert (pr.number, pr.state, pr.branch) == (1, "open", f"cairn/incident-{iid}")
    assert repo.git.head_sha(f"refs/heads/{pr.branch}") == pr.head_sha
    log = repo.git.run("log", "--format=%s%n%b%x00", f"main..{pr.branch}").split("\0")
    # git log lists newest first: the newest reverted commit was reverted first.
    assert log[1].strip().startswith(f"Revert {repo.shas[2][:7]}: Add c, change b")
    assert log[0].strip().startswith(f"Revert {repo.shas[1][:7]}: Filter a")
    assert f"This reverts commit {repo.shas[1]}." in log[0] and f"Cairn-Incident: #{iid}" in log[0]
    # The reverted files are as they were before the oldest reverted commit; the rest is main's.
    for path in ("models/a.sql", "models/b.sql", "models/c.sql"):
        assert repo.show(pr.head_sha, path) == repo.show(repo.shas[0], path), path
    assert repo.show(pr.head_sha, "README.md") == "shop analytics\n"
    assert (repo.git.head_sha(), repo.git.run("status", "--porcelain"), repo.git.run("diff", "--cached")) == before
    assert (repo.path / "models/a.sql").read_text() == "-- work in progress\n"
    assert repo.git.run("worktree", "list").count("\n") == 1  # the throwaway worktree is gone
    row = store.pull_request_row(iid)
    assert row["reverted"] == [repo.shas[2], repo.shas[1]] and row["labels"] == ["cairn", "revert"]
    assert row["forge"] == "local" and row["base_branch"] == "main"
    assert [e.name for e in store.audit_events(iid)] == ["forge.pr_comment"]  # the proof


def test_local_open_is_idempotent_and_numbers_per_forge(repo, store):
    forge, first, second = LocalForge(repo.git, store), incident(store), incident(store, "orders.count")
    pr = open_pr(forge, first, [repo.shas[1]])
    commits = repo.git.run("rev-list", "--all", "--count")
    assert open_pr(forge, first, [repo.shas[2]]) == pr == forge.get(first)
    assert repo.git.run("rev-list", "--all", "--count") == commits
    assert open_pr(forge, second, [repo.shas[2]]).number == 2
    # A crash between recording the PR and publishing its branch heals on the retry.
    repo.git.run("update-ref", "-d", f"refs/heads/{pr.branch}")
    assert open_pr(forge, first, [repo.shas[1]]) == pr
    assert repo.git.head_sha(f"refs/heads/{pr.branch}") == pr.head_sha


def test_local_merge_is_bound_to_the_approved_head(repo, store):
    forge, iid = LocalForge(repo.git, store), incident(store)
    pr = open_pr(forge, iid, [repo.shas[1]])
    with pytest.raises(StaleApproval, match="approve again"):
        forge.merge(iid, "0" * 40, actor="U1")
    merged = forge.merge(iid, pr.head_sha, actor="U1")
    assert merged.state == "merged" and repo.git.head_sha("main") == pr.head_sha  # fast-forward
    assert store.pull_request_row(iid)["merged_by"] == "U1"
    # main is checked out here, and clean: the checkout follows like `git pull --ff-only`.
    assert (repo.path / "models/a.sql").read_text() == "select 1 as a\n"
    assert repo.git.run("status", "--porcelain") == ""
    assert forge.merge(iid, pr.head_sha, actor="U1") == merged  # a retried approval


def test_local_merge_refuses_when_the_branch_moved(repo, store):
    forge, iid = LocalForge(repo.git, store), incident(store)
    pr = open_pr(forge, iid, [repo.shas[1]])
    repo.git.run("checkout", "-q", pr.branch)
    pushed = repo.commit("sneaky change", {"models/b.sql": "select 666\n"})
    repo.git.run("checkout", "-q", "main")
    main = repo.git.head_sha("main")
    with pytest.raises(StaleApproval, match=f"now ends at {pushed[:7]}, not {pr.head_sha[:7]}"):
        forge.merge(iid, pr.head_sha, actor="U1")
    assert repo.git.head_sha("main") == main and forge.get(iid).state == "open"


def test_local_merge_commit_when_base_moved_and_base_not_checked_out(repo, store):
    forge, iid = LocalForge(repo.git, store), incident(store)
    pr = open_pr(forge, iid, [repo.shas[1]])
    moved = repo.commit("Unrelated", {"models/d.sql": "select 5\n"})
    repo.git.run("checkout", "-q", "-b", "dev")
    (repo.path / "README.md").write_text("user's edit\n")
    forge.merge(iid, pr.head_sha, actor="U2")
    parents = repo.git.run("rev-list", "--parents", "-n1", "main").split()[1:]
    assert parents == [moved, pr.head_sha]
    assert repo.show("main", "models/a.sql") == "select 1 as a\n" and repo.show("main", "models/d.sql")
    assert repo.git.run("rev-parse", "--abbrev-ref", "HEAD").strip() == "dev"
    assert (repo.path / "README.md").read_text() == "user's edit\n"


def test_local_close_keeps_the_branch_and_the_pr(repo, store):
    forge, iid = LocalForge(repo.git, store), incident(store)
    pr = open_pr(forge, iid, [repo.shas[1]])
    closed = forge.close(iid, "intentional change", actor="U3")
    assert closed.state == "closed" and store.pull_request_row(iid)["closed_reason"] == "intentional change"
    assert repo.git.head_sha(f"refs/heads/{pr.branch}") == pr.head_sha
    assert open_pr(forge, iid, [repo.shas[1]]).state == "closed"  # never a second PR
    with pytest.raises(ForgeError, match="closed"):
        forge.merge(iid, pr.head_sha, actor="U3")
    assert store.audit_events(iid)[-1].actor == "U3"


def test_local_conflicting_revert_leaves_nothing_behind(repo, store):
    repo.commit("Rewrite a", {"models/a.sql": "select 42 as a where false\n"})
    forge, iid = LocalForge(repo.git, store), incident(store)
    with pytest.raises(ForgeError, match="conflicts"):
        open_pr(forge, iid, [repo.shas[1]])
    assert forge.get(iid) is None and repo.git.run("branch", "--list", "cairn/*") == ""
    assert repo.git.run("worktree", "list").count("\n") == 1
    with pytest.raises(ForgeError, match="no commit"):
        open_pr(forge, iid, ["deadbeef" * 5])



def test_local_reverts_a_conflicting_commit_with_the_later_one_that_changes_its_lines(repo, store):
    rewrite = repo.commit("Rewrite a", {"models/a.sql": "select 42 as a where false\n"})
    forge, iid = LocalForge(repo.git, store), incident(store)
    pr = open_pr(forge, iid, [repo.shas[1], rewrite])
    subjects = repo.git.run("log", "--format=%s", f"main..{pr.branch}").splitlines()
    assert subjects == [f"Revert {repo.shas[1][:7]}: Filter a", f"Revert {rewrite[:7]}: Rewrite a"]
    assert repo.show(pr.head_sha, "models/a.sql") == repo.show(repo.shas[0], "models/a.sql")
    assert store.pull_request_row(iid)["reverted"] == [rewrite, repo.shas[1]]

# -- the GitHub forge --------------------------------------------------------------------------

def seed_from(server: FakeGitHub, git: Git, branch: str = "main") -> None:
    files = {}
    for line in git.run("ls-tree", "-r", branch).splitlines():
        meta, path = line.split("\t")
        mode, _type, blob = meta.split()
        files[path] = (mode, blob_bytes(git, blob))
    server.seed(branch, git.head_sha(branch), files)


@pytest.fixture
def github(repo, store):
    with FakeGitHub() as server:
        seed_from(server, repo.git)
        for contract_id in ("a", "b", "c", "d", "e", "f", "orders.revenue"):
            incident(store, contract_id)  # incident #7, so no incident ID reads as a PR number
        yield server


def forge_for(server: FakeGitHub, repo: Repo, store: Store, **auth) -> GitHubForge:
    return GitHubForge("acme/shop", git=repo.git, store=store, base_url=server.base_url, seconds_between_writes=0,
                       seconds_between_requests=0, **(auth or {"token": TOKEN}))


def debug_logs(caplog) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="github")  # PyGithub pins its logger to INFO on import


def test_github_open_publishes_the_revert(repo, store, github, caplog):
    debug_logs(caplog)
    pr = open_pr(forge_for(github, repo, store), 7, [repo.shas[1], repo.shas[2]])

    repo_path = "/repos/acme/shop"
    assert [(r.method, r.path.removeprefix(repo_path)) for r in github.requests] == [
        ("GET", ""), ("GET", "/pulls"),  # is there a PR for this incident already?
        ("GET", "/git/ref/heads/main"), ("GET", f"/git/commits/{repo.shas[3]}"),
        ("POST", "/git/blobs"), ("POST", "/git/trees"), ("POST", "/git/commits"),  # revert shas[2]
        ("POST", "/git/blobs"), ("POST", "/git/trees"), ("POST", "/git/commits"),  # revert shas[1]
        ("GET", "/git/ref/heads/cairn/incident-7"), ("POST", "/git/refs"),
        ("POST", "/check-runs"), ("POST", "/pulls"), ("POST", "/issues/1/labels"),
    ]
    assert github.calls("GET", f"{repo_path}/pulls")[0].query == {"state": ["all"], "head": ["acme:cairn/incident-7"]}
    [ref] = github.calls("POST", f"{repo_path}/git/refs")
    assert ref.body == {"ref": "refs/heads/cairn/incident-7", "sha": pr.head_sha}
    first_tree = github.calls("POST", f"{repo_path}/git/trees")[0].body
    assert first_tree["base_tree"] == github.commits[repo.shas[3]]["tree"]
    assert {e["path"]: e["sha"] for e in first_tree["tree"]}["models/c.sql"] is None
    commits = [r.body for r in github.calls("POST", f"{repo_path}/git/commits")]
    assert commits[0]["parents"] == [repo.shas[3]] and commits[0]["message"].startswith(f"Revert {repo.shas[2][:7]}")
    assert commits[1]["author"]["name"] == "Cairn" and "Cairn-Incident: #7" in commits[1]["message"]
    files = github.files_at(pr.head_sha)
    for path in ("models/a.sql", "models/b.sql"):
        assert files[path].decode() == repo.show(repo.shas[0], path)
    assert "models/c.sql" not in files and files["README.md"] == b"shop analytics\n"
    [pull] = github.calls("POST", f"{repo_path}/pulls")
    assert pull.body == {"base": "main", "head": "cairn/incident-7", "title": "Revert for #7", "body": "body"}
    assert github.calls("POST", f"{repo_path}/issues/1/labels")[0].body == ["cairn", "revert"]
    [check] = github.check_runs
    assert (check["name"], check["head_sha"], check["conclusion"]) == ("cairn/recovery", pr.head_sha, "success")
    assert check["output"] == {"title": PROOF.title, "summary": PROOF.summary}
    assert (pr.number, pr.state, pr.branch, pr.url) == (1, "open", "cairn/incident-7", f"{github.root}/acme/shop/pull/1")
    row = store.pull_request_row(7)  # mirrored: the Slack surface reads the PR without calling GitHub
    assert (row["forge"], row["number"], row["base_branch"], row["head_sha"]) == ("github", 1, "main", pr.head_sha)
    assert row["labels"] == ["cairn", "revert"] and row["reverted"] == [repo.shas[2], repo.shas[1]]
    assert store.pull_request_for(7) == pr
    # The token goes to GitHub, and nowhere else.
    assert all(r.headers["Authorization"] == f"token {TOKEN}" for r in github.requests)
    assert "'Authorization'" in caplog.text and TOKEN not in caplog.text  # PyGithub logs headers, masked


def test_github_open_is_idempotent(repo, store, github):
    forge = forge_for(github, repo, store)
    pr = open_pr(forge, 7, [repo.shas[1]])
    writes = len(github.calls("POST"))
    github.pulls[1]["labels"] = ["cairn"]  # as if the first attempt crashed while labelling
    assert open_pr(forge_for(github, repo, store), 7, [repo.shas[1]]) == pr == forge.get(7)
    assert [r.path for r in github.calls("POST")][writes:] == ["/repos/acme/shop/issues/1/labels"]
    assert github.calls("POST", ".*/pulls") == github.calls("POST", ".*/pulls")[:1]
    assert forge.get(8) is None


def test_github_merge_is_bound_to_the_approved_head(repo, store, github):
    forge = forge_for(github, repo, store)
    pr = open_pr(forge, 7, [repo.shas[1]])
    github.fail("PUT", r"/repos/acme/shop/pulls/1/merge", 409, "Head branch was modified.")
    with pytest.raises(StaleApproval, match="approve again"):
        forge.merge(7, pr.head_sha, actor="U1")
    with pytest.raises(StaleApproval):
        forge.merge(7, "f" * 40, actor="U1")  # refused before asking GitHub
    assert len(github.calls("PUT")) == 1
    merged = forge.merge(7, pr.head_sha, actor="U1")
    assert merged.state == "merged" and github.calls("PUT")[-1].body["sha"] == pr.head_sha
    assert "Approved by U1" in github.calls("PUT")[-1].body["commit_message"]
    assert store.pull_request_row(7)["merged_by"] == "U1" and store.pull_request_for(7) == merged
    github.fail("PUT", r".*/merge", 405, "Required status check is expected.")
    github.pulls[1].update(state="open", merged_at=None)
    with pytest.raises(MergeBlocked, match="Required status check is expected. Nothing was merged"):
        forge.merge(7, pr.head_sha, actor="U1")


def test_github_close_and_comment(repo, store, github):
    forge = forge_for(github, repo, store)
    open_pr(forge, 7, [repo.shas[1]])
    forge.comment(7, "Re-verified: still recovers.")
    assert forge.close(7, "intentional change", actor="U3").state == "closed"
    assert github.comments[1] == ["Re-verified: still recovers.", "Closed by U3: intentional change"]
    assert github.pulls[1]["state"] == "closed" and forge.get(7).state == "closed"
    assert store.pull_request_row(7)["closed_reason"] == "intentional change"
    with pytest.raises(ForgeError, match="no pull request"):
        forge.comment(8, "x")


def test_github_enterprise_base_url_and_check_run_refused(repo, store):
    iid = incident(store)
    with FakeGitHub(prefix="/api/v3") as server:
        seed_from(server, repo.git)
        server.fail("POST", r".*/check-runs", 403, "Resource not accessible by personal access token")
        pr = open_pr(forge_for(server, repo, store), iid, [repo.shas[1]])
    assert all(r.raw_path.startswith("/api/v3/repos/acme/shop") for r in server.requests)
    assert pr.number == 1 and server.check_runs == []
    assert server.comments[1][0].startswith("### cairn/recovery: success")  # the proof, as a comment


def test_github_app_auth(repo, store, github, caplog):
    debug_logs(caplog)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    forge = forge_for(github, repo, store, app_id=12, private_key=key, installation_id=99)
    assert key not in repr(forge)
    open_pr(forge, 7, [repo.shas[1]])
    [exchange] = github.calls("POST", "/app/installations/99/access_tokens")
    assert exchange.headers["Authorization"].startswith("Bearer ")
    others = [r for r in github.requests if r is not exchange]
    assert all(r.headers["Authorization"] == f"token {github.installation_token}" for r in others)
    assert len(github.check_runs) == 1
    assert github.installation_token not in caplog.text and "PRIVATE KEY" not in caplog.text


def test_github_needs_credentials(repo, store):
    with pytest.raises(ForgeError, match="token .* or a GitHub App"):
        GitHubForge("acme/shop", git=repo.git, store=store)


# -- Cairn's own fix, carried in place of a revert -----------------------------------------------

FIXED_A = "select 1 as a where true\n"


def test_a_fix_commit_is_kept_off_every_branch_and_reused_by_a_retry(repo, store):
    base = repo.shas[3]
    sha = commit_fix(repo.git, base, "models/a.sql", FIXED_A, "Read a again\n\nCairn-Incident: #7\n", 7)
    assert repo.git.head_sha(fix_ref(7)) == sha and repo.git.run("rev-parse", f"{sha}^").strip() == base
    assert repo.show(sha, "models/a.sql") == FIXED_A and repo.git.run("branch", "--contains", sha).strip() == ""
    assert commit_fix(repo.git, base, "models/a.sql", FIXED_A, "Read a again\n", 7) == sha  # a retry: the same
    assert repo.git.run("worktree", "list").count("\n") == 1 and repo.git.head_sha() == base


def test_github_publishes_a_fix_pr_with_its_own_commit_and_labels(repo, store, github):
    fix = commit_fix(repo.git, repo.shas[3], "models/a.sql", FIXED_A, "Read a again\n\nCairn-Incident: #7\n", 7)
    pr = forge_for(github, repo, store).open_revert_pr(7, "main", [], "Fix a (Cairn #7)", "body",
                                                       ("cairn", "fix", "escalation"), PROOF, applied=[fix])
    repo_path = "/repos/acme/shop"
    [commit] = [r.body for r in github.calls("POST", f"{repo_path}/git/commits")]
    assert commit["parents"] == [repo.shas[3]] and commit["message"].startswith("Read a again")
    files = github.files_at(pr.head_sha)
    assert files["models/a.sql"] == FIXED_A.encode() and files["models/b.sql"].decode() == repo.show("main", "models/b.sql")
    assert github.calls("POST", f"{repo_path}/issues/1/labels")[0].body == ["cairn", "fix", "escalation"]
    row = store.pull_request_row(7)
    assert row["reverted"] == [] and row["labels"] == ["cairn", "fix", "escalation"]


def test_a_fix_that_no_longer_applies_is_refused_and_leaves_nothing(repo, store):
    fix = commit_fix(repo.git, repo.shas[3], "models/a.sql", FIXED_A, "Read a again\n", 7)
    repo.commit("Someone rewrote a", {"models/a.sql": "select 10 as a\n"})
    iid = incident(store)
    with pytest.raises(ForgeError, match=f"Cairn's fix {fix[:7]} no longer applies"):
        LocalForge(repo.git, store).open_revert_pr(iid, "main", [], "Fix", "body", applied=[fix])
    assert store.pull_request_for(iid) is None and repo.git.run("branch", "--list", "cairn/*") == ""
