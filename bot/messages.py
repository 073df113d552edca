"""Every text Cairn shows a person, in one place; each error says what to do next."""

from __future__ import annotations

from jobs.records import Incident, IncidentStatus

STATUS_LABEL = {
    IncidentStatus.detected: "Detected",
    IncidentStatus.attributing: "Attributing",
    IncidentStatus.verifying: "Clone running",
    IncidentStatus.verified: "Verified revert",
    IncidentStatus.not_verified: "Not verified",
    IncidentStatus.pr_opened: "PR opened",
    IncidentStatus.merged: "Merged",
    IncidentStatus.recovered: "Recovered",
    IncidentStatus.escalated: "Escalated",
    IncidentStatus.rejected: "Rejected",
    IncidentStatus.errored: "Errored",
    IncidentStatus.resolved: "Resolved",
}

NO_INCIDENTS = "No open incidents. Every contract is inside its baseline band."
UNEXPECTED_ERROR = "Unexpected error {error_id}: {error}. It was logged with its traceback; quote the ID when you report it."
BACKFILL_SKIPPED = "Skipped (no time_column/window, cannot be replayed): {ids}"
BACKFILL_CAVEAT = ("Backfilled values are what today's code says about past windows: valid while the "
                   "models behind them have not changed since. They are marked backfilled.")


def regression(incident: Incident, baseline_days: int | None = None) -> str:
    """'-18.4% vs 28d baseline' — the figure people quote."""
    if incident.change_pct is None:
        return "no baseline to compare with"
    days = f"{baseline_days}d " if baseline_days else ""
    return f"{incident.change_pct:+.1f}% vs {days}baseline"


def short_sha(sha: str | None) -> str:
    return sha[:7] if sha else "unknown"
WORKER_NOT_READY = ("This release runs every stage in-process: `cairn check` needs no worker. "
                    "RQ workers arrive with the Slack surface; use `cairn scheduler` meanwhile.")
SERVE_NOT_READY = ("The Slack app is not part of this release yet; incidents are on the CLI: "
                   "`cairn incidents`, `cairn incident ID`.")
