"""Conflicting followers: the later commits whose changes to a culprit's lines stop its revert applying alone.

Reverting the culprit at the deployed SHA conflicts when a later commit rewrote the same lines. The
followers are those later commits (after the culprit, up to the deployed SHA) touching the conflicting
files whose revert, together with the culprit's, newest first, is needed for it to apply: a later commit
of the same file whose revert is not needed (other lines, a decoy) is left out. At most MAX_FOLLOWERS;
more than that is a rewrite, not a follow-up, and a person decides.
"""

from __future__ import annotations

from pathlib import Path

from jobs.project.git import Git
from jobs.project.worktree import Worktree

MAX_FOLLOWERS = 3


def conflicting_followers(repo: Path, culprit: str, deployed_sha: str, root: Path | None = None,
                          label: str = "", limit: int = MAX_FOLLOWERS) -> tuple[str, ...]:
    """The culprit's conflicting followers, newest first; () when its revert applies alone, or when no
    group of at most `limit` later commits of the conflicting files makes it apply."""
    with Worktree.create(repo, deployed_sha, root, label=label) as tree:
        if tree.applies([culprit]):
            return ()
        files = tree.conflict_files  # where the culprit's revert alone conflicted
        later = Git(repo).run("rev-list", "--topo-order", "--no-merges", f"{culprit}..{deployed_sha}",
                              "--", *files).split()  # newest first
        if not later or len(later) > limit or not tree.applies([*later, culprit]):
            return ()
        needed = list(later)
        for sha in later:  # drop each follower whose revert the culprit's does not need
            rest = [s for s in needed if s != sha]
            if tree.applies([*rest, culprit]):
                needed = rest
        return tuple(needed)
