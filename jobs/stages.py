"""The loop's stages as jobs: each takes an incident ID, reads the store, writes its result and audit.

`jobs.queue` runs them: on RQ workers, or in-process without Redis; after each, the incident's
status says which comes next. A stage that finds the incident already past it does nothing, so a
retried or duplicated job is harmless.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from jobs import triage
from jobs.attribute import attribute
from jobs.errors import CairnError
from jobs.formatting import fmt_number
from jobs.bisect import find_fix
from jobs.evidence import clone_deltas
from jobs.propose import propose
from jobs.recovery import recovery_band
from jobs.records import Candidate, Incident, IncidentStatus, Verdict
from jobs.report import candidate_from_json, to_json, verification_from_json
from jobs.runtime import Runtime
from jobs.warehouse.sandbox import remove_incident_sandboxes

log = logging.getLogger(__name__)


def attribute_stage(rt: Runtime, incident_id: int) -> None:
    incident = rt.store.incident(incident_id)
    # `attributing` too: a job killed mid-attribution is retried from the start.
    if incident.status not in (IncidentStatus.detected, IncidentStatus.attributing):
        return
    contract = rt.contract(incident.contract_id)
    _move(rt, incident, IncidentStatus.attributing, "attribution.started")
    found = attribute(rt, incident, contract)
    lineage_path = {c.sha: [found.lineage.names.get(m, m) for m in found.lineage.path_to(c.models[0])]
                    for c in found.candidates if c.models}
    details = {"attribution": {"candidates": to_json(found.candidates), "ranking": to_json(found.ranking),
                               "lineage_path": lineage_path, "lineage_nodes": len(found.lineage.names)}}
    if not found.revertable:
        verdict = Verdict.intentional if found.intentional else Verdict.no_code_cause
        details["verdict"] = verdict.value
        facts = () if found.intentional else upstream_of(rt, incident, contract)
        details["triage"] = triage.after_attribution(intentional=[_line(c) for c in found.intentional],
                                                     revertable=(), upstream=facts).to_json()
        reason = (f"commit {found.intentional[0].short_sha} marks this change as intentional: re-baseline with "
                  f"`cairn rebaseline {contract.id} --reason ...`" if found.intentional else
                  "no code change in the suspect range explains this: look at the source data")
        _move(rt, incident, IncidentStatus.escalated, "attribution.finished",
              {"verdict": verdict.value, "candidates": len(found.candidates), "reason": reason}, details)
        return
    top = found.ranking.top
    details["triage"] = triage.after_attribution(intentional=(), revertable=[_line(c) for c in found.revertable],
                                                 upstream=()).to_json()
    _move(rt, incident, IncidentStatus.verifying, "attribution.finished",
          {"candidates": len(found.candidates), "top": top.sha if top else None, "ranker": found.ranking.ranker,
           "note": found.ranking.note}, details)


def verify_stage(rt: Runtime, incident_id: int) -> None:
    from jobs.verify import verify_revert

    incident = rt.store.incident(incident_id)
    if incident.status is not IncidentStatus.verifying:
        return
    # A retry after a killed worker: its sandbox and worktree are still on disk.
    for leftover in remove_incident_sandboxes(rt.sandboxes_root, incident.id):
        log.warning("incident %s: removed %s, left by an interrupted verification", incident.id, leftover)
    rt.git.run("worktree", "prune")
    contract = rt.contract(incident.contract_id)
    ranked = _ranked_candidates(incident)
    band = recovery_band(contract, incident)
    deployed = rt.deployed_sha()

    bigquery = rt.config.settings.bigquery

    def try_revert(group: list[Candidate]):
        models = tuple(dict.fromkeys(m for c in group for m in c.models))
        common = dict(
            repo=rt.config.repo_dir, project_subdir=rt.project_subdir, deployed_sha=deployed,
            shas=[c.sha for c in sorted(group, key=lambda c: c.authored_at, reverse=True)], models=models,
            contract=contract, metric_model=contract.relation_name, prod_state=rt.state_dir, band=band,
            before=incident.value, at=incident.first_bad_at, incident_id=incident.id,
            sandboxes_root=rt.sandboxes_root)
        key = f"incident:{incident.id}:verification.attempt:{','.join(common['shas'])}"
        if bigquery is not None:
            from jobs.warehouse.bigquery import client_for
            from jobs.warehouse.bigquery_verify import verify_revert_bigquery

            # Clones hold production as of the last good observation: what the bad code then rewrote.
            outcome = verify_revert_bigquery(**common, client=client_for(bigquery, rt.config.root),
                                             settings=bigquery, snapshot_at=incident.last_good_at,
                                             now=rt.clock.now(), config_root=rt.config.root)
            rt.store.audit("verification.cost", incident_id=incident.id, data=outcome.cost.audit_data(),
                           dedup_key=key.replace("attempt", "cost"))
            result = outcome.verification
        else:
            result = verify_revert(**common, prod_db=rt.production_db, inspect=lambda sandbox_db, manifest:
                                   clone_deltas(sandbox_db, rt.production_db, manifest, models))
        rt.store.audit("verification.attempt", incident_id=incident.id, data=to_json(result), dedup_key=key)
        return result

    try:
        search = find_fix(ranked, try_revert, rt.config.settings.verification.max_builds)
    except _refusals(bigquery) as refused:
        # Over the org's byte budget, or a build that would write outside the sandbox: a person decides.
        data = {"reason": str(refused), **refused.audit_data()} if hasattr(refused, "audit_data") \
            else {"reason": str(refused)}
        details = {"verification": {"attempts": [], "builds": 0, "fix": None, "refused": data},
                   "verdict": Verdict.refused.value}
        _move(rt, incident, IncidentStatus.escalated, "verification.refused", data, details)
        return
    verdict = search.fix.verdict if search.fix else _worst(search)
    fix = search.fix
    proof = (f"reverting {', '.join(s[:7] for s in fix.reverted)} brings {contract.id} from "
             f"{_number(fix.before)} to {_number(fix.after)} on clone {fix.clone_id}" if fix else None)
    tried = list(dict.fromkeys(s[:7] for a in search.attempts for s in a.reverted))
    details = {"verification": {"attempts": to_json(search.attempts), "builds": search.builds,
                                "fix": to_json(search.fix)}, "verdict": verdict.value,
               "triage": triage.after_verification(verified=proof, tried=tried, upstream=() if fix else
                                                   upstream_of(rt, incident, contract)).to_json()}
    status = IncidentStatus.verified if search.fix else IncidentStatus.not_verified
    _move(rt, incident, status, "verification.finished", {"verdict": verdict.value, "builds": search.builds},
          details)


def propose_stage(rt: Runtime, incident_id: int) -> None:
    incident = rt.store.incident(incident_id)
    if incident.status not in (IncidentStatus.verified, IncidentStatus.not_verified):
        return
    contract = rt.contract(incident.contract_id)
    fix = incident.details.get("verification", {}).get("fix")
    outcome = propose(rt, incident, contract, verification_from_json(fix) if fix else None,
                      _ranked_candidates(incident))
    _move(rt, incident, outcome.status, "decision.made", to_json(outcome.decision),
          {"decision": to_json(outcome.decision), "pr": to_json(outcome.pr), "ranking": to_json(outcome.ranking)})


def upstream_of(rt: Runtime, incident: Incident, contract) -> tuple:
    """The sources under the metric, measured over the first bad window; nothing when they cannot be."""
    from jobs.lineage import upstream
    from jobs.upstream import upstream_facts

    first_bad = rt.store.observation(incident.first_bad_observation_id) if incident.first_bad_observation_id \
        else None
    if first_bad is not None and first_bad.window_start and first_bad.window_end:
        window = (first_bad.window_start, first_bad.window_end)
    else:  # a whole-table contract: the day before it was found
        window = (incident.first_bad_at - timedelta(days=1), incident.first_bad_at)
    try:
        sources = [uid for uid in upstream(rt.manifest, contract.relation_name).names if uid.startswith("source.")]
        return tuple(upstream_facts(rt.warehouse, rt.manifest, sources, window))
    except CairnError as error:  # the facts inform the triage; their absence must not stop the loop
        log.warning("incident %s: sources upstream not measured: %s", incident.id, error)
        return ()


def _line(candidate: Candidate) -> str:
    return f"{candidate.short_sha} ({candidate.message})"


def _number(value: float | None) -> str:
    return "no value" if value is None else fmt_number(value)


def _ranked_candidates(incident: Incident) -> list[Candidate]:
    """Revertable candidates in ranked order (intentional and docs-only ones are never reverted)."""
    attribution = incident.details.get("attribution", {})
    by_sha = {c["sha"]: candidate_from_json(c) for c in attribution.get("candidates", [])}
    ranked = [by_sha[c["sha"]] for c in attribution.get("ranking", {}).get("causes", []) if c["sha"] in by_sha]
    return [c for c in ranked if not c.intentional and not c.docs_only]


def _refusals(bigquery) -> tuple[type[Exception], ...]:
    """What the BigQuery guards raise before a build: turned into an escalation, not an error."""
    if bigquery is None:
        return ()
    from jobs.warehouse.bigquery_sandbox import RelationOutsideSandbox
    from jobs.warehouse.cost_guard import CostRefused

    return (CostRefused, RelationOutsideSandbox)


def _worst(search) -> Verdict:
    """Why nothing verified: a conflict or a failed build says more than "did not recover"."""
    verdicts = [a.verdict for a in search.attempts]
    for verdict in (Verdict.conflict, Verdict.build_failed):
        if verdicts and all(v is verdict for v in verdicts):
            return verdict
    return Verdict.not_recovered if verdicts else Verdict.no_code_cause


def _move(rt: Runtime, incident: Incident, status: IncidentStatus, event: str, data: dict | None = None,
          details: dict | None = None) -> None:
    """Change status (and details) and audit it, once per incident and event."""
    fields = {"status": status}
    if details:
        fields["details"] = details
    rt.store.update_incident(incident.id, **fields)
    rt.store.audit(event, incident_id=incident.id, data={"status": status.value, **(data or {})},
                   dedup_key=f"incident:{incident.id}:{event}")


def check_and_heal(rt: Runtime, contracts=None) -> list:
    """`cairn check` at the Runtime's clock: observe and detect, then the loop for every incident
    this check opened.

    With REDIS_URL the loop's stages go to the workers; without, they run here before this returns.
    """
    from jobs.queue import for_runtime, perform_check

    return perform_check(rt, for_runtime(rt), contracts)
