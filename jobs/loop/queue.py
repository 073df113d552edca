"""How the loop's jobs run: RQ workers over Redis in production, in-process without REDIS_URL.

Every job takes IDs, never objects, and reads what it needs from the store, so a job can run in any
worker and be retried. Which stage comes next is decided by the incident's status after a stage
(`next_stage`): a retried or duplicated job finds the incident already past it and does nothing.
After every stage the incident's Slack card and thread are refreshed by `bot.notify.notify_incident`,
enqueued by dotted path (the engine never imports the chat surface) on its own queue, so a
card update is not stuck behind a 10-minute clone build.

Failures: a transient one (Slack 429/5xx, GitHub 5xx, a warehouse lock or timeout, a lost
connection) is re-raised so RQ retries it with the configured backoff (RQ's scheduler runs the
delayed retries: `cairn worker` starts it). A permanent one, or a transient one out of retries,
marks the incident (and the group it leads) `errored` with the reason and an error ID
(`jobs.loop.failures`), audits it once and refreshes the card, which says so in the thread. A worker
killed mid-job (its work horse dies) is retried by RQ the same way; stages clean up what a killed
predecessor left behind. A stage holds its incident's lease while it runs (`jobs.loop.lease`), and every
check first reconciles (`jobs.loop.reconcile`): an in-flight incident no job works on is resumed. With
Redis down, a stage or card refresh that cannot be enqueued is audited and left to that reconcile.

Groups (`jobs.attribute.groups`): incidents one check opens over the same suspect range are grouped; only the
leader's stages are enqueued, and each stage names the members it moved, whose cards are refreshed.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import threading
import uuid
from abc import ABC, abstractmethod
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from redis.exceptions import RedisError

from jobs.attribute import groups
from jobs.config import Config, load_config
from jobs.core.clock import Clock
from jobs.core.errors import QueueUnavailable
from jobs.detect.ingest import ingest_cloud_run
from jobs.loop.failures import is_transient, mark_errored, redact
from jobs.loop.flow import next_stage
from jobs.loop.lease import held

log = logging.getLogger(__name__)

NOTIFY = "bot.notify.notify_incident"  # by path: jobs never import bot
TELL = "bot.notify.tell_user"
# --- what a job does, wherever it runs --------------------------------------------------------


def perform_stage(rt, jobs: "Jobs", stage: str, incident_id: int, *, may_retry: bool,
                  holder: str | None = None) -> None:
    """Run one stage holding the incident's lease (`holder`: the RQ job ID, so a retry takes over from its
    killed predecessor), then enqueue the card refresh and the next stage; failures as described above."""
    settings = rt.config.settings.queue
    # The lease measures whether this process is alive: the wall clock, even when the check's is pinned.
    with held(rt.store, incident_id, stage, holder or uuid.uuid4().hex, settings.lease, Clock()) as mine:
        if not mine:
            log.info("incident %s: another live job holds it; %s not run twice", incident_id, stage)
            return
        _perform_stage(rt, jobs, stage, incident_id, may_retry=may_retry)


def _perform_stage(rt, jobs: "Jobs", stage: str, incident_id: int, *, may_retry: bool) -> None:
    from jobs.loop import stages

    run = {"attribute": stages.attribute_stage, "verify": stages.verify_stage,
           "propose": stages.propose_stage}[stage]
    try:
        moved = [incident_id, *run(rt, incident_id)]  # a group's leader moves its members too
    except Exception as exc:
        if may_retry and is_transient(exc):
            log.warning("incident %s: %s failed transiently, RQ retries it: %s", incident_id, stage, exc)
            raise
        for stopped in dict.fromkeys([incident_id, *mark_errored(rt.store, incident_id, stage, exc)]):
            jobs.notify(stopped)
        return
    for moved_id in moved:
        jobs.notify(moved_id)
    for moved_id in moved:
        incident = rt.store.incident(moved_id)
        following = next_stage(incident) if groups.leads(incident) else None
        if following is not None and (moved_id, following) != (incident_id, stage):
            jobs.stage(following, moved_id, run=groups.run_label(incident))


def perform_check(rt, jobs: "Jobs", contracts=None) -> list:
    """Observe and detect at the Runtime's clock; every incident that moved gets its card refreshed,
    new ones are healed."""
    from jobs.detect.check import check
    from jobs.detect.observe import Change
    from jobs.loop.reconcile import reconcile

    reconcile(rt, jobs)  # first: what a dead worker or a failed enqueue left in flight goes on
    outcomes = check(rt, contracts)
    # A metric on a model a failed run left stale shares that run's verified PR (jobs.attribute.groups).
    caused = groups.join_failed_runs(rt.store, [(o.incident, o.contract.relation_name) for o in outcomes
                                                if o.change is Change.opened])
    opened = [o.incident for o in outcomes if o.change is Change.opened and o.incident.id not in caused]
    leaders = groups.form(rt.store, opened)  # one culprit's incidents: only the leader's loop runs
    for outcome in outcomes:
        if outcome.change is Change.none:
            continue
        for incident in (outcome.incident, *outcome.others):
            jobs.notify(incident.id)
    for incident in opened:
        if leaders.get(incident.id, incident.id) == incident.id:
            jobs.stage("attribute", incident.id)
    return outcomes


def heal_run(rt, jobs: "Jobs", ingested):
    """A recorded run's incidents: those it opened with one suspect range form a group (one culprit, one
    verification, one PR), the cards of those it moved are refreshed, the loop starts for each new leader.
    `ingested` is `jobs.detect.ingest.Ingested` (None: the build was held); returned as given."""
    if ingested is None:
        return None
    leaders = groups.form(rt.store, ingested.incidents.opened)
    for incident in ingested.incidents.moved:
        jobs.notify(incident.id)
    for incident in ingested.incidents.opened:
        if leaders.get(incident.id, incident.id) == incident.id:
            jobs.stage("attribute", incident.id)
    return ingested


def check_and_heal(rt, contracts=None) -> list:
    """`cairn check` at the Runtime's clock: observe and detect, then the loop for every incident
    this check opened.

    With REDIS_URL the loop's stages go to the workers; without, they run here before this returns.
    """
    return perform_check(rt, for_runtime(rt), contracts)


def perform_review(rt, jobs: "Jobs", action: str, incident_id: int, actor: str, arg: str,
                   reply_to: str | None = None) -> None:
    """Approve (arg: the head SHA shown) or reject (arg: the reason); a refusal is told to the actor."""
    from jobs.propose.review import ReviewRefused, approve, reject

    moved: list[int] = []
    try:
        moved = (approve if action == "approve" else reject)(rt, incident_id, arg, actor)
    except ReviewRefused as exc:
        if reply_to and actor.startswith("slack:"):
            jobs.tell(reply_to, actor.removeprefix("slack:"), str(exc))
    for changed in dict.fromkeys([incident_id, *moved]):  # a group's PR: every member's card
        jobs.notify(changed)


# --- where jobs run ---------------------------------------------------------------------------


class Jobs(ABC):
    """Enqueue the loop's jobs; each call returns at once with the work queued."""

    @abstractmethod
    def stage(self, stage: str, incident_id: int, run: str = "") -> None:
        """`run` tells a second loop of the same incident (its own, after it left a group) from the first."""

    @abstractmethod
    def notify(self, incident_id: int) -> None: ...

    @abstractmethod
    def check(self, contract_ids: list[str] | None = None) -> None: ...

    @abstractmethod
    def review(self, action: str, incident_id: int, actor: str, arg: str, reply_to: str | None = None) -> None: ...

    @abstractmethod
    def ingest(self, run_id: int) -> None:
        """Fetch a finished dbt Cloud run's artifacts and record the run (a job webhook's work)."""

    @abstractmethod
    def tell(self, channel: str, user: str, text: str) -> None:
        """An ephemeral message to one person in a channel (a refusal they should see)."""

    @abstractmethod
    def health(self) -> dict[str, Any]: ...

    @abstractmethod
    def waiting(self) -> set[int]:
        """Incidents a stage job waits for here (queued, scheduled for a retry, or just started)."""

    @abstractmethod
    def resume(self, stage: str, incident_id: int, run: str = "") -> None:
        """Enqueue a stage again for an incident no live job works on, replacing its dead job."""


class InlineJobs(Jobs):
    """No Redis: jobs run in this process, one at a time, in the order they were enqueued.

    A job enqueued by a running job waits for it to finish (a FIFO, not recursion), so the loop
    runs exactly as the workers would run it, without retries. `background=True` runs them on
    one daemon thread instead (`cairn serve` without Redis: a listener must return at once).
    """

    def __init__(self, rt, *, background: bool = False):
        self.rt = rt
        self._pending: deque[Callable[[], None]] = deque()
        self._running = False
        self._lock = threading.Lock()
        self._wake = threading.Event() if background else None
        self.errors: list[str] = []
        self._staged: Counter[int] = Counter()
        if background:
            threading.Thread(target=self._serve, name="cairn-jobs", daemon=True).start()

    def stage(self, stage: str, incident_id: int, run: str = "") -> None:
        with self._lock:
            self._staged[incident_id] += 1

        def job() -> None:
            try:
                perform_stage(self.rt, self, stage, incident_id, may_retry=False)
            finally:
                with self._lock:
                    self._staged[incident_id] -= 1

        self._submit(job)

    def waiting(self) -> set[int]:
        with self._lock:
            return {incident_id for incident_id, n in self._staged.items() if n > 0}

    def resume(self, stage: str, incident_id: int, run: str = "") -> None:
        self.stage(stage, incident_id, run)

    def notify(self, incident_id: int) -> None:
        self._submit(lambda: self._notify(incident_id))

    def _notify(self, incident_id: int) -> None:
        # Without a queue there is no retry: a chat outage must not stop the loop, only be logged.
        try:
            _import(NOTIFY)(incident_id, rt=self.rt)
        except Exception:
            log.exception("incident %s: the card could not be refreshed", incident_id)

    def check(self, contract_ids: list[str] | None = None) -> None:
        self._submit(lambda: perform_check(self.rt, self, _contracts(self.rt, contract_ids)))

    def review(self, action: str, incident_id: int, actor: str, arg: str, reply_to: str | None = None) -> None:
        self._submit(lambda: perform_review(self.rt, self, action, incident_id, actor, arg, reply_to))

    def ingest(self, run_id: int) -> None:
        self._submit(lambda: heal_run(self.rt, self, ingest_cloud_run(self.rt, run_id)))

    def tell(self, channel: str, user: str, text: str) -> None:
        self._submit(lambda: _import(TELL)(channel, user, text, rt=self.rt))

    def health(self) -> dict[str, Any]:
        return {"backend": "in-process", "queued": len(self._pending), "failed": len(self.errors)}

    def _submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            self._pending.append(job)
            if self._wake is not None:
                self._wake.set()
                return
            if self._running:
                return
            self._running = True
        try:
            self._drain()
        finally:
            with self._lock:
                self._running = False

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    return
                job = self._pending.popleft()
            if self._wake is None:
                job()  # in the foreground an error reaches the caller (the CLI prints it)
                continue
            try:
                job()
            except Exception as exc:  # the thread must survive; the stage already recorded it
                error_id = uuid.uuid4().hex[:8]
                log.exception("in-process job failed (error %s)", error_id)
                self.errors.append(f"{error_id}: {redact(str(exc))}")

    def _serve(self) -> None:
        assert self._wake is not None
        while True:
            self._wake.wait()
            self._wake.clear()
            self._drain()


class RQJobs(Jobs):
    """Redis + RQ: stages on `queue.name`, card refreshes on `queue.name`-notify.

    A pinned clock travels with every job (`at`), so a worker runs a replayed check's stages at
    the check's time; with the wall clock, each job reads the wall where it runs.
    """

    def __init__(self, config: Config, connection=None, clock: Clock | None = None, store=None):
        from redis import Redis
        from rq import Queue

        self.config = config
        self.clock = clock or Clock()
        self.store = store  # where a failed enqueue is audited
        self.settings = config.settings.queue
        self.redis = connection or Redis.from_url(config.env.redis_url)
        self.stages = Queue(self.settings.name, connection=self.redis)
        self.notifications = Queue(f"{self.settings.name}-notify", connection=self.redis)

    @property
    def queues(self) -> list:
        """Notifications first: a worker free to pick takes a card update before a clone build."""
        return [self.notifications, self.stages]

    def stage(self, stage: str, incident_id: int, run: str = "") -> None:
        self._enqueue(self.stages, "jobs.loop.queue.stage_job", (stage, incident_id), stage,
                      job_id=stage_job_id(stage, incident_id, run), incident_id=incident_id)

    def resume(self, stage: str, incident_id: int, run: str = "") -> None:
        from rq.exceptions import NoSuchJobError
        from rq.job import Job

        try:  # the dead job's record (failed, abandoned, canceled) would refuse the same job ID
            Job.fetch(stage_job_id(stage, incident_id, run), connection=self.redis).delete()
        except NoSuchJobError:
            pass
        except RedisError as exc:
            raise QueueUnavailable(f"Redis is unreachable ({exc}): incident {incident_id} is resumed by a "
                                   "later check") from exc
        self.stage(stage, incident_id, run)

    def notify(self, incident_id: int) -> None:
        # Many refreshes may queue; each re-reads the store, so the last one shows the latest state.
        self._enqueue(self.notifications, NOTIFY, (incident_id,), "notify", incident_id=incident_id)

    def check(self, contract_ids: list[str] | None = None) -> None:
        self._enqueue(self.stages, "jobs.loop.queue.check_job", (contract_ids,), "check", lost=False)

    def review(self, action: str, incident_id: int, actor: str, arg: str, reply_to: str | None = None) -> None:
        self._enqueue(self.stages, "jobs.loop.queue.review_job", (action, incident_id, actor, arg, reply_to), "propose",
                      incident_id=incident_id, lost=False)

    def ingest(self, run_id: int) -> None:
        # One job per dbt Cloud run: a webhook delivered again while it waits is not queued twice.
        self._enqueue(self.stages, "jobs.loop.queue.ingest_job", (run_id,), "check", job_id=f"cairn-ingest-{run_id}",
                      lost=False)

    def tell(self, channel: str, user: str, text: str) -> None:
        self._enqueue(self.notifications, TELL, (channel, user, text), "notify")

    def health(self) -> dict[str, Any]:
        from rq import Worker

        try:
            return {"backend": "rq", "queued": {q.name: q.count for q in self.queues},
                    "failed": {q.name: q.failed_job_registry.count for q in self.queues},
                    "workers": len(Worker.all(connection=self.redis))}
        except RedisError as exc:
            return {"backend": "rq", "error": f"Redis is unreachable: {redact(str(exc))}"}

    def waiting(self) -> set[int]:
        """Stage jobs queued, deferred or scheduled (a retry's backoff), and those started less than a
        lease ago (they take the lease as they start); a started job past that lives only by its lease."""
        from rq.job import Job

        started_before = Clock().now() - self.settings.lease  # RQ stamps jobs with the wall's time
        try:
            found = {*self.stages.get_job_ids(), *self.stages.scheduled_job_registry.get_job_ids(),
                     *self.stages.deferred_job_registry.get_job_ids()}
            for job_id in self.stages.started_job_registry.get_job_ids():
                job = Job.fetch(job_id, connection=self.redis)
                if job.started_at is None or job.started_at.replace(tzinfo=timezone.utc) > started_before:
                    found.add(job_id)
        except RedisError as exc:
            raise QueueUnavailable(f"Redis is unreachable ({redact(str(exc))}): cannot tell which jobs "
                                   "are live") from exc
        return {int(m.group(2)) for job_id in found if (m := _STAGE_JOB.match(job_id))}

    def _enqueue(self, queue, func: str, args: tuple, stage: str, job_id: str | None = None,
                 incident_id: int | None = None, lost: bool = True) -> None:
        """Enqueue; with Redis down, a stage or card refresh is audited and left to the next check's
        reconcile (`lost`), while a check or review the person asked for fails with a clear error."""
        from rq import Callback, Retry
        from rq.exceptions import DuplicateJobError

        retry = Retry(max=self.settings.retries, interval=self.settings.backoff) if self.settings.retries else None
        pinned = self.clock.pinned
        kwargs = {"at": pinned.isoformat()} if pinned is not None and func.startswith("jobs.loop.queue.") else {}
        try:
            queue.enqueue(func, *args, **kwargs, job_id=job_id, unique=job_id is not None, retry=retry,
                          job_timeout=self.settings.timeout(stage), description=f"cairn {stage} {args}",
                          on_failure=Callback(on_job_failure), failure_ttl=7 * 86400)
        except DuplicateJobError:
            log.info("%s already queued or running; not enqueued twice", job_id)
        except RedisError as exc:
            reason = redact(f"{type(exc).__name__}: {exc}")
            log.error("could not enqueue %s %s: %s", func, args, reason)
            if self.store is not None:
                self.store.audit("job.enqueue_failed", incident_id=incident_id,
                                 data={"job": func.rsplit(".", 1)[-1], "stage": stage, "reason": reason})
            if not lost:
                raise QueueUnavailable(f"the job queue is unreachable ({reason}); nothing was queued: "
                                       "try again when Redis is back") from exc


_STAGE_JOB = re.compile(r"^cairn-(attribute|verify|propose)-(\d+)(?:-.+)?$")


def stage_job_id(stage: str, incident_id: int, run: str = "") -> str:
    """One job per (stage, incident, run) at a time: a duplicate enqueue is refused by RQ itself."""
    return f"cairn-{stage}-{incident_id}" + (f"-{run}" if run else "")


# --- RQ entry points (run in a worker's work horse) ------------------------------------------


def stage_job(stage: str, incident_id: int, at: str | None = None) -> None:
    from rq import get_current_job

    job = get_current_job()
    if job is not None:
        # Which process runs it: an operator (or a fault test) can find the work horse.
        job.meta["pid"] = os.getpid()
        job.save_meta()
    with _job_runtime(at) as (rt, jobs):
        perform_stage(rt, jobs, stage, incident_id, may_retry=_retries_left() > 0,
                      holder=job.id if job is not None else None)


def check_job(contract_ids: list[str] | None = None, at: str | None = None) -> None:
    with _job_runtime(at) as (rt, jobs):
        perform_check(rt, jobs, _contracts(rt, contract_ids))


def review_job(action: str, incident_id: int, actor: str, arg: str, reply_to: str | None = None,
               at: str | None = None) -> None:
    with _job_runtime(at) as (rt, jobs):
        perform_review(rt, jobs, action, incident_id, actor, arg, reply_to)


def ingest_job(run_id: int, at: str | None = None) -> None:
    with _job_runtime(at) as (rt, jobs):
        heal_run(rt, jobs, ingest_cloud_run(rt, run_id))


def on_job_failure(job, connection, exc_type, exc, tb) -> None:
    """RQ gave up on a job (out of retries, or its worker died with none left): record it."""
    if job.retries_left:
        return  # RQ retries it; the incident stays where it is
    if job.func_name != "jobs.loop.queue.stage_job":
        return  # a notify or check job has no incident state to repair
    stage, incident_id = job.args
    from jobs.runtime import Runtime

    rt = Runtime(load_config(), _clock(job.kwargs.get("at")))
    try:
        stopped = mark_errored(rt.store, incident_id, stage, exc or RuntimeError("the worker running it died"))
        jobs = RQJobs(rt.config, connection, rt.clock, store=rt.store)
        for changed in dict.fromkeys([incident_id, *stopped]):
            jobs.notify(changed)
    finally:
        rt.close()


@contextmanager
def _job_runtime(at: str | None) -> Iterator[tuple[Any, "RQJobs"]]:
    """A Runtime and the RQ queues for one job, from $CAIRN_CONFIG (set by `cairn worker`)."""
    from rq import get_current_job

    from jobs.runtime import Runtime

    rt = Runtime(load_config(), _clock(at))
    try:
        job = get_current_job()
        yield rt, RQJobs(rt.config, job.connection if job else None, rt.clock, store=rt.store)
    finally:
        rt.close()


def _clock(at: str | None) -> Clock:
    """The clock a job runs on: the pinned instant it carries, else the wall."""
    return Clock(datetime.fromisoformat(at)) if at else Clock()


def _retries_left() -> int:
    from rq import get_current_job

    job = get_current_job()
    return (job.retries_left or 0) if job else 0


def for_runtime(rt, *, background: bool = False) -> Jobs:
    """RQ when REDIS_URL is set, else in-process."""
    if rt.config.env.redis_url:
        return RQJobs(rt.config, clock=rt.clock, store=rt.store)
    return InlineJobs(rt, background=background)


def _contracts(rt, contract_ids: list[str] | None) -> list | None:
    return [rt.contract(c) for c in contract_ids] if contract_ids else None


def _import(path: str) -> Callable[..., Any]:
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)
