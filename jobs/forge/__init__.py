"""The forge: where a verified revert becomes a pull request, and where an approval merges it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from jobs.core.errors import CairnError, TransientError
from jobs.core.records import PullRequest

CHECK_NAME = "cairn/recovery"
DEFAULT_LABELS = ("cairn", "revert")


class ForgeError(CairnError):
    """The forge refused or failed an operation; the message says what to do next."""


class ForgeUnavailable(TransientError, ForgeError):
    """The code host is rate-limiting, failing (5xx) or not answering: the stage is retried with the queue's
    backoff, and every write is safe to repeat."""


class StaleApproval(ForgeError):
    """The PR's head moved after the approver saw it: the approval no longer covers what would merge."""


class MergeBlocked(ForgeError):
    """The code host refused the merge (branch protection's required checks or reviews, a ruleset): nothing
    was merged, the PR stays open, and the message says what would let it merge."""


@dataclass(frozen=True)
class CheckProof:
    """The recovery proof a check run carries on the PR's head commit."""

    title: str  # one line, e.g. "orders.revenue recovered: 812.0 → 1,204.5"
    summary: str  # Markdown
    conclusion: str = "success"  # success, failure, neutral


def branch_name(incident_id: int) -> str:
    """One branch per incident: the name is how every retry finds the PR it already opened."""
    return f"cairn/incident-{incident_id}"


class Forge(Protocol):
    """What Cairn needs from a code host; every write is safe to retry."""

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
        """Open the incident's revert PR, or return the one already opened for it. `applied`: Cairn's own fix
        commits (a failure no commit explains), carried in place of or on top of the reverts."""
        ...

    def get(self, incident_id: int) -> PullRequest | None:
        """The incident's PR, if one was opened."""
        ...

    def refresh(self, incident_id: int) -> PullRequest | None:
        """The incident's PR as the code host has it now (merged or closed there by a person), the store's copy
        brought up to date."""
        ...

    def merge(self, incident_id: int, expected_head_sha: str, actor: str) -> PullRequest:
        """Merge the PR if its head is still `expected_head_sha`; raise StaleApproval if it moved, MergeBlocked
        if the code host's branch protection refuses it."""
        ...

    def close(self, incident_id: int, reason: str, actor: str) -> PullRequest:
        """Close the PR without merging, saying why and who."""
        ...

    def comment(self, incident_id: int, text: str) -> None:
        """Add a comment to the PR's conversation."""
        ...


__all__ = [
    "CHECK_NAME", "DEFAULT_LABELS", "CheckProof", "Forge", "ForgeError", "MergeBlocked", "StaleApproval",
    "branch_name",
]
