"""The incident's story, one step per stage that has happened: what Slack threads and the terminal prints.

Steps are derived only from the incident (its status and details) and its PR, so the same state
always gives the same keys and text and the notifier can post each key once. Lines are plain
text; each surface escapes them for itself.

Details are the typed `IncidentDetails` each stage wrote (`jobs.core.records`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from bot.messages import (
    GROUP_PR,
    STATUS_LABEL,
    TRIAGE_LABEL,
    chain_lines,
    change_phrase,
    fix_phrase,
    group_lines,
    left_group_line,
    regression,
    short_sha,
)
from jobs.attribute.groups import NOT_RECOVERED, SPLIT
from jobs.core.formatting import fmt_value
from jobs.core.records import (
    BaselineStats,
    Incident,
    IncidentDetails,
    IncidentStatus,
    PullRequest,
    RunDetail,
    Verdict,
    Verification,
)
from jobs.detect.observe import UNEXPLAINED
from jobs.propose.prbody import MAX_SAMPLE_ROWS, redact, tests_line
from jobs.warehouse.row_deltas import sample_line
from policies.decide import Decision

TOP_CAUSES = 3
STALE_SHOWN = 8  # nodes a failed run left stale, named in the thread


@dataclass(frozen=True)
class Step:
    key: str  # stable: the notifier posts each key once per incident
    title: str
    lines: tuple[str, ...]


def thread_steps(incident: Incident, pr: PullRequest | None, *, baseline_days: int | None = None) -> list[Step]:
    """Every stage the incident has been through, in order; `pr` (the forge's current view) wins over details."""
    details = incident.details
    pr = incident_pr(incident, pr)
    loop = [
        _attribution(incident),
        _evidence(details),
        _verification(details),
        _triage(details),
        _decision(details),
        _pull_request(incident, pr),
        _merge_blocked(incident),
    ]
    left = left_group_line(incident)
    why_left = details.left_group.why if details.left_group else None
    if why_left == NOT_RECOVERED:
        # Its own loop after the group's: new keys, so the notifier posts these steps under the group's.
        loop = [replace(step, key=f"{step.key}:own") if step else None for step in loop]
    parted = "Group split" if why_left == SPLIT else "Left its group"
    steps = [_detected(incident, baseline_days), Step("left_group", parted, (left,)) if left else None, *loop]
    return [step for step in steps if step is not None] + _outcome(incident, pr)


def incident_pr(incident: Incident, pr: PullRequest | None) -> PullRequest | None:
    """The PR as the forge sees it now if given, else as the loop recorded it."""
    return pr or incident.details.pr


def render_terminal(steps: Sequence[Step]) -> str:
    """The thread as the terminal shows it: a title per step, its lines indented under it."""
    lines = []
    for step in steps:
        lines += [f"  ● {step.title}", *(f"      {line}" for line in step.lines)]
    return "\n".join(lines)


# -- phrases shared with the terminal's incident view (bot/render.py) --------------------------


def moment(at: datetime | None, sha: str | None) -> str:
    """'2026-11-23 01:00 at 5a20dc5'."""
    return f"{at:%Y-%m-%d %H:%M} at {short_sha(sha)}" if at else "none recorded"


def baseline_phrase(baseline: BaselineStats) -> str:
    """'forecast 14,446 from 28 points, band 13,001–15,891 (weekly pattern)'."""
    return (f"forecast {fmt_value(baseline.expected)} from {baseline.n} points, band {fmt_value(baseline.lower)}–"
            f"{fmt_value(baseline.upper)}{' (weekly pattern)' if baseline.seasonal else ''}")


def cause_phrase(sha: str, files: Sequence[str], confidence: float) -> str:
    """'5a20dc5 · models/marts/fct_orders.sql (82%)'."""
    return f"{short_sha(sha)} · {', '.join(files) or 'no files'} ({confidence:.0%})"


def proof_phrase(verdict: str, clone_id: str | None, before: float | None, after: float | None, *,
                 rows: bool = False) -> str:
    """'verified on duckdb:incident-1: 14,265 → 19,098'; a failed test's values are its failing rows (`rows`);
    without values (a failed model), where only."""
    if not clone_id:
        return verdict
    return f"{verdict} on {clone_id}" + (f": {fmt_value(before)} → {fmt_value(after)}{' failing rows' * rows}"
                                          if before is not None or after is not None else "")


def run_proof(verdict: str) -> str:
    """What a failed run's revert was judged on: the build of its nodes, not a metric back in a band."""
    return "the failed run's nodes build and pass" if verdict == Verdict.verified.value else \
        "the failed run's nodes do not all build and pass"


def decision_phrase(decision: Decision) -> str:
    """'open_pr (org mode is assisted; verified revert; a human reviews and merges)'."""
    return f"{decision.action.value} ({'; '.join(decision.reasons)})"


def pr_phrase(pr_number: int, url: str | None, branch: str, state: str) -> str:
    """'#12 https://github.com/acme/analytics/pull/12 (open)', the branch when there is no URL."""
    return f"#{pr_number} {url or branch} ({state})"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# -- the steps ---------------------------------------------------------------------------------

def _detected(incident: Incident, baseline_days: int | None) -> Step:
    lines = [f"First bad: {moment(incident.first_bad_at, incident.first_bad_sha)}",
             f"Last good: {moment(incident.last_good_at, incident.last_good_sha)}"]
    # Recovery overwrites value and reason with the healthy measurement: show those under the outcome.
    if incident.details.run is not None:
        lines[:] = [f"Failed run: {moment(incident.first_bad_at, incident.first_bad_sha)}",
                    f"Last green run: {moment(incident.last_good_at, incident.last_good_sha)}"]
        if incident.status not in (IncidentStatus.recovered, IncidentStatus.resolved):
            lines[:0] = [incident.reason, regression(incident, baseline_days), *_run_lines(incident.details.run),
                         *group_lines(incident)]
    elif incident.status not in (IncidentStatus.recovered, IncidentStatus.resolved):
        versus = f" against the {baseline_phrase(incident.baseline)}" if incident.baseline else ""
        if incident.details.deploy and incident.baseline and incident.value is not None \
                and incident.baseline.contains(incident.value):
            versus += "; inside the band, where the day's noise hides it"
        lines[:0] = [incident.reason, f"{regression(incident, baseline_days)}: {fmt_value(incident.value)}{versus}",
                     *chain_lines(incident), *group_lines(incident)]
    return Step("detected", STATUS_LABEL[IncidentStatus.detected], tuple(lines))


def _run_lines(run: RunDetail) -> list[str]:
    """The failing node, the run, what it left stale and dbt's error, line by line."""
    stale = [uid for uid in run.stale if uid != run.node]
    return [f"Node: {run.node}" + (f" ({run.failing_rows:,} failing rows)" if run.failing_rows is not None else ""),
            f"Run: {run.invocation_id}" + (f", failing again in {run.last_invocation_id} ({run.failures} runs)"
                                           if run.failures > 1 else ""),
            *([f"Left stale by the run: {', '.join(stale[:STALE_SHOWN])}"
               + (f" and {len(stale) - STALE_SHOWN} more" if len(stale) > STALE_SHOWN else "")] if stale else []),
            "dbt said:", *(redact(line) for line in (run.error or "(no message)").splitlines())]


def _attribution(incident: Incident) -> Step | None:
    attribution = incident.details.attribution
    if attribution is None:
        return None
    candidates = {c.sha: c for c in attribution.candidates}
    touched = "the failing node's" if incident.details.run else "the metric's"
    lines = [f"Commits in the suspect range that touch {touched} lineage: {len(candidates)} "
             f"({_count(attribution.lineage_nodes or 0, 'model')} walked)"]
    if incident.details.verification is None and incident.details.verdict in UNEXPLAINED:
        intentional = next((c for c in candidates.values() if c.intentional), None)
        lines.append(f"Commit {intentional.short_sha} marks this change as intentional: re-baseline with "
                     f"`cairn rebaseline {incident.contract_id} --reason ...`" if intentional else
                     "No code change in the suspect range explains this: look at the source data")
    ranking = attribution.ranking
    if ranking.causes:
        for rank, cause in enumerate(ranking.causes[:TOP_CAUSES], start=1):
            found = candidates.get(cause.sha)
            subject = f" “{found.message.strip().splitlines()[0]}”" if found and found.message.strip() else ""
            lines.append(f"{rank}. {cause_phrase(cause.sha, found.files if found else (), cause.confidence)}"
                         f"{subject} — {cause.rationale}")
        if len(ranking.causes) > TOP_CAUSES:
            lines.append(f"and {_count(len(ranking.causes) - TOP_CAUSES, 'other candidate')}")
        path = attribution.lineage_path.get(ranking.causes[0].sha)
        if path:
            lines.append("Lineage: " + " → ".join(path))
        lines.append(f"Ranked by {ranking.ranker}" + (f": {ranking.note}" if ranking.note else ""))
    return Step("attribution", "Attribution", tuple(lines))


def _attempts(details: IncidentDetails) -> tuple[Sequence[Verification], Verification | None]:
    verification = details.verification
    return (verification.attempts, verification.fix) if verification else ((), None)


def _evidence(details: IncidentDetails) -> Step | None:
    """Row deltas of the verified fix, else of the leading candidate's revert."""
    attempts, fix = _attempts(details)
    shown = fix or (attempts[0] if attempts else None)
    if shown is None or not shown.deltas:
        return None
    whose = ("Cairn's verified fix" if fix.applied else "the verified revert") if fix else \
        "the leading candidate's revert (not verified)"
    lines = [f"Production with {short_sha(shown.sha)} vs {whose}:"]
    for delta in shown.deltas:
        lines.append(f"{delta.model} on {', '.join(delta.key)}: {delta.added} added, {delta.removed} removed, "
                     f"{delta.changed} changed, {delta.unchanged} unchanged ({delta.match_score:.1%} of rows match)")
        if delta.concentration:
            lines.append(delta.concentration)
        lines += [sample_line(sample) for sample in delta.samples[:MAX_SAMPLE_ROWS]]
        if len(delta.samples) > MAX_SAMPLE_ROWS:
            lines.append(f"{len(delta.samples) - MAX_SAMPLE_ROWS} more sample rows not shown.")
    return Step("evidence", "Evidence", tuple(lines))


def _verification(details: IncidentDetails) -> Step | None:
    refused = details.verification.refused if details.verification else None
    if refused:
        estimate = refused.get("estimated_bytes")
        return Step("verification", "Verification refused",
                    (refused["reason"],) + ((f"Estimated {estimate:,} bytes against a budget of "
                                             f"{refused.get('budget_bytes'):,}",) if estimate else ()))
    attempts, fix = _attempts(details)
    proof = fix or (attempts[-1] if attempts else None)
    if proof is None:
        return None
    builds = details.verification.builds
    where = "at its level without the deploy" if details.deploy else "inside the baseline band"
    in_band = f"back {where}" if proof.verdict is Verdict.verified else f"not back {where}"
    if details.run is not None:  # a failed run's incident: the build's node statuses are the proof
        in_band = run_proof(proof.verdict.value)
    lines = [
        f"Clone {proof.clone_id}: {change_phrase(proof)}; production was not written",
        *([f"Cairn's fix: {fix_phrase(details.fix_draft)}, because {details.fix_draft.relation} no longer has "
           f"{details.fix_draft.missing} ({details.fix_draft.reason})"] if proof.applied and details.fix_draft else []),
        f"dbt: {proof.dbt_command}",
        *([proof.isolation[:1].upper() + proof.isolation[1:]] if proof.isolation else []),
        f"{proof_phrase(proof.verdict.value, proof.clone_id, proof.before, proof.after, rows=bool(details.run))}, "
        f"{in_band}",
        *([proof.detail] if proof.detail else []),
        f"Tests: {tests_line(proof.tests)}",
        *(f"#{m.incident_id} {m.contract_id}: {fmt_value(m.before)} → {fmt_value(m.after)}, {m.verdict.value}"
          for m in proof.members),
        f"{_count(builds, 'build')} used" + (f" for the group's {len(proof.members)} incidents" if proof.members
                                             else "")
        + (f"; took {sum(proof.durations.values()):.1f}s ("
           + ", ".join(f"{phase} {sec:.1f}s" for phase, sec in proof.durations.items())
           + ")" if proof.durations else ""),
    ]
    if len(attempts) > 1:
        lines += [f"Attempt {i}: {change_phrase(a, done=False)} → {a.verdict.value}"
                  for i, a in enumerate(attempts, start=1)]
    title = ("Verified fix" if fix.applied else STATUS_LABEL[IncidentStatus.verified]) if fix else \
        STATUS_LABEL[IncidentStatus.not_verified]
    return Step("verification", title, tuple(lines))


def _triage(details: IncidentDetails) -> Step | None:
    """The class the incident was given and why; a new step when verification changes the verdict."""
    found = details.triage
    if not found:
        return None
    return Step(f"triage-{found.stage}", f"Triage: {TRIAGE_LABEL[found.kind]}", found.evidence)


def _decision(details: IncidentDetails) -> Step | None:
    decision = details.decision
    if decision is None:
        return None
    lines = [decision_phrase(decision), f"Mode: {decision.mode.value}"]
    if details.ranking:
        ranking = details.ranking
        if ranking.top:
            lines.append(f"Confidence after verification: {short_sha(ranking.top.sha)} "
                         f"{ranking.top.confidence:.0%} ({ranking.ranker})")
    return Step("decision", "Decision", tuple(lines))


def _pull_request(incident: Incident, pr: PullRequest | None) -> Step | None:
    if pr is None:
        return None
    shared = (GROUP_PR.format(leader=pr.incident_id),) if pr.incident_id != incident.id else ()
    return Step("pr", STATUS_LABEL[IncidentStatus.pr_opened],
                (pr_phrase(pr.number, pr.url, pr.branch, pr.state), pr.title,
                 f"Branch {pr.branch} · head {short_sha(pr.head_sha)}", *shared))


def merge_refusal(incident: Incident) -> str | None:
    """Why the approved merge did not happen, while the PR waits for what branch protection asks."""
    blocked = incident.details.merge_blocked
    if not blocked or incident.status is not IncidentStatus.pr_opened:
        return None
    return f"Merge refused: {blocked.reason}"


def _merge_blocked(incident: Incident) -> Step | None:
    refusal = merge_refusal(incident)
    if refusal is None:
        return None
    blocked = incident.details.merge_blocked
    # One step per refusal: a later one for another reason (the reviews done, a check failing) is threaded too.
    key = hashlib.sha1(blocked.reason.encode()).hexdigest()[:8]
    return Step(f"merge_blocked:{key}", "Merge refused",
                (blocked.reason, f"Approved by {blocked.by} at {short_sha(blocked.head_sha)}; "
                                    "the PR stays open and the incident with it"))


def _outcome(incident: Incident, pr: PullRequest | None) -> list[Step]:
    """How it ended, or why it stopped: a merge, then recovery; or a rejection, an error, a quiet resolution."""
    details, status = incident.details, incident.status
    steps = []
    # Only a merged revert leads to `recovered` (detect.py), so a recovered incident was merged first.
    if status in (IncidentStatus.merged, IncidentStatus.recovered) or (pr is not None and pr.state == "merged"):
        by = details.merge.by if details.merge else (
            "Cairn (autonomous mode)" if details.decision and details.decision.action.value == "auto_merge" else None)
        merged = f"PR #{pr.number} merged at head {short_sha(pr.head_sha)}" if pr else "The revert was merged"
        steps.append(Step("merged", STATUS_LABEL[IncidentStatus.merged],
                          (merged + (f" by {by}" if by else ""), "The next observation confirms recovery")))
    closed = f"{incident.resolved_at:%Y-%m-%d %H:%M} UTC" if incident.resolved_at else "Closed"
    if status is IncidentStatus.recovered:
        steps.append(Step("recovered", STATUS_LABEL[status],
                          (f"{closed}: {incident.reason}", "A production run after the merged revert built and "
                                                            "passed the node" if details.run else
                           "The merged revert brought the metric back")))
    elif status is IncidentStatus.resolved:
        steps.append(Step("resolved", STATUS_LABEL[status],
                          (f"{closed}: {incident.reason}", "It recovered without a merged fix")))
    elif status is IncidentStatus.rejected:
        rejection = details.rejection
        by = f" by {rejection.by}" if rejection and rejection.by else ""
        steps.append(Step("rejected", STATUS_LABEL[status],
                          (f"Rejected{by}: {(rejection.reason if rejection else '') or 'no reason given'}",)))
    elif status is IncidentStatus.errored:
        error = details.error
        error_id = (f"Error ID {error.error_id}: quote it when you report it",) if error else ()
        steps.append(Step("errored", STATUS_LABEL[status], (error.reason if error else "no reason recorded", *error_id)))
    return steps
