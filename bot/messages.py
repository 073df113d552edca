"""Every text Cairn shows a person, in one place; each error says what to do next."""

from __future__ import annotations

import re

from jobs.core.records import Incident, IncidentStatus
from jobs.core.runs import FAILURE_WORDS
from jobs.propose.runbody import node_name

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

def fix_phrase(draft) -> str:
    """Cairn's own fix in words: 'stg_payments reads payment_method_code as payment_method (commit 1a2b3c4)'."""
    return (f"{node_name(draft.node)} reads {draft.replacement} as {draft.missing}"
            + (f" (commit {draft.commit[:7]})" if draft.commit else ""))


def change_phrase(verification, done: bool = True) -> str:
    """What a verification built: 'applied Cairn's fix 1a2b3c4' or 'reverted 8f31c2a, 77d0e1b' (`done`), else
    'Cairn's fix 1a2b3c4' or 'revert 8f31c2a, 77d0e1b'."""
    if verification.applied:
        return f"{'applied ' * done}Cairn's fix {', '.join(sha[:7] for sha in verification.applied)}"
    shas = ", ".join(sha[:7] for sha in verification.reverted or (verification.sha,))
    return f"{'reverted' if done else 'revert'} {shas}"


TRIAGE_LABEL = {"code_change": "code change", "data_change": "data change", "intentional": "intentional",
                "unknown": "unknown"}

NO_INCIDENTS = "No open incidents. Every contract is inside its baseline band."
BUILD_HELD = "Kill switch on: the production build (schedule.build) is held; `cairn unkill` releases it."
RUN_KNOWN = "Run {invocation} was already recorded; nothing changed."
RUN_INCIDENT = "incident #{id} {change}: {node}: {status} (`cairn incident {id}`)"
NO_RUNS = "No production runs recorded yet: `cairn ingest TARGET_DIR` records one after a deploy (docs/runs.md)."
UNEXPECTED_ERROR = ("Cairn could not do that: something failed on its side. The failure is logged with its traceback "
                    "as error {error_id}; quote that ID when you report it.")
CAIRN_ERROR = "{error} (error ID {error_id})"
UNSIGNED_REQUEST = "Not signed by Slack with this app's signing secret (or signed more than five minutes ago)."
UNSIGNED_WEBHOOK = ("Not signed with this dbt Cloud webhook's secret: the Authorization header must be the hex "
                    "HMAC-SHA256 of the body (set DBT_CLOUD_WEBHOOK_SECRET to the webhook's secret).")
UNREADABLE_WEBHOOK = "Signed, but not a dbt Cloud job event:"
WEBHOOK_POST_ONLY = "dbt Cloud's job webhooks are POSTed here; nothing else is served on this path."
OTHER_ACCOUNT = "A run of dbt Cloud account {got}; Cairn watches account {account} (dbt_cloud.account_id in cairn.yml)."
WEBHOOK_IGNORED = "Not ingested: {event} of run {run} (job {job}); Cairn records finished runs of its jobs only."
WEBHOOK_QUEUED = "Run {run} finished: its artifacts are being fetched and recorded."
UNREADABLE_REQUEST = "Signed, but not a request Slack sends: the body is neither form fields nor a JSON object."
BAD_BUTTON = ("This button carries {value!r}, which is not a value Cairn puts on its cards: use the buttons on the "
              "incident's current card.")
NOT_AN_APPROVER = ("Only approvers can do that (slack.approvers in cairn.yml lists their user or user-group IDs). "
                   "Your attempt was recorded in the audit trail.")
STALE_APPROVAL = ("PR #{number} changed after this card showed it (it showed {shown}, the branch is now at {head}): "
                  "review the new head on the refreshed card and approve again.")
KILLED_APPROVAL = ("The kill switch is on ({reason}, by {by}) and covers incident #{incident}: nothing is merged. "
                   "Release it with `/cairn unkill`, then approve again.")
HELD = ("Held by the kill switch: Cairn would now {would}; it did nothing beyond reading production and "
        "resumes at the next check once the switch is released.")
NO_REDIS = "`cairn worker` runs RQ jobs from Redis: set REDIS_URL (without it, `cairn check` runs the loop in-process)."
WORKER_LOST_REDIS = ("Redis became unreachable ({error}): this worker stops. Start it again once Redis is back "
                     "(a process supervisor does); its start resumes every incident left in flight.")
CHECK_ERRORED = ("a stage failed: incident {ids} ended errored; `cairn incident N` shows the stage, the reason and the "
                 "error ID")
NO_SLACK = "`cairn serve` needs SLACK_BOT_TOKEN and, over HTTP, SLACK_SIGNING_SECRET (see docs/slack.md)."
NO_APP_TOKEN = "`cairn serve --socket` needs SLACK_APP_TOKEN (an xapp- token with connections:write)."
BACKFILL_SKIPPED = "Skipped (no time_column/window, cannot be replayed): {ids}"
BACKFILL_CAVEAT = ("Backfilled values are what today's code says about past windows: valid while the "
                   "models behind them have not changed since. They are marked backfilled.")


KIND_LABEL = FAILURE_WORDS  # one vocabulary for the card and the PR (jobs.core.runs)
_TEST_HASH = re.compile(r"^[0-9a-f]{10}$")


def node_words(unique_id: str) -> str:
    """'model.shop.stg_refunds' -> 'model stg_refunds'; a generic test's hash suffix left off."""
    resource, *rest = unique_id.split(".")
    name = rest[1:] or rest
    if resource == "test" and len(name) > 1 and _TEST_HASH.match(name[-1]):
        name = name[:-1]
    return f"{resource} {'.'.join(name)}" if name else unique_id


def headline(incident: Incident) -> str:
    """What the incident is about: the contract, or a failed run's node and how it failed, in words."""
    run = incident.details.run
    if run is None:
        return incident.contract_id
    how = (f"{run.failing_rows:,} failing row{'s' * (run.failing_rows != 1)}" if run.failing_rows is not None
           else KIND_LABEL.get(run.kind, run.kind.replace("_", " ")))
    return f"Failed run: {node_words(run.node)} — {how}"


def headline_and_regression(incident: Incident, baseline_days: int | None = None) -> str:
    """The headline, then the regression: a card's notification text. A failed model's headline ends in its
    class, which the regression starts with: said once ('Failed run: model stg_refunds — compilation error in
    the production run at 5a20dc5'), not twice."""
    run, said = incident.details.run, regression(incident, baseline_days)
    if run is not None and run.failing_rows is None:
        return f"Failed run: {node_words(run.node)} — {said}"
    return f"{headline(incident)} {said}"


def regression(incident: Incident, baseline_days: int | None = None) -> str:
    """'-18.4% vs 28d baseline' — the figure people quote; '-28.2% from deploy 5a20dc5' when a deploy
    check measured the deploy's own effect (its change is against the value without the deploy); a failed
    run's class and SHA ('test failure in the production run at 5a20dc5')."""
    deploy, run = incident.details.deploy, incident.details.run
    if run is not None:  # a failed production run's incident: no metric moved, a node failed
        return (f"{KIND_LABEL.get(run.kind, run.kind.replace('_', ' '))} in the production run at {short_sha(incident.first_bad_sha)}"
                + (f", {run.failures} runs in a row" if run.failures > 1 else ""))
    if deploy and incident.change_pct is not None:
        return f"{incident.change_pct:+.1f}% from deploy {short_sha(deploy.to_sha)}"
    if incident.change_pct is None:
        return "no baseline to compare with"
    days = f"{baseline_days}d " if baseline_days else ""
    return f"{incident.change_pct:+.1f}% vs {days}baseline"


def short_sha(sha: str | None) -> str:
    return sha[:7] if sha else "unknown"


def chain_lines(incident: Incident) -> list[str]:
    """How an incident relates to the contract's other open ones: what it follows, what followed it."""
    from jobs.core.formatting import fmt_number

    lines = []
    follows = incident.details.follows
    if incident.follows_id is not None and follows:
        lines.append(f"Follows incident #{incident.follows_id}, still open: the deploy of "
                     f"{short_sha(incident.first_bad_sha)} took the metric from {fmt_number(follows.level)} to "
                     f"{fmt_number(incident.value or 0.0)}, so its own commits are the suspects and the fix must bring "
                     f"it back to {fmt_number(follows.level)}, not to the baseline.")
    if incident.details.followed_by:
        lines.append(f"A later deploy made it worse: incident #{incident.details.followed_by} has that deploy's "
                     "commits as suspects.")
    return lines


LEFT_GROUP = {
    "unexplained": ("Left group #{group}: no commit in the suspect range touches this metric's lineage, so no "
                    "revert of the group can bring it back."),
    "not_recovered": ("Left group #{group}: no revert the group tried on its clone brought this metric back (the "
                      "best, {fix}, brought back others), so it runs its own attribution, verification and PR."),
    "split": ("Group #{group} split: no one revert brings all its incidents back, so this one goes on with the "
              "revert of {fix}, which brought it back on the group's clone."),
    "split_alone": "Group #{group} split: no commit in the range explains the others, so this one goes on alone.",
}
GROUP_PR = ("The group's PR, opened by incident #{leader}: Approve or Reject on this card acts on it for every "
            "incident of the group.")


def group_lines(incident: Incident) -> list[str]:
    """Which incidents share its culprit, verification and PR."""
    members = incident.details.group.members if incident.details.group else ()
    others = [f"#{m}" for m in members if m != incident.id]
    if incident.group_id is None or not others:
        return []
    if incident.group_id == incident.id:
        return [f"Grouped with {', '.join(others)}: one deploy broke them together, so they get one culprit, one "
                "verification and one PR, run from this incident."]
    rest = [m for m in others if m != f"#{incident.group_id}"]
    return [f"Grouped with #{incident.group_id}{' and ' + ', '.join(rest) if rest else ''}: one culprit, one "
            f"verification and one PR for all of them, run from #{incident.group_id}."]


def left_group_line(incident: Incident) -> str | None:
    """Why it left the group it was in, if it did."""
    left = incident.details.left_group
    if left is None:
        return None
    why = "split_alone" if left.why == "split" and not left.fix else left.why
    if why not in LEFT_GROUP:
        return None
    return LEFT_GROUP[why].format(group=left.group, fix=short_sha(left.fix))
