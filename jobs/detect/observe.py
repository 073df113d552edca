"""Observe and detect: measure contracts, judge each value, open/update/resolve the contract's incidents."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import Enum

from jobs.contracts.spec import Contract, Kind
from jobs.core.records import (
    Assessment,
    AssessmentStatus,
    FollowsDetail,
    Incident,
    IncidentStatus,
    Observation,
    Verdict,
)
from jobs.detect.baseline import REACH_BACK, assess
from jobs.detect.recovery import around, recovery_band
from jobs.runtime import Runtime

Progress = Callable[[str], None]


class Change(str, Enum):
    none = "none"
    opened = "opened"
    updated = "updated"
    resolved = "resolved"


@dataclass(frozen=True)
class Outcome:
    """What one check did for one contract; `others` are the contract's incidents it also moved."""

    contract: Contract
    observation: Observation
    assessment: Assessment
    change: Change
    incident: Incident | None = None
    others: tuple[Incident, ...] = ()


def observe(rt: Runtime, at: datetime, contracts: Sequence[Contract] | None = None,
            *, backfilled: bool = False) -> list[Observation]:
    """Evaluate contracts (one query per model) at `at` and record the observations."""
    from jobs.contracts.measure import evaluate

    contracts = list(rt.contracts if contracts is None else contracts)
    sha = rt.deployed_sha()
    measured = evaluate(rt.warehouse, rt.manifest, contracts, at)
    return [rt.store.add_observation(replace(obs, sha=sha, backfilled=backfilled)) for obs in measured]


def detect(rt: Runtime, contract: Contract, observation: Observation) -> Outcome:
    """Judge one observation and move the contract's open incidents (see `docs/detection.md`)."""
    store = rt.store
    history = store.observations(contract.id, since=observation.observed_at - _lookback(contract))
    assessment = assess(contract, observation, history, since=store.baseline_since(contract.id))
    chain = store.open_incidents_for(contract.id)
    observation = store.record_judgement(observation.id, assessment.status is AssessmentStatus.anomalous,
                                         assessment.baseline)
    previous = _previous(history, observation)
    if chain and assessment.status is not AssessmentStatus.anomalous and proven_deployed(chain, observation):
        # The code a deploy check proved harmful is still deployed: its value is no baseline, noise or not.
        assessment = replace(assessment, status=AssessmentStatus.anomalous, reason=(
            f"{assessment.reason}; deploy {chain[-1].first_bad_sha[:7]}, proven to move it on a clone, is still deployed"))
        observation = store.record_judgement(observation.id, True, assessment.baseline)
        return Outcome(contract, observation, assessment, Change.updated, _update(rt, chain[-1], observation, assessment))
    if assessment.status is AssessmentStatus.anomalous:
        if not chain and assessment.baseline is None and contract.kind is not Kind.freshness:
            # Zero rows while learning: flagged (kept out of the baseline it is learning), but a learning
            # contract opens no incident, having no band for a fix to bring it back into.
            assessment = replace(assessment, status=AssessmentStatus.learning, reason=(
                f"{assessment.reason}; no incident opens while the contract is learning"))
            return Outcome(contract, observation, assessment, Change.none, None)
        if not chain:
            incident = open_incident(rt, contract, observation, assessment, _last_good(history, observation))
            return Outcome(contract, observation, assessment, Change.opened, incident)
        head = chain[-1]
        if previous is not None and previous.sha != observation.sha and worse(head, assessment):
            incident = follow(rt, contract, observation, assessment, head, previous)
            return Outcome(contract, observation, assessment, Change.opened, incident, (rt.store.incident(head.id),))
        if len(chain) > 1 and observation.sha != head.first_bad_sha \
                and recovery_band(contract, head).contains(assessment.value):
            return _undo(rt, contract, observation, assessment, chain)
        return Outcome(contract, observation, assessment, Change.updated, _update(rt, head, observation, assessment))
    if assessment.status is AssessmentStatus.healthy and chain and recovered(chain, observation, history):
        closed = [_resolve(rt, incident, observation, assessment) for incident in reversed(chain)]
        return Outcome(contract, observation, assessment, Change.resolved, closed[0], tuple(closed[1:]))
    return Outcome(contract, observation, assessment, Change.none, chain[-1] if chain else None)


def worse(head: Incident, assessment: Assessment) -> bool:
    """The contract is anomalous the other way, or further the same way by more than its band's width.

    Measured from the open incident's latest level, with the band around it as wide as today's band
    (widths scale with the level): a regression on top of a regression is a step of its own.
    """
    if head.value is None or assessment.value is None or assessment.baseline is None:
        return False
    band = around(assessment.baseline, head.value)
    before, now = head.change_pct or 0.0, assessment.change_pct or 0.0
    if before * now < 0:
        return True
    if now < 0:
        return assessment.value < band.lower
    return assessment.value > band.upper


RESOLVE_AFTER = 3  # healthy observations in a row that close an incident while its code stays deployed
UNEXPLAINED = (Verdict.no_code_cause, Verdict.intentional)  # verdicts with no code of ours to blame


def proven_deployed(chain: Sequence[Incident], current: Observation) -> bool:
    """The latest incident was opened by a deploy check and that deploy's code still runs: a healthy
    value is the harm hidden by noise, not a recovery."""
    latest = chain[-1]
    return latest.details.deploy is not None and current.sha == latest.first_bad_sha


def recovered(chain: Sequence[Incident], current: Observation, history: Sequence[Observation]) -> bool:
    """A healthy observation closes the incident when the deployed code changed since the first bad
    one (a revert or a fix shipped), or when no code was to blame (a data problem that went away);
    otherwise only RESOLVE_AFTER healthy ones in a row do. A lasting regression that noise lifts
    into the band for a day (a quiet Sunday, when most revenue is subscriptions the bug does not
    touch) must not close, and then reopen as a new incident whose suspect range no longer holds
    the culprit. An incident and those that follow it close together, judged by the latest."""
    latest = chain[-1]
    if proven_deployed(chain, current):
        return False
    if current.sha != latest.first_bad_sha or all(i.details.verdict in UNEXPLAINED for i in chain):
        return True
    # The first bad observation is anomalous, so the walk back stops at it at the latest.
    earlier = sorted((o for o in history if o.id != current.id and _when(o) < _when(current)), key=_when)
    streak = 1
    for obs in reversed(earlier):
        if obs.anomalous:
            break
        streak += 1
    return streak >= RESOLVE_AFTER


def open_incident(rt: Runtime, contract: Contract, observation: Observation, assessment: Assessment,
                  last_good: Observation | None, *, follows: Incident | None = None,
                  details: dict | None = None) -> Incident:
    incident = rt.store.open_incident(
        contract.id, severity=contract.severity, first_bad=observation, last_good=last_good,
        value=assessment.value, baseline=assessment.baseline, change_pct=assessment.change_pct,
        reason=assessment.reason, follows=follows, details=details)
    data = _event_data(observation, assessment)
    if follows is not None:
        data["follows"] = follows.id
    rt.store.audit("incident.opened", incident_id=incident.id, data=data)
    return incident


def follow(rt: Runtime, contract: Contract, observation: Observation, assessment: Assessment, head: Incident,
           previous: Observation | None, *, details: dict | None = None) -> Incident:
    """A new deploy made an open incident worse: an incident of its own, its suspect range that deploy."""
    follows = FollowsDetail(incident=head.id, level=head.value, sha=previous.sha if previous else None,
                            at=previous.observed_at if previous else None)
    incident = open_incident(rt, contract, observation, assessment, previous, follows=head,
                             details={"follows": follows, **(details or {})})
    rt.store.update_incident(head.id, details={"followed_by": incident.id})
    rt.store.audit("incident.followed", incident_id=head.id,
                   data={"by": incident.id, "sha": observation.sha, "value": assessment.value},
                   dedup_key=f"incident:{head.id}:followed_by:{incident.id}")
    return incident


def _undo(rt: Runtime, contract: Contract, observation: Observation, assessment: Assessment,
          chain: Sequence[Incident]) -> Outcome:
    """The latest deploy's damage is undone (its fix shipped) while the earlier incident's remains."""
    closed = _resolve(rt, chain[-1], observation, assessment)
    earlier = _update(rt, chain[-2], observation, assessment)
    return Outcome(contract, observation, assessment, Change.resolved, closed, (earlier,))


def _update(rt: Runtime, incident: Incident, observation: Observation, assessment: Assessment) -> Incident:
    # A deploy check's change is the deploy's own effect, measured once: a later day's noise does not move it.
    change_pct = incident.change_pct if incident.details.deploy is not None else assessment.change_pct
    incident = rt.store.update_incident(incident.id, value=assessment.value, change_pct=change_pct,
                                        reason=assessment.reason, baseline=assessment.baseline)
    rt.store.audit("incident.updated", incident_id=incident.id, data=_event_data(observation, assessment))
    return incident


def _resolve(rt: Runtime, incident: Incident, observation: Observation, assessment: Assessment) -> Incident:
    incident = rt.store.update_incident(incident.id, status=_resolved_status(incident),
                                        resolved_at=observation.observed_at, value=assessment.value,
                                        change_pct=assessment.change_pct, reason=assessment.reason)
    rt.store.audit("incident.resolved", incident_id=incident.id, data=_event_data(observation, assessment))
    return incident


def _previous(history: Sequence[Observation], current: Observation) -> Observation | None:
    """The observation just before this one (any verdict): a deploy between the two is this check's news."""
    earlier = [o for o in history if o.id != current.id and _when(o) < _when(current)]
    return max(earlier, key=lambda o: (_when(o), o.observed_at), default=None)



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
