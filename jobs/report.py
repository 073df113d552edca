"""Stable JSON shapes of Cairn's records, for `--json` output and the audit export."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from jobs.records import BaselineStats, Incident


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def baseline_json(stats: BaselineStats | None) -> dict[str, Any] | None:
    if stats is None:
        return None
    return {"median": stats.median, "mad": stats.mad, "n": stats.n, "lower": stats.lower,
            "upper": stats.upper, "seasonal": stats.seasonal}


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
    }
