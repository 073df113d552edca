"""The store's pull requests: one per incident, numbered per forge; mixed into `jobs.store.store.Store`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from jobs.core.errors import NotFound, StoreError
from jobs.core.records import PullRequest
from jobs.store.database import pull_requests

PR_STATES = ("open", "merged", "closed")
_PR_FIELDS = {"state", "head_sha", "title", "body", "url", "labels", "merged_at", "merged_by", "closed_reason"}


class PullRequestStore:
    """Persistence of the PRs Cairn opens; needs the `_transaction()` of `jobs.store.store.Store`."""

    def save_pull_request(
        self,
        incident_id: int,
        *,
        forge: str,
        branch: str,
        base_branch: str,
        title: str,
        body: str,
        head_sha: str,
        labels: Sequence[str] = (),
        reverted: Sequence[str] = (),
        number: int | None = None,
        url: str | None = None,
        state: str = "open",
    ) -> PullRequest:
        """Record the incident's PR; if it already has one, return that one unchanged.

        Without `number` the PR takes the forge's next number (the local forge numbers its own).
        """
        now = self.clock.now()
        row = dict(
            incident_id=incident_id, forge=forge, branch=branch, base_branch=base_branch, title=title,
            body=body, labels=list(labels), reverted=list(reverted), state=_state(state), head_sha=head_sha,
            url=url, created_at=now, updated_at=now,
        )
        next_number = sa.select(sa.func.coalesce(sa.func.max(pull_requests.c.number), 0) + 1).where(
            pull_requests.c.forge == forge
        )
        for _attempt in range(3):
            try:
                with self._transaction(write=True) as conn:
                    if conn.dialect.name == "postgresql" and number is None:
                        # Numbers are max+1: writers of one forge take turns (SQLite's BEGIN IMMEDIATE does this).
                        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
                                     {"key": f"cairn.pr_number.{forge}"})
                    chosen = number if number is not None else conn.execute(next_number).scalar_one()
                    conn.execute(pull_requests.insert().values({**row, "number": chosen}))
                return self.pull_request_for(incident_id)  # type: ignore[return-value]
            except IntegrityError as exc:
                error = exc
                existing = self.pull_request_for(incident_id)
                if existing is not None:
                    return existing
                if number is not None:
                    break
        reason = str(error.orig).strip().splitlines()[0] if error.orig is not None else "constraint violated"
        raise StoreError(f"could not record the pull request of incident {incident_id}: {reason}") from error

    def pull_request_for(self, incident_id: int) -> PullRequest | None:
        """The incident's PR, if one was opened."""
        row = self.pull_request_row(incident_id)
        return _pull_request(row) if row else None

    def pull_request_row(self, incident_id: int) -> dict[str, Any] | None:
        """Everything stored about the incident's PR (body, base, labels, merge and close details)."""
        query = pull_requests.select().where(pull_requests.c.incident_id == incident_id)
        with self._transaction() as conn:
            row = conn.execute(query).first()
        return dict(row._mapping) if row else None

    def update_pull_request(self, incident_id: int, **fields: Any) -> PullRequest:
        """Change the incident's PR: state, head_sha, title, body, url, labels, merged_at/by, closed_reason."""
        unknown = set(fields) - _PR_FIELDS
        if unknown:
            raise TypeError(f"update_pull_request() cannot change {', '.join(sorted(unknown))}")
        values = dict(fields, updated_at=self.clock.now())
        if "state" in fields:
            values["state"] = _state(fields["state"])
        if "labels" in fields:
            values["labels"] = list(fields["labels"])
        query = pull_requests.update().where(pull_requests.c.incident_id == incident_id).values(values)
        with self._transaction(write=True) as conn:
            if conn.execute(query).rowcount == 0:
                raise NotFound(f"incident {incident_id} has no pull request in the store")
        return self.pull_request_for(incident_id)  # type: ignore[return-value]


def _state(state: str) -> str:
    if state not in PR_STATES:
        raise ValueError(f"pull request state {state!r} is not one of {', '.join(PR_STATES)}")
    return state


def _pull_request(row: dict[str, Any]) -> PullRequest:
    return PullRequest(
        incident_id=row["incident_id"], number=row["number"], branch=row["branch"], title=row["title"],
        state=row["state"], head_sha=row["head_sha"], url=row["url"],
    )
