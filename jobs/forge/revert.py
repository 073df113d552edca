"""Revert commits built in a throwaway worktree: the user's checkout, index and HEAD are never touched."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from jobs.forge import ForgeError
from jobs.project.git import Git, GitError
from jobs.project.worktree import Worktree

CAIRN_AUTHOR = ("Cairn", "cairn@users.noreply.localhost")


@dataclass(frozen=True)
class Revert:
    """One commit of a PR's branch, made on top of the previous one: the revert of `reverted`, or (None) one of
    Cairn's own fix commits applied."""

    reverted: str | None
    commit: str
    message: str


def fix_ref(incident_id: int) -> str:
    """Where an incident's fix commit lives until its PR carries it: out of every branch, kept from gc."""
    return f"refs/cairn/fixes/{incident_id}"


def commit_fix(git: Git, base_sha: str, path: str, text: str, message: str, incident_id: int,
               author: tuple[str, str] = CAIRN_AUTHOR) -> str:
    """Cairn's fix as one commit on `base_sha` that writes `text` to `path` (repository-relative), kept at
    `fix_ref`; a retry that finds the same fix there reuses it."""
    ref = fix_ref(incident_id)
    try:
        existing = git.head_sha(ref)
    except GitError:
        existing = None
    if existing is not None and git.run("rev-parse", f"{existing}^").strip() == base_sha and \
            git.run("show", f"{existing}:{path}", check=False) == text:
        return existing
    with worktree(git, base_sha) as tree:
        (tree.repo / path).write_text(text)
        tree.run("add", "--", path)
        tree.run(*as_author(author), "commit", "--quiet", "--no-verify", "-m", message)
        sha = tree.head_sha()
    git.run("update-ref", "-m", f"cairn: fix for incident #{incident_id}", ref, sha)
    return sha


@dataclass(frozen=True)
class FileChange:
    """A file a commit changes: its new mode and blob, or `blob` None when the commit deletes it."""

    path: str
    mode: str
    blob: str | None


def as_author(author: tuple[str, str]) -> tuple[str, ...]:
    """Global options that make `git` commit as `author` whatever the repository's config says."""
    name, email = author
    # Signing or hooks configured for people would block or fail a bot's commit.
    return ("-c", f"user.name={name}", "-c", f"user.email={email}", "-c", "commit.gpgsign=false")


@contextmanager
def worktree(git: Git, commit: str) -> Iterator[Git]:
    """A detached worktree at `commit` in a temporary directory, removed afterwards."""
    with Worktree.create(git.repo, commit) as tree:
        yield tree.git


def resolve(git: Git, ref: str) -> str:
    """The full SHA `ref` names; ForgeError if the repository does not have it."""
    try:
        return git.head_sha(ref)
    except GitError:
        raise ForgeError(
            f"the repository at {git.repo} has no commit {ref!r}; fetch it (git fetch) and try again"
        ) from None


def newest_first(git: Git, base_sha: str, shas: Sequence[str]) -> list[str]:
    """Full SHAs of `shas`, newest first; each must be in the history of `base_sha`."""
    full = list(dict.fromkeys(resolve(git, sha) for sha in shas))
    if not full:
        raise ForgeError("nothing to revert: pass at least one commit SHA")
    position = {sha: i for i, sha in enumerate(git.run("rev-list", "--topo-order", base_sha).split())}
    outside = [sha[:7] for sha in full if sha not in position]
    if outside:
        raise ForgeError(f"cannot revert {', '.join(outside)}: not in the history of {base_sha[:7]}")
    return sorted(full, key=position.__getitem__)


def revert_message(git: Git, sha: str, incident_id: int) -> str:
    subject = git.run("log", "-1", "--format=%s", sha).strip()
    return f"Revert {sha[:7]}: {subject}\n\nThis reverts commit {sha}.\n\nCairn-Incident: #{incident_id}\n"


def build_reverts(
    git: Git, base_sha: str, shas: Sequence[str], incident_id: int, author: tuple[str, str] = CAIRN_AUTHOR,
    applied: Sequence[str] = (),
) -> list[Revert]:
    """On top of `base_sha`, commit each of Cairn's fix commits in `applied` (cherry-picked, its message kept)
    and the revert of each SHA, newest first; the last is the PR's head."""
    reverts = []
    if not shas and not applied:
        raise ForgeError("nothing to revert: pass at least one commit SHA")
    with worktree(git, base_sha) as tree:
        for sha in applied:
            try:
                tree.run(*as_author(author), "cherry-pick", "--no-commit", resolve(git, sha))
            except GitError:
                raise ForgeError(f"Cairn's fix {sha[:7]} no longer applies on {base_sha[:7]}: the file changed "
                                 "since it was verified; the incident needs a new fix") from None
            message = git.run("log", "-1", "--format=%B", sha)
            tree.run(*as_author(author), "commit", "--quiet", "--no-verify", "-m", message)
            reverts.append(Revert(reverted=None, commit=tree.head_sha(), message=message))
        for sha in newest_first(git, base_sha, shas) if shas else ():
            try:
                tree.run("revert", "--no-commit", sha)
            except GitError:
                raise ForgeError(
                    f"reverting {sha[:7]} on {base_sha[:7]} conflicts with later changes to the same lines; "
                    "Cairn cannot revert it cleanly: revert it by hand or escalate the incident"
                ) from None
            if not tree.run("diff", "--cached", "--name-only").strip():
                raise ForgeError(f"{sha[:7]} is already reverted on {base_sha[:7]}: nothing to change")
            message = revert_message(git, sha, incident_id)
            tree.run(*as_author(author), "commit", "--quiet", "--no-verify", "-m", message)
            reverts.append(Revert(reverted=sha, commit=tree.head_sha(), message=message))
    return reverts


def changed_files(git: Git, commit: str) -> list[FileChange]:
    """What `commit` changes relative to its first parent, file by file."""
    out = git.run("diff-tree", "-r", "-z", "--no-renames", "--no-commit-id", f"{commit}^", commit)
    fields = out.split("\0")
    changes = []
    for meta, path in zip(fields[0::2], fields[1::2]):
        old_mode, new_mode, _old, new, status = meta.lstrip(":").split(" ")
        deleted = status == "D"
        changes.append(FileChange(path, old_mode if deleted else new_mode, None if deleted else new))
    return changes


def blob_bytes(git: Git, blob: str) -> bytes:
    """A blob's exact bytes (Git.run decodes text; files may be binary)."""
    proc = subprocess.run(["git", "-C", str(git.repo), "cat-file", "blob", blob], capture_output=True)
    if proc.returncode != 0:
        raise GitError(f"git cat-file blob {blob} failed in {git.repo}: {proc.stderr.decode(errors='replace')}")
    return proc.stdout
