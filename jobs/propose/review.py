"""A person's decision on a revert PR: approve merges it behind a head-SHA guard, reject closes it.

These run as jobs (a merge is git/forge work, never done in a Slack listener). Both re-read the
kill switch and the PR immediately before acting; a refusal is recorded, never silently dropped. A
merge the code host's branch protection refuses (required checks, required reviews) leaves the PR open
and the incident where it was, its reason on the card until a later approval merges.
A rejection is kept as feedback on attribution: which commit Cairn blamed, and why a person
disagreed. A grouped incident's PR is its group's: acting on any member's card acts on that PR, and
a merge or a rejection moves every member.
"""

from __future__ import annotations

from jobs.attribute import groups
from jobs.core.errors import CairnError
from jobs.core.records import IncidentStatus, MergeBlockedDetail, MergeDetail, RejectionDetail
from jobs.forge import MergeBlocked, StaleApproval
from jobs.runtime import Runtime


class ReviewRefused(CairnError):
    """The approval or rejection cannot be carried out; the message says why and what to do."""


def approve(rt: Runtime, incident_id: int, head_sha: str, actor: str) -> list[int]:
    """Merge the incident's PR (its group's, shared by every member) if its head is still `head_sha`, the
    SHA the approver was shown; the incidents marked merged."""
    incident = rt.store.incident(incident_id)
    owner = groups.leader_id(incident)
    pr = rt.store.pull_request_for(owner)
    refusal = None
    kill = rt.kill_switch_for(incident)
    if kill is not None:
        refusal = f"the kill switch is on ({kill.reason}, by {kill.by}): nothing is merged until `/cairn unkill`"
    elif pr is None:
        refusal = f"incident {incident_id} has no pull request to approve"
    elif pr.state == "merged":
        return []  # a repeated click on an approval that already merged
    elif incident.status is not IncidentStatus.pr_opened or pr.state != "open":
        refusal = f"incident {incident_id} is {incident.status.value} and its PR is {pr.state}: nothing to approve"
    if refusal is None:
        try:
            rt.forge.merge(owner, head_sha, actor=actor)
        except StaleApproval as exc:
            refusal = str(exc)
        except MergeBlocked as exc:
            refusal = str(exc)
            block_merge(rt, incident, refusal, actor, head_sha)
    if refusal is not None:
        rt.store.audit("approval.refused", incident_id=incident_id, actor=actor,
                       data={"head_sha": head_sha, "reason": refusal})
        raise ReviewRefused(refusal)
    merged = [m for m in groups.members(rt.store, incident) if m.status is IncidentStatus.pr_opened]
    for member in merged:
        rt.store.update_incident(member.id, status=IncidentStatus.merged,
                                 details={"merge": MergeDetail(by=actor, head_sha=head_sha), "merge_blocked": None})
        rt.store.audit("pr.merged", incident_id=member.id, actor=actor,
                       data={"number": pr.number, "head_sha": head_sha},
                       dedup_key=f"incident:{member.id}:pr.merged")
    return [m.id for m in merged]


def block_merge(rt: Runtime, incident, reason: str, actor: str, head_sha: str) -> list[int]:
    """Record on every member still waiting for the merge why the code host refused it; the incidents."""
    blocked = groups.members(rt.store, incident, [IncidentStatus.pr_opened])
    for member in blocked:
        rt.store.update_incident(member.id, details={
            "merge_blocked": MergeBlockedDetail(by=actor, reason=reason, head_sha=head_sha)})
    return [m.id for m in blocked]


def reject(rt: Runtime, incident_id: int, reason: str, actor: str) -> list[int]:
    """Close the PR (if any) and close the incident as rejected, keeping the reason as feedback; a grouped
    incident's revert is its whole group's, so every member is rejected. The incidents rejected."""
    incident = rt.store.incident(incident_id)
    if incident.status is IncidentStatus.rejected:
        return []
    if not incident.status.is_open or incident.status is IncidentStatus.merged:
        raise ReviewRefused(f"incident {incident_id} is {incident.status.value}: it can no longer be rejected")
    owner = groups.leader_id(incident)
    pr = rt.store.pull_request_for(owner)
    if pr is not None and pr.state == "open":
        rt.forge.close(owner, reason, actor=actor)
    details = incident.details
    blamed = details.ranking or (details.attribution.ranking if details.attribution else None)
    feedback = RejectionDetail(by=actor, reason=reason, blamed_sha=blamed.top.sha if blamed and blamed.top else None,
                               verdict=details.verdict)
    rejected = [m for m in groups.members(rt.store, incident) if m.status is not IncidentStatus.merged]
    for member in rejected:
        rt.store.update_incident(member.id, status=IncidentStatus.rejected, details={"rejection": feedback})
        rt.store.audit("incident.rejected", incident_id=member.id, actor=actor, data=feedback.model_dump(mode="json"),
                       dedup_key=f"incident:{member.id}:incident.rejected")
    return [m.id for m in rejected]
