"""Reconcile: no incident stays in flight without a job working on it.

Every check and every worker start looks at the incidents whose loop waits for a stage (detected,
attributing, verifying, and verified or not verified with no decision yet). One is live when a job
waits for it in the queue (RQ: queued, deferred, scheduled for a retry, or started less than a lease
ago; in-process: pending) or a job holds its lease (`jobs.loop.lease`, renewed while the stage runs).
Any other was left by a worker killed mid-stage, an enqueue that failed while Redis was down, or a
process that died: it is resumed at its stage (stages are idempotent), its dead RQ job replaced; after
`queue.max_resumes` resumes it is marked errored with the reason (`jobs.loop.failures`), so nothing
loops for ever. An incident the kill switch covers is held, not stuck: it is resumed once the switch is
released. Sandboxes and worktrees of incidents no live job works on are removed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from jobs.attribute import groups
from jobs.core.clock import Clock
from jobs.core.errors import CairnError, QueueUnavailable
from jobs.core.records import Incident
from jobs.loop.cleanup import remove_orphans
from jobs.loop.failures import mark_errored
from jobs.loop.flow import next_stage

log = logging.getLogger(__name__)

RESUMED = "loop.resumed"


class StuckIncident(CairnError):
    """An incident no job finished however often it was resumed."""


@dataclass(frozen=True)
class Survey:
    """The in-flight incidents, split by what is happening to them."""

    live: tuple[Incident, ...] = ()
    held: tuple[Incident, ...] = ()  # the kill switch covers them: resumed when it is released
    stuck: tuple[Incident, ...] = ()  # no job works on them
    busy: frozenset[int] = frozenset()  # incidents a live job works on (their sandboxes are in use)


@dataclass(frozen=True)
class Reconciled:
    resumed: tuple[int, ...] = ()
    errored: tuple[int, ...] = ()
    held: tuple[int, ...] = ()
    removed: tuple[str, ...] = ()


def survey(rt, jobs) -> Survey:
    """Which in-flight incidents are live, held or stuck (`jobs`: a `jobs.loop.queue.Jobs`); raises QueueUnavailable when the queue cannot say."""
    busy = set(jobs.waiting()) | set(rt.store.live_leases(Clock().now()))  # leases run on the wall clock
    flying = [i for i in rt.store.incidents(open_only=True) if groups.leads(i) and next_stage(i) is not None]
    live = [i for i in flying if i.id in busy]
    idle = [i for i in flying if i.id not in busy]
    held = [i for i in idle if rt.kill_switch_for(i) is not None]
    stuck = [i for i in idle if i not in held]
    return Survey(tuple(live), tuple(held), tuple(stuck), frozenset(busy))


def reconcile(rt, jobs) -> Reconciled:
    """Resume, or stop with the reason, every stuck incident; remove the sandboxes of incidents no job works on.
    With the queue unreachable nothing is touched: the next check tries again."""
    try:
        found = survey(rt, jobs)
    except QueueUnavailable as exc:
        log.warning("reconcile skipped: %s", exc)
        return Reconciled()
    # Before anything is resumed: an in-process resume may run at once and build a sandbox of its own.
    removed = remove_orphans(rt, set(found.busy))
    for path in removed:
        log.warning("removed %s: no live job works on its incident", path)
    resumed, errored = [], []
    for incident in found.stuck:
        stage = next_stage(incident)
        assert stage is not None
        released = incident.details.held is not None  # held by the switch, now released: not a failure
        tries = _resumes(rt, incident)
        if not released and tries >= rt.config.settings.queue.max_resumes:
            stuck = StuckIncident(f"incident {incident.id} stayed {incident.status.value} with no job finishing its "
                                  f"{stage} stage after {tries} resumes; see the worker logs")
            stopped = mark_errored(rt.store, incident.id, stage, stuck)
            errored += stopped
            for stopped_id in stopped:
                jobs.notify(stopped_id)
            continue
        why = "kill switch released" if released else "no live job"
        rt.store.audit(RESUMED, incident_id=incident.id,
                       data={"stage": stage, "status": incident.status.value, "why": why,
                             "resume": tries + (0 if released else 1)})
        log.warning("incident %s: %s at %s (%s): resumed", incident.id, incident.status.value, stage, why)
        try:
            jobs.resume(stage, incident.id, run=groups.run_label(incident))
        except QueueUnavailable as exc:
            log.warning("incident %s: not resumed: %s", incident.id, exc)
            continue
        resumed.append(incident.id)
    return Reconciled(tuple(resumed), tuple(errored), tuple(i.id for i in found.held), tuple(removed))


def _resumes(rt, incident: Incident) -> int:
    """Times a check resumed it because no job was working on it (a release of the kill switch is no failure)."""
    return sum(1 for e in rt.store.audit_events(incident.id) if e.name == RESUMED and e.data.get("why") == "no live job")
