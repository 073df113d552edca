"""Real git, through its command line: the repository Cairn reads history from and writes reverts to."""

from __future__ import annotations

import subprocess
from pathlib import Path

from jobs.core.errors import CairnError


class GitError(CairnError):
    """A git command failed; the message carries git's own words."""


class Git:
    def __init__(self, repo: Path):
        self.repo = Path(repo)

    def run(self, *args: str, check: bool = True, env: dict[str, str] | None = None) -> str:
        proc = subprocess.run(["git", "-C", str(self.repo), *args], capture_output=True, text=True,
                              env=env)
        if check and proc.returncode != 0:
            raise GitError(f"git {' '.join(args)} failed in {self.repo}: {proc.stderr.strip()}")
        return proc.stdout

    def head_sha(self, ref: str = "HEAD") -> str:
        """The commit `ref` points at (a branch name gives the deployed SHA)."""
        return self.run("rev-parse", "--verify", f"{ref}^{{commit}}").strip()
