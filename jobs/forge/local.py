"""The embedded forge: PR branches in the dbt project's own repository, PR records in the store.

Every git write happens in a throwaway worktree or on refs, so opening a PR never touches the
user's checkout. Merging moves the base branch; if a worktree has the base checked out, it is
fast-forwarded there the way `git pull --ff-only` would (git refuses if that would overwrite
uncommitted changes). Closing keeps the branch: the revert commit stays inspectable, and a retry
for the incident returns the closed PR rather than opening a second.
"""

from __future__ import annotations

from collections.abc import Sequence

from jobs.core.records import PullRequest
from jobs.forge import DEFAULT_LABELS, CheckProof, ForgeError, StaleApproval, branch_name
from jobs.forge.revert import CAIRN_AUTHOR, as_author, build_reverts, resolve, worktree
from jobs.project.git import Git, GitError
from jobs.store.store import Store

_ABSENT = "0" * 40  # update-ref's "this ref must not exist yet"


class LocalForge:
    """PRs without a code host: a branch per incident in the repository, a row per PR in the store."""

    name = "local"

    def __init__(self, git: Git, store: Store, *, author: tuple[str, str] = CAIRN_AUTHOR):
        self.git = git
        self.store = store
        self.author = author

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
        existing = self.store.pull_request_for(incident_id)
        if existing is not None:
            self._restore_branch(existing)
            return existing
        base_sha = resolve(self.git, f"refs/heads/{base_branch}")
        reverts = build_reverts(self.git, base_sha, revert_of, incident_id, self.author, applied)
        head = reverts[-1].commit
        pr = self.store.save_pull_request(
            incident_id, forge=self.name, branch=branch_name(incident_id), base_branch=base_branch, title=title,
            body=body, head_sha=head, labels=labels, reverted=[r.reverted for r in reverts if r.reverted],
        )
        # The store decides which of two racing workers opened the PR; only the winner's commit is published.
        if pr.head_sha == head:
            self.git.run("update-ref", "-m", f"cairn: revert PR for incident #{incident_id}",
                         f"refs/heads/{pr.branch}", head)
        if proof is not None:
            self.comment(incident_id, f"**{proof.title}** ({proof.conclusion})\n\n{proof.summary}")
        return pr

    def get(self, incident_id: int) -> PullRequest | None:
        return self.store.pull_request_for(incident_id)

    def refresh(self, incident_id: int) -> PullRequest | None:
        return self.get(incident_id)  # the store is where local PRs live: nothing can change them elsewhere

    def merge(self, incident_id: int, expected_head_sha: str, actor: str) -> PullRequest:
        pr = self._require(incident_id)
        if pr.state == "merged":
            if pr.head_sha == expected_head_sha:
                return pr  # a retried approval
            raise ForgeError(f"PR #{pr.number} for incident {incident_id} was already merged at {pr.head_sha[:7]}")
        if pr.state == "closed":
            raise ForgeError(f"PR #{pr.number} for incident {incident_id} is closed; reopen the incident to retry")
        head = self._branch_head(pr)
        if head != expected_head_sha or pr.head_sha != expected_head_sha:
            raise StaleApproval(
                f"PR #{pr.number} for incident {incident_id} now ends at {head[:7]}, not {expected_head_sha[:7]} "
                "as approved; review the new head and approve again"
            )
        base = self.store.pull_request_row(incident_id)["base_branch"]
        base_sha = resolve(self.git, f"refs/heads/{base}")
        target = head if self._is_ancestor(base_sha, head) else self._merge_commit(pr, base_sha, actor)
        self._advance(base, base_sha, target)
        return self.store.update_pull_request(
            incident_id, state="merged", merged_at=self.store.clock.now(), merged_by=actor
        )

    def close(self, incident_id: int, reason: str, actor: str) -> PullRequest:
        pr = self._require(incident_id)
        if pr.state == "merged":
            raise ForgeError(f"PR #{pr.number} for incident {incident_id} is already merged; revert it instead")
        if pr.state == "closed":
            return pr
        self.store.audit("forge.pr_closed", incident_id=incident_id, actor=actor,
                         data={"number": pr.number, "reason": reason})
        return self.store.update_pull_request(incident_id, state="closed", closed_reason=reason)

    def comment(self, incident_id: int, text: str) -> None:
        """The local forge's conversation is the incident's audit log."""
        pr = self._require(incident_id)
        self.store.audit("forge.pr_comment", incident_id=incident_id, data={"number": pr.number, "text": text})

    # -- plumbing -----------------------------------------------------------------------------

    def _require(self, incident_id: int) -> PullRequest:
        pr = self.store.pull_request_for(incident_id)
        if pr is None:
            raise ForgeError(f"incident {incident_id} has no pull request; open one first")
        return pr

    def _branch_head(self, pr: PullRequest) -> str:
        try:
            return self.git.head_sha(f"refs/heads/{pr.branch}")
        except GitError:
            raise ForgeError(
                f"branch {pr.branch} of PR #{pr.number} is gone from {self.git.repo}; "
                "open the PR again to restore it"
            ) from None

    def _restore_branch(self, pr: PullRequest) -> None:
        """Recreate the branch if a crash came between recording the PR and publishing its commit."""
        if pr.state == "open":
            self.git.run("update-ref", f"refs/heads/{pr.branch}", pr.head_sha, _ABSENT, check=False)

    def _is_ancestor(self, older: str, newer: str) -> bool:
        try:
            self.git.run("merge-base", "--is-ancestor", older, newer)
            return True
        except GitError:
            return False

    def _merge_commit(self, pr: PullRequest, base_sha: str, actor: str) -> str:
        """The base moved since the PR was opened: merge the PR into it in a throwaway worktree."""
        message = f"Merge {pr.branch}: {pr.title}\n\nApproved by {actor} at {pr.head_sha}.\n"
        with worktree(self.git, base_sha) as tree:
            try:
                tree.run(*as_author(self.author), "merge", "--no-ff", "--no-verify", "-m", message, pr.head_sha)
            except GitError:
                raise ForgeError(
                    f"PR #{pr.number} conflicts with changes made to the base since it was opened; "
                    "resolve it by hand or close it and let Cairn re-verify"
                ) from None
            return tree.head_sha()

    def _advance(self, base: str, old: str, new: str) -> None:
        checkout = self._checked_out(base)
        try:
            if checkout is None:
                self.git.run("update-ref", "-m", "cairn: merge", f"refs/heads/{base}", new, old)
            else:
                checkout.run("merge", "--ff-only", "--quiet", new)
        except GitError as exc:
            where = checkout.repo if checkout else self.git.repo
            raise ForgeError(
                f"could not move {base} to {new[:7]} in {where}: {exc}; if that checkout has uncommitted "
                "changes to the reverted files, commit or stash them, then merge again"
            ) from None

    def _checked_out(self, branch: str) -> Git | None:
        """The worktree that has `branch` checked out, if any."""
        path = None
        for line in self.git.run("worktree", "list", "--porcelain").splitlines():
            if line.startswith("worktree "):
                path = line.removeprefix("worktree ")
            elif line == f"branch refs/heads/{branch}" and path is not None:
                return Git(path)
        return None
