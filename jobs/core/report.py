"""Stable JSON shapes of Cairn's records, for `--json` output and the audit export."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from enum import Enum
from typing import Any

from jobs.core.records import BaselineStats, Incident, IncidentDetails, PullRequest
from jobs.core.runs import Run


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def baseline_json(stats: BaselineStats | None) -> dict[str, Any] | None:
    if stats is None:
        return None
    # `median` and `mad` were the baseline before forecasts; the JSON never drops a field.
    return {"expected": stats.expected, "lower": stats.lower, "upper": stats.upper, "n": stats.n,
            "seasonal": stats.seasonal, "trend": stats.trend, "median": stats.expected, "mad": None}


def incident_json(incident: Incident, pr: PullRequest | None = None) -> dict[str, Any]:
    """The documented `cairn incident --json` shape (docs/cli.md); add fields, never rename them. `pr` is the
    PR as the forge sees it now (`jobs.propose.current`); without it, the one recorded at propose time."""
    return {
        "id": incident.id,
        "contract": incident.contract_id,
        "status": incident.status.value,
        "severity": incident.severity,
        "detected_at": iso(incident.detected_at),
        "updated_at": iso(incident.updated_at),
        "resolved_at": iso(incident.resolved_at),
        "value": incident.value,
        "baseline": baseline_json(incident.baseline),
        "change_pct": incident.change_pct,
        "reason": incident.reason,
        "last_good": {"at": iso(incident.last_good_at), "sha": incident.last_good_sha,
                      "observation_id": incident.last_good_observation_id},
        "first_bad": {"at": iso(incident.first_bad_at), "sha": incident.first_bad_sha,
                      "observation_id": incident.first_bad_observation_id},
        "follows": incident.follows_id,
        "group": incident.group_id,
        **loop_json(incident.details, pr),
    }


def loop_json(details: IncidentDetails, pr: PullRequest | None = None) -> dict[str, Any]:
    """What attribution, verification and the forge added: top cause, verdict, proof and PR."""
    attribution = details.attribution
    files = {c.sha: list(c.files) for c in attribution.candidates} if attribution else {}
    ranking = details.ranking or (attribution.ranking if attribution else None)
    causes = [{"sha": c.sha, "files": files.get(c.sha, []), "confidence": c.confidence, "rationale": c.rationale}
              for c in (ranking.causes if ranking else ())]
    verification = details.verification
    proof = verification and (verification.fix or (verification.attempts[-1] if verification.attempts else None))
    pr = pr or details.pr
    return {
        "top_cause": causes[0] if causes else None,
        "alternates": causes[1:],
        "verdict": details.verdict.value if details.verdict else None,
        "clone_id": proof.clone_id if proof else None,
        "dbt_command": proof.dbt_command if proof else None,
        "before": proof.before if proof else None,
        "after": proof.after if proof else None,
        "decision": to_json(details.decision),
        "triage": details.triage.model_dump(mode="json", by_alias=True) if details.triage else None,
        "deploy_check": details.deploy.model_dump(mode="json", by_alias=True) if details.deploy else None,
        "pr": {"number": pr.number, "url": pr.url, "branch": pr.branch, "state": pr.state} if pr else None,
    }


def to_json(value: Any) -> Any:
    """Dataclasses, enums and datetimes as JSON values (the store's `details`, `--json` output)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value


def run_json(run: Run) -> dict[str, Any]:
    """The documented `cairn runs --json` shape (docs/cli.md); add fields, never rename them."""
    return {
        "invocation_id": run.invocation_id, "source": run.source, "dbt_cloud_run_id": run.cloud_run_id,
        "command": run.command, "dbt_version": run.dbt_version, "project": run.project,
        "started_at": iso(run.started_at), "generated_at": iso(run.generated_at), "elapsed": run.elapsed,
        "sha": run.sha, "sha_source": run.sha_source, "ingested_at": iso(run.ingested_at), "status": run.status,
        "nodes": [{"unique_id": n.unique_id, "phase": n.phase, "resource_type": n.resource_type, "status": n.status,
                   "message": n.message, "failures": n.failures, "execution_time": n.execution_time,
                   "started_at": iso(n.started_at), "completed_at": iso(n.completed_at),
                   "relation_name": n.relation_name, "path": n.path, "compiled_code": n.compiled_code,
                   "details": n.details} for n in run.nodes],
    }
