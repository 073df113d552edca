"""The observe → detect stage: measure every contract, judge each value, open/update/resolve incidents."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import Enum

from jobs.baseline import REACH_BACK, assess
from jobs.contracts import Contract
from jobs.records import Assessment, AssessmentStatus, Incident, IncidentStatus, Observation
from jobs.runtime import Runtime

Progress = Callable[[str], None]


class Change(str, Enum):
    none = "none"
    opened = "opened"
    updated = "updated"
    resolved = "resolved"


@dataclass(frozen=True)
class Outcome:
    """What one check did for one contract."""

    contract: Contract
    observation: Observation
    assessment: Assessment
    change: Change
    incident: Incident | None = None


def observe(rt: Runtime, at: datetime, contracts: Sequence[Contract] | None = None,
            *, backfilled: bool = False) -> list[Observation]:
    """Evaluate contracts (one query per model) at `at` and record the observations."""
    from jobs.measure import evaluate

    contracts = list(rt.contracts if contracts is None else contracts)
    sha = rt.deployed_sha()
    measured = evaluate(rt.warehouse, rt.manifest, contracts, at)
    return [rt.store.add_observation(replace(obs, sha=sha, backfilled=backfilled)) for obs in measured]


def check(rt: Runtime, contracts: Sequence[Contract] | None = None) -> list[Outcome]:
    """Observe at the Runtime's clock, then judge each observation and move its contract's incident."""
    contracts = list(rt.contracts if contracts is None else contracts)
    observations = observe(rt, rt.clock.now(), contracts)
    return [detect(rt, contract, obs) for contract, obs in zip(contracts, observations)]


def detect(rt: Runtime, contract: Contract, observation: Observation) -> Outcome:
    store = rt.store
    history = store.observations(contract.id, since=observation.observed_at - _lookback(contract))
    assessment = assess(contract, observation, history, since=store.baseline_since(contract.id))
    incident = store.open_incident_for(contract.id)
    if assessment.status is AssessmentStatus.anomalous:
        store.mark_anomalous(observation.id)
        if incident is None:
            incident = _open(rt, contract, observation, assessment, history)
            return Outcome(contract, observation, assessment, Change.opened, incident)
        incident = store.update_incident(incident.id, value=assessment.value,
                                         change_pct=assessment.change_pct, reason=assessment.reason,
                                         baseline=assessment.baseline)
        store.audit("incident.updated", incident_id=incident.id, data=_event_data(observation, assessment))
        return Outcome(contract, observation, assessment, Change.updated, incident)
    if assessment.status is AssessmentStatus.healthy and incident is not None \
            and recovered(incident, observation, history):
        incident = store.update_incident(incident.id, status=_resolved_status(incident),
                                         resolved_at=observation.observed_at, value=assessment.value,
                                         change_pct=assessment.change_pct, reason=assessment.reason)
        store.audit("incident.resolved", incident_id=incident.id, data=_event_data(observation, assessment))
        return Outcome(contract, observation, assessment, Change.resolved, incident)
    return Outcome(contract, observation, assessment, Change.none, incident)


RESOLVE_AFTER = 3  # healthy observations in a row that close an incident while its code stays deployed


def recovered(incident: Incident, current: Observation, history: Sequence[Observation]) -> bool:
    """A healthy observation closes the incident when the deployed code changed since the first bad
    one (a revert or a fix shipped); otherwise only RESOLVE_AFTER healthy ones in a row do. A lasting
    regression that noise lifts into the band for a day (a quiet Sunday, when most revenue is
    subscriptions the bug does not touch) must not close, and then reopen as a new incident whose
    suspect range no longer holds the culprit."""
    if current.sha != incident.first_bad_sha:
        return True
    # The first bad observation is anomalous, so the walk back stops at it at the latest.
    earlier = sorted((o for o in history if o.id != current.id and _when(o) < _when(current)), key=_when)
    streak = 1
    for obs in reversed(earlier):
        if obs.anomalous:
            break
        streak += 1
    return streak >= RESOLVE_AFTER


def _open(rt: Runtime, contract: Contract, observation: Observation, assessment: Assessment,
          history: Sequence[Observation]) -> Incident:
    last_good = _last_good(history, observation)
    incident = rt.store.open_incident(
        contract.id, severity=contract.severity, first_bad=observation, last_good=last_good,
        value=assessment.value, baseline=assessment.baseline, change_pct=assessment.change_pct,
        reason=assessment.reason)
    rt.store.audit("incident.opened", incident_id=incident.id, data=_event_data(observation, assessment))
    return incident


def _last_good(history: Sequence[Observation], current: Observation) -> Observation | None:
    """The latest healthy observation before the first bad one: with it, it bounds the suspect commits."""
    earlier = [o for o in history if not o.anomalous and o.id != current.id and o.value is not None
               and _when(o) < _when(current)]
    return max(earlier, key=_when, default=None)


def _when(obs: Observation) -> datetime:
    return obs.window_start or obs.observed_at


def _lookback(contract: Contract) -> timedelta:
    # Room for the baseline to reach back past a lasting incident's flagged points.
    return timedelta(days=REACH_BACK * contract.baseline.days + 2)


def _resolved_status(incident: Incident) -> IncidentStatus:
    """A merged fix that the next observation confirms is a recovery; otherwise it went away by itself."""
    return IncidentStatus.recovered if incident.status is IncidentStatus.merged else IncidentStatus.resolved


def _event_data(observation: Observation, assessment: Assessment) -> dict:
    return {"observation_id": observation.id, "value": assessment.value, "reason": assessment.reason,
            "change_pct": assessment.change_pct, "sha": observation.sha,
            "window_start": observation.window_start.isoformat() if observation.window_start else None}
