"""The loop's stages as jobs: each takes an incident ID, reads the store, writes its result and audit.

`jobs.loop.queue` runs them: on RQ workers, or in-process without Redis; after each, the incident's
status says which comes next. A stage that finds the incident already past it does nothing, so a
retried or duplicated job is harmless. A group's leader does the whole group's work (`jobs.attribute.groups`)
and moves every member with it; a member's own stage does nothing. Each stage returns the other
incidents it moved, so their cards are refreshed and their own next stage enqueued.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from jobs.attribute import groups, triage
from jobs.attribute.attribution import Attribution, attribute
from jobs.contracts.spec import Contract
from jobs.core.errors import CairnError
from jobs.core.formatting import fmt_value
from jobs.core.records import (
    AttributionDetail,
    Candidate,
    FixDraft,
    HeldDetail,
    Incident,
    IncidentStatus,
    MergeBlockedDetail,
    Verdict,
    VerificationDetail,
)
from jobs.core.report import to_json
from jobs.detect.recovery import recovery_band
from jobs.project.followers import conflicting_followers
from jobs.project.isolation import DbtServers
from jobs.propose.decision import AUTONOMOUS, propose
from jobs.propose.runbody import node_name
from jobs.runtime import Runtime
from jobs.verify.bisect import Search, find_fix
from jobs.verify.run_goal import RunGoal, RunMember
from jobs.warehouse.sandbox import remove_incident_sandboxes
from jobs.warehouse.sandboxes import SandboxRefused

log = logging.getLogger(__name__)


def attribute_stage(rt: Runtime, incident_id: int) -> list[int]:
    """Attribute the incident, or every member of the group it leads; the other incidents it moved."""
    # `attributing` too: a job killed mid-attribution is retried from the start.
    if (turn := _turn(rt, incident_id, "attribute", IncidentStatus.detected, IncidentStatus.attributing)) is None:
        return []
    incident, group = turn
    for member in group:
        _move(rt, member, IncidentStatus.attributing, "attribution.started")
    found = {m.id: attribute(rt, m, contract_of(rt, m)) for m in group}
    unexplained = [m for m in group if not found[m.id].revertable]
    # A failed run no commit explains may still be healed by a fix Cairn drafts: it verifies that alone.
    fixing = [m for m in unexplained if fixable(m) and not found[m.id].intentional]
    for member in unexplained:
        if member not in fixing:
            _escalate(rt, member, found[member.id])
    stay = [m for m in group if found[m.id].revertable]
    if len(group) > 1 and unexplained and (stay or fixing):  # a member Cairn fixes verifies alone
        # No commit in the range reaches these members' metrics: no revert of the group brings them back.
        for member in unexplained:
            groups.leave(rt.store, member, groups.UNEXPLAINED)
        if stay:
            groups.regroup(rt.store, stay, {})
    for member in fixing:
        _move(rt, member, IncidentStatus.verifying, "attribution.finished",
              {"candidates": len(found[member.id].candidates), "top": None, "fix": "drafted next"},
              {**_attribution_details(found[member.id]), "triage": triage.Triage(
                  triage.TriageClass.data_change, (NO_COMMIT, "Cairn drafts a fix next and verifies it on a clone"),
              ).detail()})
    # The leader (the lowest ID left) keeps the group's ranking, which verification and the PR work from.
    carry = {"group_attribution": groups.group_attribution({m.id: found[m.id] for m in stay})} if len(stay) > 1 else {}
    leader = min((m.id for m in stay), default=None)
    for member in _last(stay, incident_id):
        ranking = carry["group_attribution"].ranking if carry else found[member.id].ranking
        top = ranking.top
        _move(rt, member, IncidentStatus.verifying, "attribution.finished",
              {"candidates": len(found[member.id].candidates), "top": top.sha if top else None,
               "ranker": ranking.ranker, "note": ranking.note},
              {**_attribution_details(found[member.id]), **(carry if member.id == leader else {}),
               "triage": triage.after_attribution(intentional=(), upstream=(), revertable=[
                   _line(c) for c in found[member.id].revertable]).detail()})
    return _others(group, incident_id)


NO_COMMIT = "no commit in the suspect range touches the failing model or its upstream"


def fixable(incident: Incident) -> bool:
    """A failed run's model that reads a column its upstream no longer has: a fix may map the renamed column."""
    run = incident.details.run
    return run is not None and run.node.startswith("model.") and bool(run.evidence.get("missing_column"))


def _attribution_details(found: Attribution) -> dict:
    lineage_path = {c.sha: found.lineage_path(c.sha) for c in found.candidates if c.models}
    return {"attribution": AttributionDetail(candidates=found.candidates, ranking=found.ranking,
                                             lineage_path=lineage_path, lineage_nodes=len(found.lineage.names))}


def _escalate(rt: Runtime, incident: Incident, found: Attribution) -> None:
    """Nothing in the suspect range may be reverted for it: an intended change, or no code change at all."""
    contract_id = incident.contract_id
    verdict = Verdict.intentional if found.intentional else Verdict.no_code_cause
    reason = (f"commit {found.intentional[0].short_sha} marks this change as intentional: re-baseline with "
              f"`cairn rebaseline {contract_id} --reason ...`" if found.intentional else
              "no code change in the suspect range explains this: look at the source data")
    facts = () if found.intentional else upstream_of(rt, incident, contract_of(rt, incident))
    judged = triage.after_attribution(intentional=[_line(c) for c in found.intentional], revertable=(),
                                      upstream=facts)
    run, data = incident.details.run, {}
    if run is not None and not found.intentional:  # a failed run the data caused: its owner hears the facts
        try:
            owner = triage.owner_of(rt.manifest, run.node)
        except CairnError:  # the owner routes the escalation; its absence must not stop it
            owner = None
        reason = f"{NO_COMMIT}: the data or the source changed, not the code"
        data = {"owner": owner} if owner else {}
        judged = triage.data_caused(run, NO_COMMIT, owner, facts)
    _move(rt, incident, IncidentStatus.escalated, "attribution.finished",
          {"verdict": verdict.value, "candidates": len(found.candidates), "reason": reason, **data},
          {**_attribution_details(found), "verdict": verdict, "triage": judged.detail()})


def verify_stage(rt: Runtime, incident_id: int) -> list[int]:
    """Verify the incident's suspects, for every member of the group it leads at once; the others it moved."""
    from jobs.verify.verification import Target, verify_revert

    if (turn := _turn(rt, incident_id, "verify", IncidentStatus.verifying)) is None:
        return []
    incident, group = turn
    # A retry after a killed worker: its sandbox and worktree are still on disk.
    for leftover in remove_incident_sandboxes(rt.sandboxes_root, incident.id):
        log.warning("incident %s: removed %s, left by an interrupted verification", incident.id, leftover)
    rt.git.run("worktree", "prune")
    contract = contract_of(rt, incident)
    ranked = _ranked_candidates(incident)
    band = recovery_band(contract, incident) if contract else None
    goal = run_goal(group)
    also = [Target(m.id, c, recovery_band(c, m), m.value) for m in group[1:] if (c := contract_of(rt, m))]
    deployed = rt.deployed_sha()

    # Clones hold production as of the last good observation: what the bad code then rewrote (where the
    # warehouse travels in time). A group's members share the last good SHA; the latest time is nearest.
    sandboxes = rt.sandboxes(snapshot_at=max((m.last_good_at for m in group if m.last_good_at), default=None))

    def try_revert(suspects: list[Candidate], followers: Sequence[str] = (), fix: FixDraft | None = None):
        shas = [fix.commit] if fix else [c.sha for c in sorted(suspects, key=lambda c: c.authored_at, reverse=True)]
        models = (fix.node,) if fix else tuple(dict.fromkeys(m for c in suspects for m in c.models))
        result = verify_revert(
            sandboxes=sandboxes, repo=rt.config.repo_dir, project_subdir=rt.project_subdir, deployed_sha=deployed,
            shas=shas, models=models, contract=contract,
            metric_model=contract.relation_name if contract else None, prod_state=rt.state_dir, band=band,
            before=incident.value, at=incident.first_bad_at, incident_id=incident.id, sandboxes_root=rt.sandboxes_root,
            also=also, followers=followers, servers=servers, run=goal, fix=fix is not None)
        key = f"{_scope(incident)}:verification.attempt:{','.join([*followers, *shas])}"
        if result.billed_bytes is not None or result.clones:
            rt.store.audit("verification.cost", incident_id=incident.id, dedup_key=key.replace("attempt", "cost"),
                           data={"estimated_bytes": result.estimated_bytes, "billed_bytes": result.billed_bytes,
                                 "clones": list(result.clones)})
        rt.store.audit("verification.attempt", incident_id=incident.id, data=to_json(result), dedup_key=key)
        return result

    try:  # one warm dbt for every build of this verification (jobs.project.isolation.DbtServers)
        with DbtServers(sandboxes.isolation, rt.sandboxes_root, sandboxes.protected,
                        prestart=(sandboxes.network,)) as servers:
            search = find_fix(ranked, try_revert, rt.config.settings.verification.max_builds, followers=lambda c: (
                conflicting_followers(rt.config.repo_dir, c.sha, deployed, rt.sandboxes_root, label=str(incident.id))),
                recovered_without=_recovered_by_deploy_check(group))
            not_drafted = None
            if search.fix is None and len(group) == 1 and fixable(incident):
                search, not_drafted = _try_fix(rt, incident, deployed, search, try_revert)
    except SandboxRefused as refused:
        # Over the org's byte budget, or a build that would write outside the sandbox: a person decides.
        data = {"reason": str(refused), **refused.audit_data()}
        details = {"verification": VerificationDetail(refused=data), "verdict": Verdict.refused}
        for member in _last(group, incident_id):
            _move(rt, member, IncidentStatus.escalated, "verification.refused", data, details)
        return _others(group, incident_id)
    ids = [m.id for m in group]
    parts = [(search.fix, ids)] if search.fix else groups.partition(search.attempts, ids)
    if search.fix is None and parts:
        # No revert brought every member back: those one revert brought back go on with it (the most
        # first), and verify nothing again; members none brought back leave to run their own loop.
        groups.split(rt.store, _last(group, incident_id), parts,
                     {"group_attribution": incident.details.group_attribution} if incident.details.group_attribution else {})
    fixes = {i: fix for fix, part in parts for i in part}
    for member in _last([m for m in group if m.id in fixes] or group, incident_id):
        fix = fixes.get(member.id)
        verdict = fix.verdict if fix else _worst(search)
        details = {"verification": VerificationDetail(attempts=tuple(groups.view(a, member) for a in search.attempts),
                                                      builds=search.builds, fix=groups.view(fix, member) if fix else None),
                   "verdict": verdict, "triage": _verified_triage(rt, member, search, fix, not_drafted).detail()}
        _move(rt, member, IncidentStatus.verified if fix else IncidentStatus.not_verified, "verification.finished",
              {"verdict": verdict.value, "builds": search.builds}, details)
    return _others(group, incident_id)


def _recovered_by_deploy_check(group: list[Incident]) -> frozenset[str]:
    """What the deploy check reverted, when every member came from that check: its build brought each back."""
    deploys = [m.details.deploy for m in group]
    if not deploys or any(d is None or d.without is None for d in deploys):
        return frozenset()
    return frozenset.intersection(*(frozenset(d.reverted) for d in deploys))


def propose_stage(rt: Runtime, incident_id: int) -> list[int]:
    """Decide, and open the PR: one for the group the incident leads; the others it moved."""
    if (turn := _turn(rt, incident_id, "propose", IncidentStatus.verified, IncidentStatus.not_verified)) is None:
        return []
    incident, group = turn
    contract = contract_of(rt, incident)
    verification = incident.details.verification
    outcome = propose(rt, incident, contract, verification.fix if verification else None,
                      _ranked_candidates(incident), group=[(m, contract_of(rt, m)) for m in group[1:]])
    blocked = MergeBlockedDetail(by=AUTONOMOUS, reason=outcome.merge_blocked, head_sha=outcome.pr.head_sha) \
        if outcome.merge_blocked and outcome.pr else None
    for member in _last(group, incident_id):
        _move(rt, member, outcome.status, "decision.made",
              {**to_json(outcome.decision), **({"merge_blocked": outcome.merge_blocked} if blocked else {})},
              {"decision": outcome.decision, "pr": outcome.pr, "ranking": outcome.ranking, "merge_blocked": blocked})
    return _others(group, incident_id)


def _turn(rt: Runtime, incident_id: int, stage: str,
          *waiting: IncidentStatus) -> tuple[Incident, list[Incident]] | None:
    """The incident and its group's members in `waiting`, leader first; None if the stage has nothing to do:
    the incident is past it, a member whose leader does the work, or held by the kill switch."""
    incident = rt.store.incident(incident_id)
    if incident.status not in waiting or not groups.leads(incident):
        return None
    group = groups.members(rt.store, incident, waiting)
    return None if _held(rt, group, stage) else (incident, group)


WOULD = {"attribute": "attribute it: rank the suspect commits from git history and lineage",
         "verify": "build the revert of its suspects on a sandbox clone of the warehouse",
         "propose": "decide, and open or merge a pull request as policy says"}


def _held(rt: Runtime, group: list[Incident], stage: str) -> bool:
    """The kill switch covers the group: record what the stage would have done and do nothing (no clone,
    no build, no PR); the incident stays where it is, and a check resumes it once the switch is released."""
    kill = rt.kill_switch_for(*group)
    if kill is None:
        for member in group:
            if member.details.held is not None:
                rt.store.update_incident(member.id, details={"held": None})
        return False
    held = HeldDetail(stage=stage, would=WOULD[stage], by=kill.by, reason=kill.reason, selectors=kill.selectors)
    for member in group:
        if member.details.held == held:
            continue  # held already, by the same switch
        rt.store.update_incident(member.id, details={"held": held})
        rt.store.audit("loop.held", incident_id=member.id, data=held.model_dump(mode="json"))
        log.warning("incident %s: kill switch on (%s): %s not run", member.id, kill.reason, stage)
    return True


def _try_fix(rt: Runtime, incident: Incident, deployed: str, search: Search, try_revert) -> tuple[Search, str | None]:
    """No revert healed the failed run: draft Cairn's own fix (`jobs.attribute.drift_fix`), commit it beside the
    deployed SHA and build it on a clone as a revert is built. The search with that attempt, or as it was and why
    no fix could be drafted (said in the audit and the triage; the incident escalates)."""
    from jobs.attribute.drift_fix import NoDraft, fix_for
    from jobs.forge.revert import commit_fix

    try:
        draft = fix_for(rt, incident)
    except NoDraft as why:
        rt.store.update_incident(incident.id, details={"fix_draft": None})
        rt.store.audit("fix.not_drafted", incident_id=incident.id, data={"reason": str(why)},
                       dedup_key=f"{_scope(incident)}:fix.not_drafted")
        return search, str(why)
    path = str(Path(rt.project_subdir) / draft.path)  # "" and "." add nothing
    message = (f"Read {draft.missing} from {draft.replacement} in {node_name(draft.node)}\n\n{draft.upstream} no longer "
               f"has {draft.missing}; {draft.replacement} is {draft.reason}.\n\nCairn-Incident: #{incident.id}\n")
    draft = draft.model_copy(update={"commit": commit_fix(rt.git, deployed, path, draft.sql, message, incident.id)})
    rt.store.update_incident(incident.id, details={"fix_draft": draft})
    rt.store.audit("fix.drafted", incident_id=incident.id, dedup_key=f"{_scope(incident)}:fix.drafted:{draft.commit}",
                   data={"commit": draft.commit, "path": path, "missing": draft.missing,
                         "replacement": draft.replacement, "drafted_by": draft.drafted_by})
    result = try_revert([], fix=draft)
    return Search(attempts=(*search.attempts, result),
                  fix=result if result.verdict is Verdict.verified else None), None


def _verified_triage(rt: Runtime, incident: Incident, search, fix, not_drafted: str | None = None) -> triage.Triage:
    """Proven by the revert (or Cairn's fix) that brought this incident back, or else decided by the data;
    `not_drafted`: why no fix of Cairn's own was drafted for a failed run no revert healed."""
    tried = list(dict.fromkeys(s[:7] for a in search.attempts for s in a.reverted))
    draft = rt.store.incident(incident.id).details.fix_draft if fix is not None and fix.applied else None
    if fix is not None and draft is not None:  # drafted during this stage: read back from the store
        return triage.Triage(triage.TriageClass.data_change, (
            f"{draft.relation} no longer has {draft.missing}: {NO_COMMIT}",
            f"proven: Cairn's fix {fix.sha[:7]} (read {draft.replacement} as {draft.missing}) makes {draft.node} "
            f"build and pass again on clone {fix.clone_id}"), stage="verification")
    if fix is None and incident.details.run is not None and not tried:
        if not_drafted:
            outcome = (f"no fix drafted: {not_drafted}",)
        else:
            outcome = ("Cairn's fix did not build and pass on a clone",) if search.attempts else ()
        return triage.Triage(triage.TriageClass.unknown, (NO_COMMIT, *outcome), stage="verification")
    if fix is None:
        return triage.after_verification(verified=None, tried=tried,
                                         upstream=upstream_of(rt, incident, contract_of(rt, incident)))
    mine = groups.view(fix, incident)
    reverted = ", ".join(s[:7] for s in mine.reverted)
    if incident.details.run is not None:
        return triage.after_verification(tried=tried, upstream=(), verified=(
            f"reverting {reverted} makes {incident.details.run.node} build and pass again on clone {mine.clone_id}"))
    return triage.after_verification(tried=tried, upstream=(), verified=(
        f"reverting {reverted} brings {incident.contract_id} from "
        f"{fmt_value(mine.before)} to {fmt_value(mine.after)} on clone {mine.clone_id}"))


def contract_of(rt: Runtime, incident: Incident) -> Contract | None:
    """The incident's metric contract; None for a failed run's incident, which has none (its details say why)."""
    return None if incident.details.run is not None else rt.contract(incident.contract_id)


def run_goal(group: Sequence[Incident]) -> RunGoal | None:
    """What the revert's build must show for a failed run's incident and its group (`jobs.verify.run_goal`):
    every member's failing node back, everything any left stale rebuilt."""
    runs = [(m, m.details.run) for m in group if m.details.run is not None]
    if not runs or runs[0][0] is not group[0]:
        return None
    lead = runs[0][1]
    return RunGoal(failing=tuple(r.node for _, r in runs), stale=tuple(dict.fromkeys(u for _, r in runs for u in r.stale)),
                   failing_rows=lead.failing_rows,
                   members=tuple(RunMember(m.id, m.contract_id, r.node, r.failing_rows) for m, r in runs)
                   if len(runs) > 1 else ())


def upstream_of(rt: Runtime, incident: Incident, contract) -> tuple:
    """The sources under the metric (or a failed run's node), measured over the first bad window (the day before
    the failed run); nothing when they cannot be."""
    from jobs.attribute.upstream import upstream_facts
    from jobs.project.lineage import upstream

    run = incident.details.run
    if contract is None and run is None:
        return ()
    first_bad = rt.store.observation(incident.first_bad_observation_id) if incident.first_bad_observation_id \
        else None
    if first_bad is not None and first_bad.window_start and first_bad.window_end:
        window = (first_bad.window_start, first_bad.window_end)
    else:  # a whole-table contract or a failed run: the day before it was found
        window = (incident.first_bad_at - timedelta(days=1), incident.first_bad_at)
    try:
        root = run.node if run is not None else contract.relation_name
        sources = [uid for uid in upstream(rt.manifest, root).names if uid.startswith("source.")]
        return tuple(upstream_facts(rt.warehouse, rt.manifest, sources, window))
    except CairnError as error:  # the facts inform the triage; their absence must not stop the loop
        log.warning("incident %s: sources upstream not measured: %s", incident.id, error)
        return ()


def _line(candidate: Candidate) -> str:
    return f"{candidate.short_sha} ({candidate.message})"



def _ranked_candidates(incident: Incident) -> list[Candidate]:
    """Revertable candidates in ranked order (intentional and docs-only ones are never reverted)."""
    attribution = incident.details.suspects
    if attribution is None:
        return []
    by_sha = {c.sha: c for c in attribution.candidates}
    ranked = [by_sha[c.sha] for c in attribution.ranking.causes if c.sha in by_sha]
    return [c for c in ranked if not c.intentional and not c.docs_only]


def _worst(search) -> Verdict:
    """Why nothing verified: a conflict or a failed build says more than "did not recover"."""
    verdicts = [a.verdict for a in search.attempts]
    for verdict in (Verdict.conflict, Verdict.build_failed):
        if verdicts and all(v is verdict for v in verdicts):
            return verdict
    return Verdict.not_recovered if verdicts else Verdict.no_code_cause


def _move(rt: Runtime, incident: Incident, status: IncidentStatus, event: str, data: dict | None = None,
          details: dict | None = None) -> None:
    """Change status (and details) and audit it, once per incident and event (and group)."""
    fields = {"status": status}
    if details:
        fields["details"] = details
    rt.store.update_incident(incident.id, **fields)
    rt.store.audit(event, incident_id=incident.id, data={"status": status.value, **(data or {})},
                   dedup_key=f"{_scope(incident)}:{event}")


def _scope(incident: Incident) -> str:
    """Dedup keys of a group's moves name the group: a member that leaves it runs its own stages afresh."""
    return f"incident:{incident.id}" + (f":group:{incident.group_id}" if incident.group_id is not None else "")


def _last(group: list[Incident], incident_id: int) -> list[Incident]:
    """The running incident last: if its job dies half-way, the retry finds it where it was and redoes the
    stage for the members still waiting with it."""
    return sorted(group, key=lambda m: m.id == incident_id)


def _others(group: list[Incident], incident_id: int) -> list[int]:
    return [m.id for m in group if m.id != incident_id]
