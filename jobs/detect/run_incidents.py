"""A production run's failures as incidents: one per failing node, updated while it keeps failing, resolved
when a run builds it green again. The loop's stages then treat them as any incident (docs/runs.md)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jobs.core.errors import WarehouseError
from jobs.core.records import RUN_TRIGGER, Incident, IncidentStatus, RunDetail, run_subject
from jobs.core.runs import BUILD, GREEN, STALE, Classification, FailureKind, Run
from jobs.detect.classify import Columns, Query, classify

log = logging.getLogger(__name__)
OPENED, UPDATED = "opened", "updated"

ERROR_LINES = 6  # of dbt's message, kept on the incident (the run keeps the whole)
SEVERITY = {FailureKind.compilation: "high", FailureKind.runtime_sql: "high", FailureKind.schema_drift: "high",
            FailureKind.test_failure: "medium", FailureKind.source_freshness: "medium"}


@dataclass(frozen=True)
class RunIncidents:
    opened: tuple[Incident, ...] = ()
    updated: tuple[Incident, ...] = ()  # open already: the node failed again
    resolved: tuple[Incident, ...] = ()  # the node built green in this run

    @property
    def moved(self) -> tuple[Incident, ...]:
        return (*self.opened, *self.updated, *self.resolved)


def is_run_incident(incident: Incident) -> bool:
    return incident.contract_id.startswith(RUN_TRIGGER)


def record_failures(rt, run: Run, manifest: Mapping[str, Any]) -> RunIncidents:
    """Open or update an incident for each failing node of `run`, and resolve those of nodes it built green.
    `manifest` is the run's own (its artifacts'), read with the warehouse (read only) to classify."""
    found = classify(run, manifest, *_readers(rt)) if run.failures else []  # a green run reads no warehouse
    stale = tuple(dict.fromkeys(n.unique_id for n in run.nodes if n.phase == BUILD and n.status in STALE))
    opened, updated = [], []
    for classification in found:
        incident, change = _open_or_update(rt, run, classification, left_stale(manifest, classification.unique_id,
                                                                               stale))
        {OPENED: opened, UPDATED: updated}.get(change, []).append(incident)
    resolved = [_resolve(rt, run, incident) for node in run.nodes if node.status in GREEN
                if (incident := rt.store.open_incident_for(run_subject(node.unique_id))) is not None
                and incident.details.run is not None and incident.details.run.last_failed_at < run.generated_at]
    rt.store.audit("run.incidents_recorded", dedup_key=recorded_key(run), data={
        "invocation_id": run.invocation_id, "opened": [i.id for i in opened], "updated": [i.id for i in updated],
        "resolved": [i.id for i in resolved]})
    return RunIncidents(tuple(opened), tuple(updated), tuple(resolved))


def left_stale(manifest: Mapping[str, Any], unique_id: str, stale: tuple[str, ...]) -> tuple[str, ...]:
    """What this failure left stale: the stale nodes of the run that are the failing node or downstream of it (of
    what it tests, for a test). Another failure of the same run keeps its own: a revert or fix of this one is
    not asked to heal a sibling the data broke."""
    node = {**manifest.get("sources", {}), **manifest.get("nodes", {})}.get(unique_id) or {}
    tested = node.get("attached_node") or next(iter(node.get("depends_on", {}).get("nodes", [])), None) \
        if node.get("resource_type") == "test" else None
    children = manifest.get("child_map", {})
    seen = {unique_id, *([tested] if tested else [])}
    todo = list(seen)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return tuple(uid for uid in stale if uid in seen)


def recorded_key(run: Run) -> str:
    """Marks a run's incidents done: a run recorded by a job that died before this is finished by its retry."""
    return f"run.incidents:{run.invocation_id}"


def _readers(rt) -> tuple[Columns, Query | None]:
    """The warehouse's columns and queries (read only), or none when it cannot be opened: the run's failures
    still become incidents, classified without drift or sample rows, rather than lost."""
    try:
        warehouse = rt.warehouse  # the Runtime's, kept open for it
        return warehouse.columns, warehouse.query
    except WarehouseError as error:
        log.warning("classifying the run without the warehouse: %s", error)
        return (lambda relation: None), None


def _open_or_update(rt, run: Run, found: Classification, stale: tuple[str, ...]) -> tuple[Incident | None, str]:
    """The node's open incident updated by this failure, or a new one; (None, "") when a later run already
    built the node green (a failure ingested late), (incident, "") when it knew this failure already."""
    subject = run_subject(found.unique_id)
    node = next(n for n in run.nodes if n.unique_id == found.unique_id and n.failed)
    existing = rt.store.open_incident_for(subject)
    if existing is not None and existing.details.run is not None:
        if existing.details.run.last_failed_at >= run.generated_at:  # this run, or an older one ingested late
            return existing, ""
        again = existing.details.run.model_copy(update={
            "last_invocation_id": run.invocation_id, "last_failed_at": run.generated_at,
            "failures": existing.details.run.failures + 1,
            "failing_rows": node.failures, "summary": found.summary})
        incident = rt.store.update_incident(existing.id, details={"run": again},
                                            value=float(node.failures) if node.failures is not None else None)
        rt.store.audit("run.failed_again", incident_id=incident.id, dedup_key=f"run.failed:{run.invocation_id}:{subject}",
                       data={"invocation_id": run.invocation_id, "sha": run.sha, "node": found.unique_id})
        return incident, UPDATED
    if rt.store.green_since(found.unique_id, run) is not None:
        return None, ""
    green = rt.store.last_green(found.unique_id, run)
    detail = RunDetail(node=found.unique_id, kind=found.kind.value, summary=found.summary,
                       error=_excerpt(node.message or ""), invocation_id=run.invocation_id,
                       last_invocation_id=run.invocation_id, last_failed_at=run.generated_at,
                       last_green_invocation_id=green.invocation_id if green else None,
                       failing_rows=node.failures if found.kind is FailureKind.test_failure else None,
                       stale=stale, evidence={k: v for k, v in found.evidence.items() if k != "message"})
    incident = rt.store.open_run_incident(
        subject, severity=SEVERITY[found.kind], failed_at=run.generated_at, failed_sha=run.sha,
        green_at=green.generated_at if green else None, green_sha=green.sha if green else None,
        value=float(node.failures) if node.failures is not None else None, reason=found.summary,
        details={"run": detail})
    if incident.details.run is not None and incident.details.run.invocation_id == run.invocation_id:
        rt.store.audit("incident.opened", incident_id=incident.id, dedup_key=f"run.opened:{run.invocation_id}:{subject}",
                       data={"trigger": "run", "node": found.unique_id, "class": found.kind.value,
                             "invocation_id": run.invocation_id, "sha": run.sha,
                             "last_green_sha": green.sha if green else None})
        return incident, OPENED
    return incident, ""  # opened by a run before this one (a retried job): nothing new


def _resolve(rt, run: Run, incident: Incident) -> Incident:
    status = IncidentStatus.recovered if incident.status is IncidentStatus.merged else IncidentStatus.resolved
    resolved = rt.store.update_incident(incident.id, status=status, resolved_at=run.generated_at)
    rt.store.audit("incident.resolved", incident_id=incident.id, dedup_key=f"run.resolved:{incident.id}",
                   data={"invocation_id": run.invocation_id, "sha": run.sha, "status": status.value})
    return resolved


def _excerpt(message: str) -> str:
    lines = [line.rstrip() for line in message.strip().splitlines() if line.strip()]
    return "\n".join(lines[:ERROR_LINES])
