"""Stable JSON shapes of Cairn's records, for `--json` output and the audit export."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from enum import Enum
from typing import Any

from jobs.core.records import (
    BaselineStats,
    Candidate,
    Incident,
    MemberResult,
    RankedCause,
    Ranking,
    RowDelta,
    Verdict,
    Verification,
)


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def baseline_json(stats: BaselineStats | None) -> dict[str, Any] | None:
    if stats is None:
        return None
    # `median` and `mad` were the baseline before forecasts; the JSON never drops a field.
    return {"expected": stats.expected, "lower": stats.lower, "upper": stats.upper, "n": stats.n,
            "seasonal": stats.seasonal, "trend": stats.trend, "median": stats.expected, "mad": None}


def incident_json(incident: Incident) -> dict[str, Any]:
    """The documented `cairn incident --json` shape (docs/cli.md); add fields, never rename them."""
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
        **loop_json(incident.details),
    }


def loop_json(details: dict[str, Any]) -> dict[str, Any]:
    """What attribution, verification and the forge added: top cause, verdict, proof and PR."""
    attribution = details.get("attribution", {})
    candidates = {c["sha"]: c for c in attribution.get("candidates", [])}
    causes = [{"sha": c["sha"], "files": candidates.get(c["sha"], {}).get("files", []),
               "confidence": c["confidence"], "rationale": c["rationale"]}
              for c in details.get("ranking", attribution.get("ranking", {})).get("causes", [])]
    verification = details.get("verification", {})
    proof = verification.get("fix") or (verification.get("attempts") or [{}])[-1]
    pr = details.get("pr")
    return {
        "top_cause": causes[0] if causes else None,
        "alternates": causes[1:],
        "verdict": details.get("verdict"),
        "clone_id": proof.get("clone_id"),
        "dbt_command": proof.get("dbt_command"),
        "before": proof.get("before"),
        "after": proof.get("after"),
        "decision": details.get("decision"),
        "triage": details.get("triage"),
        "deploy_check": details.get("deploy"),
        "pr": {"number": pr["number"], "url": pr.get("url"), "branch": pr["branch"], "state": pr["state"]}
        if pr else None,
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


def candidate_from_json(data: dict[str, Any]) -> Candidate:
    return Candidate(**{**data, "authored_at": datetime.fromisoformat(data["authored_at"]),
                        "files": tuple(data["files"]), "models": tuple(data["models"])})


def verification_from_json(data: dict[str, Any]) -> Verification:
    deltas = tuple(RowDelta(**{**d, "key": tuple(d["key"]), "samples": tuple(d["samples"])})
                   for d in data.get("deltas", ()))
    members = tuple(MemberResult(**{**m, "verdict": Verdict(m["verdict"])}) for m in data.get("members", ()))
    return Verification(**{**data, "verdict": Verdict(data["verdict"]), "reverted": tuple(data["reverted"]),
                           "deltas": deltas, "built": tuple(data.get("built", ())), "members": members,
                           "clones": tuple(data.get("clones", ()))})


def ranking_from_json(data: dict[str, Any]) -> Ranking:
    return Ranking(causes=tuple(RankedCause(**c) for c in data["causes"]), ranker=data["ranker"],
                   note=data.get("note", ""))
