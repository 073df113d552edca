"""Decision and PR: policy turns a verification into an action; only a verified revert becomes a PR."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from jobs.attribute import groups
from jobs.attribute.ranking import FAILED_RUN, METRIC, score
from jobs.contracts.spec import Contract
from jobs.core.errors import CairnError
from jobs.core.records import Candidate, Incident, IncidentStatus, PullRequest, Ranking, Verdict, Verification
from jobs.forge import MergeBlocked
from jobs.project.followers import conflicting_followers
from jobs.project.lineage import model_refs
from jobs.propose.fixbody import FIX_LABELS, fix_check_proof, fix_pr_body, fix_pr_title
from jobs.propose.prbody import Follower, check_proof, pr_body, pr_title
from jobs.propose.runbody import run_check_proof, run_pr_body, run_pr_title
from jobs.runtime import Runtime
from jobs.store import switches
from policies.decide import Action, Decision, Facts, decide

_STATUS = {Action.record_only: None, Action.escalate: IncidentStatus.escalated,
           Action.open_pr: IncidentStatus.pr_opened, Action.auto_merge: IncidentStatus.merged}


class UnverifiedRevert(CairnError):
    """Refused: Cairn never opens a pull request for a revert that did not verify on a clone."""


AUTONOMOUS = "cairn (autonomous mode)"


@dataclass(frozen=True)
class Proposal:
    decision: Decision
    status: IncidentStatus
    pr: PullRequest | None = None
    ranking: Ranking | None = None
    merge_blocked: str | None = None  # why the code host refused the auto-merge: the PR waits, open


def propose(rt: Runtime, incident: Incident, contract: Contract | None, fix: Verification | None,
            ranked: Sequence[Candidate], group: Sequence[tuple[Incident, Contract | None]] = ()) -> Proposal:
    """The decision for the incident and the other incidents of its `group`, and the one PR they share."""
    if fix is not None and fix.applied:  # Cairn's own fix for a failure no commit explains
        return _propose_fix(rt, incident, fix)
    verified = fix is not None and fix.verdict is Verdict.verified
    cause = next((c for c in ranked if fix and c.sha == fix.sha), None)
    ranking = score(ranked, verified={fix.sha: True} if verified else {},
                    subject=FAILED_RUN if incident.details.run is not None else METRIC)
    confidence = next((r.confidence for r in ranking.causes if cause and r.sha == cause.sha), 0.0)
    # Mode and kill switch are read now, immediately before the side effect, never earlier.
    facts = Facts(verified=verified, confidence=confidence,
                  models=tuple(model_refs(rt.manifest, cause.models)) if cause and cause.models else (),
                  blast_radius=_blast_radius(fix), now=rt.clock.now(),
                  org_mode=switches.org_mode(rt.store), kill_switch=switches.kill_switch(rt.store))
    decision = decide(rt.policy, facts)
    status = _STATUS[decision.action] or incident.status
    if decision.action not in (Action.open_pr, Action.auto_merge):
        return Proposal(decision, status, None, ranking)
    assert fix is not None and cause is not None
    shared = _shared_pr(rt, incident, fix, group)
    if shared is not None:  # the same revert is already proposed, for an incident of another run or check
        reasons = (*decision.reasons, f"the same revert is open as PR #{shared.number} (incident #{shared.incident_id}): "
                                      "this incident shares it")
        return Proposal(dataclasses.replace(decision, reasons=reasons), IncidentStatus.pr_opened, shared, ranking)
    pr = open_verified_pr(rt, incident, contract, cause, fix, ranking, ranked, decision, group)
    return _merged_if_allowed(rt, incident, Proposal(decision, status, pr, ranking))


def _merged_if_allowed(rt: Runtime, incident: Incident, opened: Proposal) -> Proposal:
    """The opened PR, merged now when the decision is to auto-merge and the code host lets it."""
    if opened.decision.action is not Action.auto_merge or opened.pr is None:
        return opened
    try:
        return dataclasses.replace(opened, pr=rt.forge.merge(incident.id, opened.pr.head_sha, actor=AUTONOMOUS))
    except MergeBlocked as exc:  # branch protection outranks the policy: the PR waits for what it asks
        return dataclasses.replace(opened, status=IncidentStatus.pr_opened, merge_blocked=str(exc))


def open_verified_pr(rt: Runtime, incident: Incident, contract: Contract | None, cause: Candidate, fix: Verification,
                     ranking: Ranking, ranked: Sequence[Candidate], decision: Decision,
                     group: Sequence[tuple[Incident, Contract | None]] = ()) -> PullRequest:
    """The only place Cairn opens a PR, and it refuses anything but a verified revert of the culprit alone,
    or of the culprit with exactly its conflicting followers (for a group: one that brought every member back)."""
    behind = [f"#{m.incident_id}" for m in fix.members if m.verdict is not Verdict.verified]
    if fix.verdict is not Verdict.verified or not _culprit_revert(rt, incident, cause, fix) or behind:
        reverted = ", ".join(sha[:7] for sha in fix.reverted) or cause.short_sha
        raise UnverifiedRevert(f"incident {incident.id}: revert of {reverted} is {fix.verdict.value}, "
                               f"not verified on a clone{' for ' + ', '.join(behind) if behind else ''} as the "
                               f"revert of {cause.short_sha} (alone, or with the later commits that change its "
                               "lines); no pull request is opened")
    suspects = incident.details.suspects
    path = suspects.lineage_path.get(cause.sha, []) if suspects else []
    followers = [Follower(sha, rt.git.run("log", "-1", "--format=%B", sha)) for sha in fix.followers]
    run = incident.details.run
    if run is not None:  # a failed production run's incident: the failing node in place of a metric
        title = run_pr_title(incident, run, cause, followers, others=len(group))
        body = run_pr_body(incident=incident, run=run, candidate=cause, ranking=ranking, candidates=ranked,
                           verification=fix, deltas=fix.deltas, lineage_path=path, mode=decision.mode.value,
                           followers=followers, group=[member for member, _ in group])
        proof = run_check_proof(run, fix)
    else:
        title = pr_title(incident, contract, cause, others=len(group), followers=followers)
        body = pr_body(incident=incident, contract=contract, candidate=cause, ranking=ranking, candidates=ranked,
                       verification=fix, deltas=fix.deltas, lineage_path=path, mode=decision.mode.value, group=group,
                       followers=followers)
        proof = check_proof(contract, fix)
    return rt.forge.open_revert_pr(incident.id, rt.config.settings.branch, list(fix.reverted), title, body,
                                   proof=proof)


def _shared_pr(rt: Runtime, incident: Incident, fix: Verification,
               group: Sequence[tuple[Incident, Contract | None]]) -> PullRequest | None:
    """The open PR of another incident whose verified fix reverts exactly these commits: one culprit, one PR,
    whichever runs or checks found it. The incident (and its group) joins that incident's group; the PR says so."""
    mine = {incident.id, *(m.id for m, _ in group)}
    for other in rt.store.incidents(status=IncidentStatus.pr_opened, open_only=True):
        theirs = other.details.verification.fix if other.details.verification else None
        if other.id in mine or not groups.leads(other) or other.details.pr is None or theirs is None \
                or theirs.applied or tuple(theirs.reverted) != tuple(fix.reverted):
            continue
        # Status first: a job that dies after joining must not leave a member its new leader will never move.
        for member in (incident, *(m for m, _ in group)):
            rt.store.update_incident(member.id, status=IncidentStatus.pr_opened, details={"pr": other.details.pr})
        groups.join(rt.store, [other, *groups.members(rt.store, other)[1:], incident, *(m for m, _ in group)])
        rt.store.audit("pr.shared", incident_id=incident.id, dedup_key=f"incident:{incident.id}:pr.shared",
                       data={"with": other.id, "pr": other.details.pr.number, "reverted": list(fix.reverted)})
        rt.forge.comment(other.id, f"Cairn incident #{incident.id} ({incident.contract_id}) verified the same revert "
                                   f"on its own clone ({fix.clone_id}): this pull request heals it too.")
        return other.details.pr
    return None


def _propose_fix(rt: Runtime, incident: Incident, fix: Verification) -> Proposal:
    """The decision on Cairn's own verified fix: an escalation PR, merged only where `fix_allowlist` says."""
    draft = incident.details.fix_draft
    verified = fix.verdict is Verdict.verified and draft is not None and fix.applied == (draft.commit,)
    facts = Facts(verified=verified, confidence=1.0 if verified else 0.0,
                  models=tuple(model_refs(rt.manifest, [draft.node])) if draft else (),
                  blast_radius=_blast_radius(fix), now=rt.clock.now(), org_mode=switches.org_mode(rt.store),
                  kill_switch=switches.kill_switch(rt.store), fix=True)
    decision = decide(rt.policy, facts)
    status = _STATUS[decision.action] or incident.status
    if decision.action not in (Action.open_pr, Action.auto_merge):
        return Proposal(decision, status)
    return _merged_if_allowed(rt, incident, Proposal(decision, status, open_verified_fix_pr(rt, incident, fix,
                                                                                            decision)))


def open_verified_fix_pr(rt: Runtime, incident: Incident, fix: Verification, decision: Decision) -> PullRequest:
    """The only place Cairn opens a PR of its own code: refused unless that exact fix commit verified on a clone."""
    draft, run = incident.details.fix_draft, incident.details.run
    if fix.verdict is not Verdict.verified or draft is None or run is None or fix.applied != (draft.commit,):
        raise UnverifiedRevert(f"incident {incident.id}: Cairn's fix {fix.sha[:7]} is {fix.verdict.value}, not "
                               "verified on a clone as the fix the incident drafted; no pull request is opened")
    body = fix_pr_body(incident=incident, run=run, draft=draft, verification=fix, mode=decision.mode.value)
    return rt.forge.open_revert_pr(incident.id, rt.config.settings.branch, [], fix_pr_title(incident, draft), body,
                                   labels=FIX_LABELS, proof=fix_check_proof(draft, fix), applied=[draft.commit])


def _culprit_revert(rt: Runtime, incident: Incident, cause: Candidate, fix: Verification) -> bool:
    """The culprit alone; or the culprit with its followers, newest first, when git (asked again, at the
    deployed SHA) says exactly those later commits are what its revert needs to apply."""
    if fix.sha != cause.sha or fix.reverted != (*fix.followers, cause.sha):
        return False
    return not fix.followers or fix.followers == conflicting_followers(
        rt.config.repo_dir, cause.sha, rt.deployed_sha(), rt.sandboxes_root, label=str(incident.id))


def _blast_radius(fix: Verification | None) -> int:
    """Models the revert rebuilt: what a merge would change in production."""
    return len(fix.built) if fix else 0
