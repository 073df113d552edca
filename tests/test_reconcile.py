"""Reconcile on a real Redis and RQ, real stores (SQLite and PostgreSQL) and a real git repository.

Incidents are put where a dead worker or a failed enqueue leaves them; each check's reconcile must
resume them at their stage, replace their dead RQ job, stop them with the reason after a bounded
number of resumes, leave alone the ones a live job holds, and remove their orphaned sandboxes.
The whole loop under a SIGKILLed worker is in tests/test_stuck_e2e.py.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus

from bot.commands import Invocation, run_command
from jobs.config import load_config
from jobs.core.clock import Clock
from jobs.core.records import IncidentStatus, Observation
from jobs.loop.queue import RQJobs
from jobs.loop.reconcile import reconcile, survey
from jobs.runtime import Runtime
from jobs.store import switches
from tests.test_propose import base_repo
from tests.test_store import store_url  # noqa: F401 - the SQLite/PostgreSQL store URL fixture

T0 = datetime(2026, 11, 2, tzinfo=timezone.utc)
REDIS_URL = os.environ.get("CAIRN_TEST_REDIS_URL", "redis://127.0.0.1:6379/10")


@pytest.fixture
def redis():
    connection = Redis.from_url(REDIS_URL)
    connection.flushdb()
    yield connection
    connection.flushdb()


def runtime(tmp_path: Path, store_url: str, redis_url: str = REDIS_URL, queue: str = "") -> Runtime:  # noqa: F811
    repo = base_repo(tmp_path)
    (tmp_path / "cairn.yml").write_text(f"repo: {repo}\nproject: {repo}\nstore: {store_url}\n"
                                        f"queue: {{retries: 0, max_resumes: 2{queue}}}\n")
    return Runtime(load_config(tmp_path / "cairn.yml", env={"REDIS_URL": redis_url}), Clock(T0))


@pytest.fixture
def rt(tmp_path: Path, store_url: str, redis):  # noqa: F811
    runtime_ = runtime(tmp_path, store_url)
    yield runtime_
    runtime_.close()


def stuck_at(rt: Runtime, status: IncidentStatus, contract: str = "revenue.net_daily") -> int:
    bad = rt.store.add_observation(Observation(contract, T0, 80.0, T0 - timedelta(days=1), T0, "b" * 40))
    incident = rt.store.open_incident(contract, severity="high", first_bad=bad, last_good=None, value=80.0,
                                      baseline=None, change_pct=-20.0, reason="down 20%")
    return rt.store.update_incident(incident.id, status=status).id


def jobs_of(rt: Runtime) -> RQJobs:
    return RQJobs(rt.config, clock=rt.clock, store=rt.store)


def resumed(rt: Runtime, incident_id: int) -> list[dict]:
    return [e.data for e in rt.store.audit_events(incident_id) if e.name == "loop.resumed"]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when this returns: nothing listens there


def test_an_incident_no_job_works_on_is_resumed_at_its_stage_once(rt: Runtime, redis: Redis) -> None:
    verifying = stuck_at(rt, IncidentStatus.verifying)
    detected = stuck_at(rt, IncidentStatus.detected, "orders.daily_count")
    done = reconcile(rt, jobs_of(rt))
    assert sorted(done.resumed) == sorted([verifying, detected]) and done.errored == ()
    queued = Queue("cairn", connection=redis).get_job_ids()
    assert sorted(queued) == sorted([f"cairn-verify-{verifying}", f"cairn-attribute-{detected}"])
    assert resumed(rt, verifying) == [{"stage": "verify", "status": "verifying", "why": "no live job", "resume": 1}]
    # The next check finds the jobs waiting: nothing is resumed twice.
    assert reconcile(rt, jobs_of(rt)).resumed == ()
    assert len(resumed(rt, verifying)) == 1 and Queue("cairn", connection=redis).count == 2


def test_a_dead_rq_job_is_replaced_by_a_fresh_one(rt: Runtime, redis: Redis) -> None:
    incident_id = stuck_at(rt, IncidentStatus.verifying)
    jobs = jobs_of(rt)
    jobs.stage("verify", incident_id)
    Job.fetch(f"cairn-verify-{incident_id}", connection=redis).cancel()  # canceled: its record blocks the ID
    jobs.stage("verify", incident_id)
    assert Queue("cairn", connection=redis).count == 0, "RQ refuses the same job ID while the dead record stays"
    assert reconcile(rt, jobs).resumed == (incident_id,)
    job = Job.fetch(f"cairn-verify-{incident_id}", connection=redis)
    assert job.get_status() is JobStatus.QUEUED and job.args == ("verify", incident_id)


def test_a_live_lease_or_a_finished_loop_is_left_alone(rt: Runtime, redis: Redis) -> None:
    leased = stuck_at(rt, IncidentStatus.verifying)
    assert rt.store.take_lease(leased, "verify", "another-worker", Clock().now(), timedelta(minutes=1))
    observed = stuck_at(rt, IncidentStatus.verified, "orders.daily_count")
    rt.store.update_incident(observed, details={"decision": {"action": "record_only", "mode": "observe",
                                                             "reasons": ["observe mode records what Cairn would do"]}})
    opened = stuck_at(rt, IncidentStatus.pr_opened, "mrr.level")
    assert reconcile(rt, jobs_of(rt)).resumed == ()
    assert Queue("cairn", connection=redis).count == 0
    assert not resumed(rt, leased) and not resumed(rt, observed) and not resumed(rt, opened)
    # The lease expires (its worker died without releasing it): now it is stuck.
    rt.store.take_lease(leased, "verify", "another-worker", Clock().now() - timedelta(minutes=2), timedelta(minutes=1))
    assert reconcile(rt, jobs_of(rt)).resumed == (leased,)


def test_after_max_resumes_the_incident_is_errored_with_the_reason(rt: Runtime, redis: Redis) -> None:
    incident_id = stuck_at(rt, IncidentStatus.verifying)
    for _ in range(2):  # queue.max_resumes: 2; each time the job is lost again
        assert reconcile(rt, jobs_of(rt)).resumed == (incident_id,)
        Queue("cairn", connection=redis).empty()
    done = reconcile(rt, jobs_of(rt))
    assert done.resumed == () and done.errored == (incident_id,)
    incident = rt.store.incident(incident_id)
    assert incident.status is IncidentStatus.errored
    assert incident.details.error.stage == "verify" and incident.details.error.status_before == "verifying"
    assert "stayed verifying with no job finishing its verify stage after 2 resumes" in incident.details.error.reason
    names = [e.name for e in rt.store.audit_events(incident_id)]
    assert names.count("loop.resumed") == 2 and names.count("stage.failed") == 1
    assert reconcile(rt, jobs_of(rt)).errored == ()  # errored is not in flight


def test_orphaned_sandboxes_and_worktrees_go_the_live_ones_stay(rt: Runtime, redis: Redis) -> None:
    dead = stuck_at(rt, IncidentStatus.verifying)
    live = stuck_at(rt, IncidentStatus.verifying, "orders.daily_count")
    rt.store.take_lease(live, "verify", "a-live-worker", Clock().now(), timedelta(minutes=1))
    root = rt.sandboxes_root
    names = [f"incident-{dead}-a1b2c3", f"cairn-worktree-{dead}-x8y9", f"incident-{live}-d4e5f6",
             "incident-deploy-d3ee5eb-e6913e", "incident-999-0a0b0c"]
    for name in names:
        (root / name).mkdir(parents=True)
    done = reconcile(rt, jobs_of(rt))
    left = sorted(p.name for p in root.iterdir())
    # The dead incident was resumed: its job will rebuild from scratch, so what it left is gone too.
    assert left == sorted([f"incident-{live}-d4e5f6", "incident-deploy-d3ee5eb-e6913e"])
    assert sorted(Path(p).name for p in done.removed) == sorted(
        [f"incident-{dead}-a1b2c3", f"cairn-worktree-{dead}-x8y9", "incident-999-0a0b0c"])


def test_an_enqueue_with_redis_down_is_audited_and_the_next_check_enqueues_it(
        tmp_path: Path, store_url: str, redis: Redis) -> None:  # noqa: F811
    down = runtime(tmp_path, store_url, redis_url=f"redis://127.0.0.1:{closed_port()}/10")
    try:
        incident_id = stuck_at(down, IncidentStatus.detected)
        jobs = jobs_of(down)
        jobs.stage("attribute", incident_id)  # no traceback: the incident stays for the next check
        jobs.notify(incident_id)
        failed = [e for e in down.store.audit_events(incident_id) if e.name == "job.enqueue_failed"]
        assert [(e.data["job"], e.data["stage"]) for e in failed] == [("stage_job", "attribute"), ("notify_incident", "notify")]
        assert "ConnectionError" in failed[0].data["reason"]
        # A reconcile that cannot reach Redis cannot tell what is live: it touches nothing.
        assert reconcile(down, jobs).resumed == () and not resumed(down, incident_id)
        status = run_command(down, jobs, "status", Invocation("cli", True))
        assert "Redis is unreachable" in status and "*Stuck (no live job; the next check resumes them):* unknown" in status
    finally:
        down.close()
    back = Runtime(load_config(tmp_path / "cairn.yml", env={"REDIS_URL": REDIS_URL}), Clock(T0))
    try:
        assert "*Stuck (no live job; the next check resumes them):* 1 (#%d)" % incident_id in run_command(
            back, jobs_of(back), "status", Invocation("cli", True))
        assert reconcile(back, jobs_of(back)).resumed == (incident_id,)
        assert Queue("cairn", connection=redis).get_job_ids() == [f"cairn-attribute-{incident_id}"]
    finally:
        back.close()


def test_status_names_stuck_held_and_errored_incidents(rt: Runtime, redis: Redis) -> None:
    stuck = stuck_at(rt, IncidentStatus.verifying)
    errored = stuck_at(rt, IncidentStatus.errored, "orders.daily_count")
    reply = run_command(rt, jobs_of(rt), "status", Invocation("slack:U1", False))
    assert f"*Stuck (no live job; the next check resumes them):* 1 (#{stuck})" in reply
    assert f"*Errored:* 1 (#{errored})" in reply and "*Held by the kill switch:* 0" in reply
    switches.pull(rt.store, "warehouse migration", "slack:U1")
    found = survey(rt, jobs_of(rt))
    assert [i.id for i in found.held] == [stuck] and found.stuck == ()
    reply = run_command(rt, jobs_of(rt), "status", Invocation("slack:U1", False))
    assert f"*Held by the kill switch:* 1 (#{stuck})" in reply and "*Stuck (no live job; the next check resumes them):* 0" in reply
    assert reconcile(rt, jobs_of(rt)).resumed == () and Queue("cairn", connection=redis).count == 0
