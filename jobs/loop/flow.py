"""Which stage an incident waits for: the loop's order, read from its status after every stage."""

from __future__ import annotations

from jobs.core.records import Incident, IncidentStatus

STAGES = ("attribute", "verify", "propose")
_NEXT = {IncidentStatus.detected: "attribute", IncidentStatus.attributing: "attribute",
         IncidentStatus.verifying: "verify", IncidentStatus.verified: "propose",
         IncidentStatus.not_verified: "propose"}


def next_stage(incident: Incident) -> str | None:
    """The stage an incident in this status waits for; None when the loop has nothing left to do (a
    verification whose decision was to record only, in observe mode, is done)."""
    if incident.details.decision is not None and incident.status in (IncidentStatus.verified,
                                                                      IncidentStatus.not_verified):
        return None
    return _NEXT.get(incident.status)
