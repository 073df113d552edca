"""A throwaway git worktree at the deployed SHA, where candidate commits are reverted uncommitted."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from jobs.project.git import Git, GitError

WORKTREE_PREFIX = "cairn-worktree-"


class Worktree:
    """`git worktree add --detach` in a temporary directory; removed, with its metadata, on exit."""

    def __init__(self, repo: Path, sha: str, parent: Path):
        self.repo, self.sha, self._parent = Path(repo), sha, parent
        self.path = parent / "tree"
        self.conflict: str | None = None  # the SHA whose revert conflicted
        self.conflict_files: tuple[str, ...] = ()
        self.git = Git(self.path)

    @classmethod
    def create(cls, repo: Path, sha: str, root: Path | None = None, label: str = "") -> "Worktree":
        """A detached worktree in a fresh directory under `root` (default: the system temp dir).

        `label` (an incident ID) goes into the directory name, so a retried job can find and remove
        what its killed predecessor left.
        """
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)
        parent = Path(tempfile.mkdtemp(prefix=f"{WORKTREE_PREFIX}{label}-" if label else WORKTREE_PREFIX, dir=root))
        tree = cls(repo, sha, parent)
        try:
            Git(repo).run("worktree", "add", "--detach", str(tree.path), sha)
        except BaseException:
            tree.remove()
            raise
        return tree

    def revert(self, shas: Sequence[str]) -> bool:
        """Revert `shas` newest first, uncommitted; on a conflict undo everything and return False."""
        for sha in newest_first(self.git, shas):
            proc = subprocess.run(["git", "-C", str(self.path), "revert", "--no-commit", sha],
                                  capture_output=True, text=True)
            if proc.returncode == 0:
                continue
            unmerged = self.git.run("diff", "--name-only", "--diff-filter=U").split()
            self._reset()
            if not unmerged:
                raise GitError(f"git revert --no-commit {sha} failed in {self.path}: {proc.stderr.strip()}")
            self.conflict, self.conflict_files = sha, tuple(unmerged)
            return False
        return True

    def apply(self, shas: Sequence[str]) -> bool:
        """Apply `shas` (Cairn's own fix commits) in order, uncommitted; on a conflict undo and return False."""
        for sha in shas:
            proc = subprocess.run(["git", "-C", str(self.path), "cherry-pick", "--no-commit", sha],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                self.conflict = sha
                self.conflict_files = tuple(self.git.run("diff", "--name-only", "--diff-filter=U").split())
                self.git.run("cherry-pick", "--abort", check=False)
                self._reset()
                return False
        return True

    def applies(self, shas: Sequence[str]) -> bool:
        """Whether `shas` revert cleanly together, newest first; the worktree is left at its SHA either way."""
        clean = self.revert(shas)
        self._reset()
        return clean

    def changed(self) -> list[str]:
        """Repository paths the uncommitted revert changes (both sides of a rename)."""
        return self.git.run("diff", "--name-only", "--no-renames", "HEAD").split()

    def _reset(self) -> None:
        self.git.run("revert", "--abort", check=False)
        self.git.run("reset", "--hard", "--quiet", self.sha)
        self.git.run("clean", "-fdq")

    def remove(self) -> None:
        """Remove the worktree and its registration; safe to call twice or after a failed add."""
        repo = Git(self.repo)
        if self.path.exists():
            repo.run("worktree", "remove", "--force", str(self.path), check=False)
        shutil.rmtree(self._parent, ignore_errors=True)
        repo.run("worktree", "prune", check=False)

    def __enter__(self) -> "Worktree":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def newest_first(git: Git, shas: Sequence[str]) -> list[str]:
    """Order commits so that a descendant comes before its ancestors (its revert must go first)."""
    depth = {sha: int(git.run("rev-list", "--count", sha).strip()) for sha in dict.fromkeys(shas)}
    return sorted(depth, key=lambda sha: depth[sha], reverse=True)
