"""A worker SIGKILLed mid-verification leaves nothing stuck: real Redis, real RQ workers (`cairn worker`),
real dbt on DuckDB, real git.

One regression is landed on the scenario baseline and checked with `cairn check --at`; once the
verification's sandbox exists, the whole worker (its process group: the worker and its work horse) is
killed with SIGKILL, as a lost machine would be. Nothing RQ can do then: the job stays "started" and the
incident "verifying", its sandbox on disk. The next check reconciles: the lease is gone, so the incident is
resumed at verification, its dead job replaced and its sandbox removed; a fresh worker takes it to a PR.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from redis import Redis
from rq.job import Job

from bot.demo import commit
from examples.generate import add_day
from jobs.core.clock import Clock
from tests.deployment import at
from tests.test_scenarios import CHECK, DAY, PAYPAL_FILTER, Case, deploy_copy, land, production_dbt
from tests.test_slack_e2e import start, stop, wait_for

pytestmark = pytest.mark.slow

REDIS_URL = os.environ.get("CAIRN_TEST_REDIS_URL", "redis://127.0.0.1:6379/10")


def cairn(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture
def shop(scenario_baseline: Path, tmp_path: Path):
    root = deploy_copy(scenario_baseline, tmp_path / "shop")
    path = root / "cairn.yml"
    data = yaml.safe_load(path.read_text())
    data["queue"] = {"retries": 0, "lease": "2s"}  # a dead worker's lease expires within seconds
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    commit(root, "Cairn: fast leases", at(DAY, 8))
    land(root, Case("stuck", (PAYPAL_FILTER,)))
    add_day(root / "warehouse.duckdb", DAY)
    assert production_dbt(root).build().success
    redis = Redis.from_url(REDIS_URL)
    redis.flushdb()
    env = {**os.environ, "REDIS_URL": REDIS_URL, "CAIRN_CONFIG": str(path), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    env.pop("SLACK_BOT_TOKEN", None)
    yield root, env
    redis.flushdb()


def _store(root: Path):
    from jobs.store.store import Store

    return Store.open(f"sqlite:///{root / '.cairn' / 'cairn.db'}")


def test_a_sigkilled_worker_mid_verification_is_resumed_by_the_next_check(shop) -> None:
    root, env = shop
    sandboxes = root / ".cairn" / "sandboxes"
    worker = start(["worker"], env, root.parent / "worker-1.log")
    try:
        first = cairn(env, "check", "--at", CHECK.isoformat())
        assert first.returncode == 0, first.stderr
        leftover = wait_for("a verification sandbox", lambda: next(iter(sorted(sandboxes.glob("incident-*-*"))), None))
        job = Job.fetch(f"cairn-verify-{leftover.name.split('-')[1]}", connection=Redis.from_url(REDIS_URL))
        horse = wait_for("the verify job's pid", lambda: job.get_meta(refresh=True).get("pid"))
        os.kill(horse, signal.SIGKILL)  # the work horse runs in a session of its own: kill it and its worker
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        stop(worker)
    incident_id = int(leftover.name.split("-")[1])
    store = _store(root)
    try:
        assert store.incident(incident_id).status.value == "verifying"
        wait_for("the dead worker's lease to expire", lambda: not store.live_leases(Clock().now()), timeout=30)
    finally:
        store.close()
    # What the killed build left (its sandbox and worktree, unless the kill fell between two builds) ...
    left = sorted(sandboxes.glob("*"))
    time.sleep(2)  # the job RQ still calls started is older than a lease: dead

    second = cairn(env, "check", "--at", CHECK.isoformat())
    assert second.returncode == 0, second.stderr
    assert not any(path.exists() for path in left), "... until the reconcile removes them"
    worker = start(["worker", "--burst"], env, root.parent / "worker-2.log")
    try:
        assert worker.wait(timeout=600) == 0
    finally:
        stop(worker)
        print("--- worker-2.log\n" + (root.parent / "worker-2.log").read_text()[-6000:])
    store = _store(root)
    try:
        incident = store.incident(incident_id)
        events = [e for e in store.audit_events(incident_id)]
        pr = store.pull_request_for(incident_id)
    finally:
        store.close()
    names = [e.name for e in events]
    assert incident.status.value == "pr_opened" and pr is not None and pr.state == "open"
    resumed = [e.data for e in events if e.name == "loop.resumed"]
    assert resumed == [{"stage": "verify", "status": "verifying", "why": "no live job", "resume": 1}]
    for name in ("attribution.finished", "verification.finished", "decision.made"):
        assert names.count(name) == 1, names
    assert list(sandboxes.glob("*")) == [], "no sandbox or worktree is left"
