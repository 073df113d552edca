"""Incident groups: the incidents one deploy broke together, worked as one by their leader's loop.

Incidents one check opens with the same non-empty suspect range (same last good and first bad SHA,
and the two differ) form a group led by the lowest ID: `group_id` is the leader's ID on every
member, the leader's own included, and an incident that follows another may join one too. Only
the leader's stages run. They attribute every member's contract and rank the union of suspects
for the group (a commit that may explain several members ranks higher), verify each revert once
by measuring every member's contract on the same sandbox (verified when each is back in its own
recovery band), open one PR that names every incident it recovers, and move every member's status
with the leader's, so no card looks stuck. A member no commit in the range touches leaves the
group and escalates. When no revert brings every member back, the group splits without building
again: the members one tried revert brought back go on with it (the revert that brought back the
most first, then the best for the rest), and members none brought back leave to run their own
loop. Approve or Reject on any member's card acts on the group's PR; a merge marks every member
merged, and each recovers through detection as usual.

Groups also gather what one culprit broke across checks and runs, after the fact: an incident whose
verified revert is already an open PR joins that PR's group (`jobs.propose.decision`), and a metric
incident on a model a failed run left stale joins the run incident's group (`join_failed_runs`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from jobs.attribute.ranking import rank_group
from jobs.core.records import (
    AttributionDetail,
    GroupDetail,
    Incident,
    IncidentStatus,
    LeftGroupDetail,
    PullRequest,
    TriageDetail,
    Verdict,
    Verification,
)

if TYPE_CHECKING:
    from jobs.attribute.attribution import Attribution

GROUPED, LEFT = "incident.grouped", "incident.ungrouped"
# Why a member left (bot/messages.py says it): nothing in the range reaches its metric, so it escalates;
# no revert the group tried brings it back, so it runs its own loop; the group split, its members
# needing different fixes, and it goes on with its own (`fix`) or alone.
UNEXPLAINED, NOT_RECOVERED, SPLIT = "unexplained", "not_recovered", "split"
# What a member's own loop recomputes after it leaves: its card must not show the group's results meanwhile.
_GROUP_RESULTS = ("attribution", "verification", "verdict", "decision", "pr", "ranking", "group_attribution")


def leads(incident: Incident) -> bool:
    """Its stages run: it is alone or leads its group (a member's work is done by its leader's)."""
    return incident.group_id is None or incident.group_id == incident.id


def leader_id(incident: Incident) -> int:
    return incident.group_id or incident.id


def form(store, opened: Sequence[Incident]) -> dict[int, int]:
    """Group the incidents one check opened by suspect range; every grouped incident's leader by ID."""
    ranges: dict[tuple[str, str], list[Incident]] = {}
    for incident in opened:
        if incident.last_good_sha and incident.first_bad_sha and incident.last_good_sha != incident.first_bad_sha:
            ranges.setdefault((incident.last_good_sha, incident.first_bad_sha), []).append(incident)
    return {member.id: member.group_id for together in ranges.values() if len(together) > 1
            for member in join(store, together)}


CAUSED_BY_RUN = "run.caused"


def join_failed_runs(store, opened: Sequence[tuple[Incident, str]]) -> dict[int, int]:
    """Metric incidents a failed production run caused, joined to that run's incident: `opened` is each new
    metric incident with its contract's model name. A model the run errored, failed or skipped is stale in
    production, so its metric is wrong until the run's fix lands: when that run's incident already has its
    verified PR, the metric incident joins its group and shares that PR (one verification, one PR) instead of
    verifying a revert of its own on a production the failed run left half built. The run incident's leader
    by joined incident's ID."""
    runs = [r for r in store.incidents(status=IncidentStatus.pr_opened, open_only=True)
            if r.details.run is not None and leads(r) and r.details.pr is not None]
    joined: dict[int, int] = {}
    for incident, model in opened:
        run = next((r for r in runs if r.id < incident.id and model in _stale_models(r)), None)
        if run is None:
            continue
        join(store, [*members(store, store.incident(run.id)), incident])  # as it is now: earlier joins count
        detail = run.details
        store.update_incident(incident.id, status=run.status, details={
            "pr": detail.pr, "decision": detail.decision, "verdict": detail.verdict,
            "triage": TriageDetail(kind="code_change", stage="attribution", evidence=(
                f"caused by the failed production run of incident #{run.id}: {detail.run.node} failed, "
                f"leaving {model} stale in production",
                f"its verified PR #{detail.pr.number} rebuilds {model}; no revert of its own is built"))})
        store.audit(CAUSED_BY_RUN, incident_id=incident.id, dedup_key=f"incident:{incident.id}:{CAUSED_BY_RUN}",
                    data={"run_incident": run.id, "node": detail.run.node, "model": model, "pr": detail.pr.number,
                          "status": run.status.value})
        joined[incident.id] = run.id
    return joined


def _stale_models(incident: Incident) -> set[str]:
    run = incident.details.run
    return {uid.split(".", 2)[2] for uid in (run.node, *run.stale) if uid.startswith("model.")} if run else set()


def join(store, together: Sequence[Incident]) -> list[Incident]:
    """Make `together` one group led by its lowest ID, each member told who else is in it."""
    ids = sorted(i.id for i in together)
    joined = []
    for incident in sorted(together, key=lambda i: i.id):
        joined.append(store.update_incident(incident.id, group_id=ids[0],
                                            details={"group": GroupDetail(leader=ids[0], members=ids)}))
        store.audit(GROUPED, incident_id=incident.id, data={"group": ids[0], "members": ids},
                    dedup_key=f"incident:{incident.id}:{GROUPED}:{ids[0]}")
    return joined


def members(store, incident: Incident, statuses: Collection[IncidentStatus] | None = None) -> list[Incident]:
    """The open incidents of its group, the leader first (itself alone if it has no group)."""
    if incident.group_id is None:
        return [incident]
    found = sorted(store.incidents(group_id=incident.group_id, open_only=True),
                   key=lambda i: (i.id != incident.group_id, i.id))
    return [i for i in found if statuses is None or i.status in statuses]


def pull_request(store, incident: Incident) -> PullRequest | None:
    """The PR that carries its fix: its own, or its group's (opened by the leader)."""
    return store.pull_request_for(leader_id(incident))


def leave(store, incident: Incident, why: str, fix: str | None = None) -> Incident:
    """Take it out of its group, saying why; one the group's fix did not recover goes back to detected,
    the group's results cleared, to run its own loop."""
    group, rerun = incident.group_id, why == NOT_RECOVERED
    left = LeftGroupDetail(group=group, why=why, fix=fix)
    details: dict[str, Any] = {"group": None, "left_group": left}
    fields: dict[str, Any] = {}
    if rerun:
        details.update(dict.fromkeys(_GROUP_RESULTS))
        fields["status"] = IncidentStatus.detected
    store.audit(LEFT, incident_id=incident.id, data=left.model_dump(), dedup_key=f"incident:{incident.id}:{LEFT}:{group}")
    return store.update_incident(incident.id, group_id=None, details=details, **fields)


def run_label(incident: Incident) -> str:
    """Tells a loop it runs on its own after leaving a group from the group's jobs (RQ job IDs are unique)."""
    left = incident.details.left_group
    return f"own{left.group}" if left and left.why == NOT_RECOVERED else ""


def regroup(store, stay: Sequence[Incident], carry: Mapping[str, Any], fix: str | None = None) -> list[Incident]:
    """What is left of a group after members left: led by its lowest ID, or no group at all for one.

    `carry` (the group's attribution) goes to the leader, which may be a new one; `fix` is the revert
    they go on with, if verification chose one.
    """
    if len(stay) > 1:
        joined = join(store, stay)
        if carry:
            joined[0] = store.update_incident(joined[0].id, details=dict(carry))
        return joined
    [alone] = stay
    if alone.group_id is not None:
        alone = leave(store, alone, SPLIT, fix)
    return [store.update_incident(alone.id, details=dict(carry))] if carry else [alone]


def split(store, group: Sequence[Incident], parts: Sequence[tuple[Verification, Sequence[int]]],
          carry: Mapping[str, Any]) -> None:
    """No revert brought every member back: each part goes on with the revert that brought it back, and
    members in no part leave to run their own loop (in `group`'s order: the running incident last)."""
    placed = {i for _, ids in parts for i in ids}
    for member in group:
        if member.id not in placed:
            leave(store, member, NOT_RECOVERED, parts[0][0].sha)
    for fix, ids in parts:
        regroup(store, [m for m in group if m.id in ids], carry, fix.sha)


# -- attribution and verification of a group --------------------------------------------------


def group_attribution(found: Mapping[int, "Attribution"]) -> AttributionDetail:
    """The group's suspects: every member's candidates and one ranking over them.

    Shaped like one incident's `attribution`, so verification and the PR read either.
    """
    ranking = rank_group({i: a.ranking for i, a in found.items()}, [c for a in found.values() for c in a.candidates])
    confidence = {(i, c.sha): c.confidence for i, a in found.items() for c in a.ranking.causes}
    candidates, paths = {}, {}
    for cause in ranking.causes:
        seen = {i: a.candidate(cause.sha) for i, a in found.items() if any(c.sha == cause.sha for c in a.candidates)}
        # As the member it explains best sees it (lineage distance and path), but with every model and file
        # it touches in any member's lineage: its revert must rebuild them all (a macro reaches several marts).
        owner = max(seen, key=lambda i: confidence.get((i, cause.sha), 0.0))
        candidate = dataclasses.replace(
            seen[owner], files=tuple(dict.fromkeys(f for c in seen.values() for f in c.files)),
            models=tuple(dict.fromkeys(m for c in seen.values() for m in c.models)),
            docs_only=all(c.docs_only for c in seen.values()))
        candidates[cause.sha] = candidate
        if seen[owner].models:
            paths[cause.sha] = found[owner].lineage_path(cause.sha)
    return AttributionDetail(candidates=tuple(candidates.values()), ranking=ranking, lineage_path=paths)


def partition(attempts: Sequence[Verification], incident_ids: Sequence[int]) -> list[tuple[Verification, list[int]]]:
    """The members each tried single-commit revert brought back, as that revert restricted to them: the
    one that brought back the most first (the earlier on a tie), then the best for the others, and so
    on. Members no revert brought back are in no part."""
    singles = [a for a in attempts if len(a.reverted) == 1]
    waiting, parts = set(incident_ids), []
    while waiting:
        def back(v: Verification) -> set[int]:
            return {m.incident_id for m in v.members if m.verdict is Verdict.verified and m.incident_id in waiting}

        best = max(singles, key=lambda v: len(back(v)), default=None)
        if best is None or not back(best):
            break
        ids = sorted(back(best))
        parts.append((restrict(best, ids), ids))
        waiting -= set(ids)
    return parts


def restrict(verification: Verification, incident_ids: Collection[int]) -> Verification:
    """The verification as it concerns only these members: verified when each of them recovered."""
    kept = tuple(m for m in verification.members if m.incident_id in incident_ids)
    verdict = Verdict.verified if kept and all(m.verdict is Verdict.verified for m in kept) else verification.verdict
    first = kept[0] if kept else None
    return dataclasses.replace(verification, members=kept, verdict=verdict,
                               before=first.before if first else verification.before,
                               after=first.after if first else verification.after,
                               detail=first.detail if first else verification.detail)


def view(verification: Verification, incident: Incident) -> Verification:
    """The group's verification as one member's card shows it: its own contract's before, after and verdict."""
    own = next((m for m in verification.members if m.incident_id == incident.id), None)
    if own is None:  # nothing was measured (a conflict, a failed build): the group's verdict, its own value
        return dataclasses.replace(verification, before=incident.value)
    return dataclasses.replace(verification, verdict=own.verdict, before=own.before, after=own.after,
                               detail=own.detail)
