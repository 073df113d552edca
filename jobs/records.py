"""The records the loop passes between stages: frozen values, no behaviour beyond derivations."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any


@dataclass(frozen=True)
class Observation:
    """One evaluation of one contract: the value, when, over which window, at which deployed SHA."""

    contract_id: str
    observed_at: datetime  # tz-aware UTC
    value: float | None  # None: nothing to measure (e.g. an empty window for a ratio)
    window_start: datetime | None = None
    window_end: datetime | None = None
    sha: str | None = None
    profile: dict[str, Any] | None = None  # distribution: {"categories": {...}} or {"quantiles": {...}}
    backfilled: bool = False
    anomalous: bool = False
    id: int | None = None


@dataclass(frozen=True)
class BaselineStats:
    """The robust summary of a contract's healthy history and the band it implies."""

    median: float
    mad: float
    n: int
    lower: float
    upper: float
    seasonal: bool = False

    def contains(self, value: float) -> bool:
        return self.lower <= value <= self.upper


class AssessmentStatus(str, Enum):
    healthy = "healthy"
    anomalous = "anomalous"
    learning = "learning"  # too few baseline points to judge


@dataclass(frozen=True)
class Assessment:
    """Detection's verdict on one observation against its baseline."""

    contract_id: str
    status: AssessmentStatus
    reason: str
    value: float | None  # the scored value (distribution: the divergence)
    baseline: BaselineStats | None = None
    change_pct: float | None = None  # (value - median) / |median| * 100
    z: float | None = None


class IncidentStatus(str, Enum):
    detected = "detected"
    attributing = "attributing"
    verifying = "verifying"
    verified = "verified"
    not_verified = "not_verified"
    pr_opened = "pr_opened"
    merged = "merged"
    recovered = "recovered"
    escalated = "escalated"
    rejected = "rejected"
    errored = "errored"
    resolved = "resolved"

    @property
    def is_open(self) -> bool:
        return self not in (IncidentStatus.recovered, IncidentStatus.resolved, IncidentStatus.rejected)


@dataclass(frozen=True)
class Incident:
    """One regression of one contract, from the first bad observation until it recovers."""

    id: int
    contract_id: str
    status: IncidentStatus
    severity: str
    detected_at: datetime
    updated_at: datetime
    first_bad_at: datetime
    first_bad_sha: str | None
    last_good_at: datetime | None
    last_good_sha: str | None
    value: float | None
    baseline: BaselineStats | None
    change_pct: float | None
    reason: str
    first_bad_observation_id: int | None = None
    last_good_observation_id: int | None = None
    resolved_at: datetime | None = None
    details: dict[str, Any] = field(default_factory=dict)  # later stages: attribution, verdict, PR


@dataclass(frozen=True)
class AuditEvent:
    """Something that happened, who did it and when; the audit log is append-only."""

    name: str
    at: datetime
    actor: str
    incident_id: int | None = None
    data: dict[str, Any] = field(default_factory=dict)
    id: int | None = None
