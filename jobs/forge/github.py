"""The GitHub forge: the revert is computed by local git and published through GitHub's git data API.

Each PR it opens, merges or closes is mirrored in the store, as the local forge keeps its own there: the
Slack surface and the review jobs read the PR from the store without calling GitHub, and every write
here asks GitHub first, so GitHub's answer (a moved head, a merged or closed PR) always wins.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import requests
from github import Auth, Github, GithubException, InputGitAuthor, InputGitTreeElement, UnknownObjectException
from github.PullRequest import PullRequest as GitHubPull

from jobs.core.masking import MASK
from jobs.core.records import PullRequest
from jobs.forge import (
    CHECK_NAME,
    DEFAULT_LABELS,
    CheckProof,
    ForgeError,
    ForgeUnavailable,
    MergeBlocked,
    StaleApproval,
    branch_name,
)
from jobs.forge.revert import CAIRN_AUTHOR, Revert, blob_bytes, build_reverts, changed_files, resolve
from jobs.project.git import Git
from jobs.store.store import Store

log = logging.getLogger(__name__)

_TREE_TYPE = {"160000": "commit", "040000": "tree"}  # every other mode is a blob

# Every REST call the forge makes and the GitHub App permission it needs, as GitHub's REST reference lists
# it for each endpoint. The App's own token exchange (POST /app/installations/{id}/access_tokens) is signed
# with its key and needs none. jobs/forge/github-app.json asks for APP_PERMISSIONS and nothing more, and
# tests/test_github_app_manifest.py fails on a call missing here. A placeholder is one path segment, except
# {ref}: a git ref name such as heads/cairn/incident-7.
CALL_PERMISSIONS = {
    "GET /repos/{owner}/{repo}": ("metadata", "read"),  # the repository
    "GET /repos/{owner}/{repo}/pulls": ("pull_requests", "read"),  # the incident's PR, found by its branch
    "POST /repos/{owner}/{repo}/pulls": ("pull_requests", "write"),  # open it
    "POST /repos/{owner}/{repo}/issues/{number}/labels": ("pull_requests", "write"),  # label it
    "POST /repos/{owner}/{repo}/issues/{number}/comments": ("pull_requests", "write"),  # comment on it
    "PATCH /repos/{owner}/{repo}/pulls/{number}": ("pull_requests", "write"),  # close it
    "PUT /repos/{owner}/{repo}/pulls/{number}/merge": ("contents", "write"),  # merge it: the base branch moves
    "GET /repos/{owner}/{repo}/git/ref/{ref}": ("contents", "read"),  # the base branch's head
    "GET /repos/{owner}/{repo}/git/commits/{sha}": ("contents", "read"),  # its tree
    "POST /repos/{owner}/{repo}/git/blobs": ("contents", "write"),  # the reverted files
    "POST /repos/{owner}/{repo}/git/trees": ("contents", "write"),
    "POST /repos/{owner}/{repo}/git/commits": ("contents", "write"),  # the revert commits
    "POST /repos/{owner}/{repo}/git/refs": ("contents", "write"),  # the incident's branch
    "PATCH /repos/{owner}/{repo}/git/refs/{ref}": ("contents", "write"),  # the branch a crashed attempt left
    "POST /repos/{owner}/{repo}/check-runs": ("checks", "write"),  # the recovery proof: a token cannot
}
_ACCESS = ("read", "write")
# Each permission at the highest access a call needs.
APP_PERMISSIONS = {name: max((a for n, a in CALL_PERMISSIONS.values() if n == name), key=_ACCESS.index)
                   for name in dict.fromkeys(n for n, _ in CALL_PERMISSIONS.values())}


class GitHubForge:
    """PRs on GitHub (or GitHub Enterprise Server at `base_url`), authenticated by a token or as an App."""

    name = "github"

    def __init__(
        self,
        repo: str,
        *,
        git: Git,
        store: Store,
        token: str | None = None,
        app_id: int | str | None = None,
        private_key: str | None = None,
        installation_id: int | None = None,
        base_url: str = "https://api.github.com",
        seconds_between_writes: float = 1.0,  # GitHub's secondary rate limits; 0 only in tests
        seconds_between_requests: float = 0.25,
        author: tuple[str, str] = CAIRN_AUTHOR,
    ):
        self.repo_name = repo
        self.owner = repo.split("/")[0]
        self.git = git
        self.store = store
        self.author = author
        self.base_url = base_url.rstrip("/")
        self._github = Github(base_url=self.base_url, auth=_auth(token, app_id, private_key, installation_id),
                              seconds_between_writes=seconds_between_writes,
                              seconds_between_requests=seconds_between_requests)
        self._repo = None
        # PyGithub's DEBUG log masks headers but not bodies, and an App's token exchange answers with a token.
        requester_log = logging.getLogger("github.Requester")
        if MASK not in requester_log.filters:
            requester_log.addFilter(MASK)

    def __repr__(self) -> str:
        return f"GitHubForge({self.repo_name!r}, base_url={self.base_url!r})"  # never the credentials

    def open_revert_pr(
        self,
        incident_id: int,
        base_branch: str,
        revert_of: Sequence[str],
        title: str,
        body: str,
        labels: Sequence[str] = DEFAULT_LABELS,
        proof: CheckProof | None = None,
        applied: Sequence[str] = (),
    ) -> PullRequest:
        existing = self._find(incident_id)
        if existing is not None:
            # A retry after a crash between opening the PR and labelling it finishes the job.
            missing = [label for label in labels if label not in {lb.name for lb in existing.labels}]
            if missing:
                with _github("label the pull request"):
                    existing.add_to_labels(*missing)
            return self._mirror(incident_id, existing, labels=labels)
        branch = branch_name(incident_id)
        with _github(f"read branch {base_branch}"):
            base_sha = self.repo.get_git_ref(f"heads/{base_branch}").object.sha
        resolve(self.git, base_sha)  # the revert is computed locally, so local git must have GitHub's base
        reverts = build_reverts(self.git, base_sha, revert_of, incident_id, self.author, applied)
        head = self._publish(base_sha, reverts)
        self._point_branch(branch, head)
        conclusion_comment = self._check_run(head, proof) if proof is not None else None
        with _github("open the pull request"):
            try:
                pull = self.repo.create_pull(base=base_branch, head=branch, title=title, body=body)
            except GithubException as exc:
                pull = self._find(incident_id) if exc.status == 422 else None  # another worker opened it
                if pull is None:
                    raise
            pull.add_to_labels(*labels)
            if conclusion_comment:
                pull.create_issue_comment(conclusion_comment)
        log.info("opened PR #%s on %s for incident %s", pull.number, self.repo_name, incident_id)
        return self._mirror(incident_id, pull, labels=labels, reverted=[r.reverted for r in reverts if r.reverted])

    def get(self, incident_id: int) -> PullRequest | None:
        pull = self._find(incident_id)
        return _record(incident_id, pull) if pull is not None else None

    def refresh(self, incident_id: int) -> PullRequest | None:
        pull = self._find(incident_id)
        if pull is None:
            return self.store.pull_request_for(incident_id)
        return self._mirror(incident_id, pull, **({"merged_at": pull.merged_at} if pull.merged_at else {}))

    def merge(self, incident_id: int, expected_head_sha: str, actor: str) -> PullRequest:
        pull = self._require(incident_id)
        record = _record(incident_id, pull)
        if record.state == "merged":
            if record.head_sha == expected_head_sha:
                return self._mirror(incident_id, pull)  # a retried approval
            raise ForgeError(f"PR #{pull.number} was already merged at {record.head_sha[:7]}")
        if record.state == "closed":
            raise ForgeError(f"PR #{pull.number} is closed; reopen the incident to retry")
        if record.head_sha != expected_head_sha:
            raise _stale(pull.number, record.head_sha[:7], expected_head_sha)
        try:
            # GitHub merges only if the head is still `sha`: the approval is bound to what was seen.
            status = pull.merge(commit_title=f"Merge Cairn revert for incident #{incident_id} (#{pull.number})",
                                commit_message=f"Approved by {actor} at {expected_head_sha}.",
                                merge_method="merge", sha=expected_head_sha)
        except GithubException as exc:
            if exc.status == 409:
                raise _stale(pull.number, "a newer commit", expected_head_sha) from None
            if exc.status == 405:  # GitHub's answer when branch protection or a ruleset forbids the merge
                raise _blocked(pull.number, exc) from None
            raise _forge_error(f"merge PR #{pull.number}", exc) from None
        if not status.merged:
            raise ForgeError(f"GitHub did not merge PR #{pull.number}: {status.message}")
        return self._mirror(incident_id, pull, state="merged", merged_at=self.store.clock.now(), merged_by=actor)

    def close(self, incident_id: int, reason: str, actor: str) -> PullRequest:
        pull = self._require(incident_id)
        record = _record(incident_id, pull)
        if record.state != "open":
            if record.state == "merged":
                raise ForgeError(f"PR #{pull.number} is already merged; revert it instead")
            return self._mirror(incident_id, pull)
        with _github(f"close PR #{pull.number}"):
            pull.create_issue_comment(f"Closed by {actor}: {reason}")
            pull.edit(state="closed")
        return self._mirror(incident_id, pull, state="closed", closed_reason=reason)

    def comment(self, incident_id: int, text: str) -> None:
        pull = self._require(incident_id)
        with _github(f"comment on PR #{pull.number}"):
            pull.create_issue_comment(text)

    # -- plumbing -----------------------------------------------------------------------------

    @property
    def repo(self):
        if self._repo is None:
            with _github(f"read repository {self.repo_name}"):
                self._repo = self._github.get_repo(self.repo_name)
        return self._repo

    def _find(self, incident_id: int) -> GitHubPull | None:
        """The incident's PR in any state, found by its branch: how a retry sees the PR it opened."""
        with _github("list pull requests"):
            for pull in self.repo.get_pulls(state="all", head=f"{self.owner}:{branch_name(incident_id)}"):
                return pull
        return None

    def _mirror(self, incident_id: int, pull: GitHubPull, *, labels: Sequence[str] = (),
                reverted: Sequence[str] = (), **changes) -> PullRequest:
        """The store's copy of the PR as GitHub has it now, with `changes` (state, merged_by…) on top."""
        record = _record(incident_id, pull)
        self.store.save_pull_request(incident_id, forge=self.name, branch=record.branch, base_branch=pull.base.ref,
                                     title=record.title, body=pull.body or "", head_sha=record.head_sha,
                                     labels=labels, reverted=reverted, number=record.number, url=record.url,
                                     state=record.state)
        return self.store.update_pull_request(incident_id, **{"state": record.state, "head_sha": record.head_sha,
                                                              **changes})

    def _require(self, incident_id: int) -> GitHubPull:
        pull = self._find(incident_id)
        if pull is None:
            raise ForgeError(f"incident {incident_id} has no pull request on {self.repo_name}; open one first")
        return pull

    def _publish(self, base_sha: str, reverts: list[Revert]) -> str:
        """Recreate each local revert commit on GitHub, file contents and all; the last SHA is the head."""
        with _github("upload the revert commits"):
            parent = self.repo.get_git_commit(base_sha)
            for revert in reverts:
                elements = []
                for change in changed_files(self.git, revert.commit):
                    kind = _TREE_TYPE.get(change.mode, "blob")
                    sha = change.blob
                    if sha is not None and kind == "blob":
                        content = base64.b64encode(blob_bytes(self.git, sha)).decode("ascii")
                        sha = self.repo.create_git_blob(content, "base64").sha
                    elements.append(InputGitTreeElement(change.path, change.mode, kind, sha=sha))
                tree = self.repo.create_git_tree(elements, base_tree=parent.tree)
                parent = self.repo.create_git_commit(revert.message, tree, [parent],
                                                     author=InputGitAuthor(*self.author))
        return parent.sha

    def _point_branch(self, branch: str, sha: str) -> None:
        with _github(f"create branch {branch}"):
            try:
                ref = self.repo.get_git_ref(f"heads/{branch}")
                ref.edit(sha, force=True)  # left by an attempt that crashed before opening the PR
            except UnknownObjectException:
                try:
                    self.repo.create_git_ref(f"refs/heads/{branch}", sha)
                except GithubException as exc:
                    if exc.status != 422:
                        raise
                    # PyGithub repeats a POST whose answer timed out, and GitHub made the branch the first time:
                    # "Reference already exists" means ours is there (the fault suite's GitHub test).
                    self.repo.get_git_ref(f"heads/{branch}").edit(sha, force=True)

    def _check_run(self, head: str, proof: CheckProof) -> str | None:
        """Attach the proof as a check run; with token auth GitHub refuses, so return it as a comment."""
        output = {"title": proof.title, "summary": proof.summary}
        try:
            self.repo.create_check_run(name=CHECK_NAME, head_sha=head, status="completed",
                                       conclusion=proof.conclusion, output=output)
            return None
        except GithubException as exc:
            if exc.status != 403:
                raise _forge_error("create the check run", exc) from None
            log.warning("GitHub refused check run %s (%s); the proof goes in a comment. Check runs need "
                        "GitHub App authentication.", CHECK_NAME, exc.status)
            return f"### {CHECK_NAME}: {proof.conclusion}\n\n**{proof.title}**\n\n{proof.summary}"


def _auth(token, app_id, private_key, installation_id) -> Auth.Auth:
    if token and not app_id:
        return Auth.Token(token)
    if app_id and private_key and installation_id and not token:
        return Auth.AppAuth(app_id, private_key).get_installation_auth(int(installation_id))
    raise ForgeError(
        "the GitHub forge needs either a token (GITHUB_TOKEN) or a GitHub App's app_id, private_key "
        "and installation_id; check runs with the recovery proof need the App"
    )


def _record(incident_id: int, pull: GitHubPull) -> PullRequest:
    state = "merged" if pull.merged_at is not None else pull.state
    return PullRequest(incident_id=incident_id, number=pull.number, branch=pull.head.ref, title=pull.title,
                       state=state, head_sha=pull.head.sha, url=pull.html_url)


def _stale(number: int, head: str, expected: str) -> StaleApproval:
    return StaleApproval(f"PR #{number} now ends at {head}, not {expected[:7]} as approved; "
                         "review the new head and approve again")


def _blocked(number: int, exc: GithubException) -> MergeBlocked:
    """GitHub's reason ('Required status check "ci" is expected.', 'At least 1 approving review is required…')
    and what would let the PR merge."""
    reason = _message(exc) or "the merge is not allowed"
    if "status check" in reason.lower():
        then = "when the required checks pass on GitHub, approve again"
    elif "review" in reason.lower():
        then = f"branch protection wants a review on GitHub: once PR #{number} is approved there, approve again"
    else:
        then = f"PR #{number} on GitHub says what blocks it; approve again once it is cleared"
    return MergeBlocked(f"GitHub refused to merge PR #{number}: {reason.rstrip('.')}. Nothing was merged; {then}")


def _message(exc: GithubException) -> str | None:
    """GitHub's own words, on one line."""
    message = exc.data.get("message") if isinstance(exc.data, dict) else None
    return " ".join(str(message).split()) if message else None


def _forge_error(action: str, exc: GithubException) -> ForgeError:
    if exc.status == 429 or exc.status >= 500:
        # Still failing after PyGithub's own immediate retries: worth the stage's retry with backoff, not an
        # errored incident (the fault suite's GitHub test saw a 503 burst end the incident).
        return ForgeUnavailable(f"GitHub could not {action} (HTTP {exc.status}: {_message(exc) or 'no message'}); "
                                "retried with backoff")
    hint = {401: "check the token or the App's private key",
            403: "check the token's or App's permissions on the repository",
            404: "check the repository name and that the token or App can see it"}.get(exc.status, "try again later")
    return ForgeError(f"GitHub refused to {action} (HTTP {exc.status}: {_message(exc) or 'no message'}); {hint}")


@contextmanager
def _github(action: str) -> Iterator[None]:
    """GitHub's errors as ForgeError (429, 5xx and no answer as ForgeUnavailable); the message carries GitHub's
    words, never a header."""
    try:
        yield
    except GithubException as exc:
        raise _forge_error(action, exc) from None
    except (requests.ConnectionError, requests.Timeout, requests.exceptions.RetryError) as exc:
        # What PyGithub raises once its retries of a 5xx burst or of timeouts are spent: not GithubException.
        raise ForgeUnavailable(f"GitHub did not answer to {action} ({type(exc).__name__}); retried with "
                               "backoff") from None
