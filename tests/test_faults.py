"""Fault injection: the loop under the failures production sees, each ending in the same invariants.

Every test lands one regression on the scenario baseline (PayPal payments fall out of revenue), checks it
with `cairn check --at` and runs the loop on real `cairn worker` processes over a Redis of the test's own
(a private `redis-server`), with the card going to a local server that answers like Slack. The fault is
injected in what Cairn talks to — its worker process, Redis, PostgreSQL, Slack, GitHub, the disk — never in
Cairn's code. Whatever happened, the test ends with `healed`: one card, at most one PR, no sandbox or
worktree left, the incident at a terminal state (or resumed to one by the next worker start), and the audit
trail whole and in order. The figures in README.md's "Reliability" section are what these tests print.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.demo import commit
from examples.generate import add_day
from tests.deployment import at
from tests.slack_server import SlackAPI
from tests.test_scenarios import CHECK, DAY, PAYPAL_FILTER, Case, deploy_copy, land, production_dbt
from tests.test_slack_e2e import _listening, free_port, start, stop, wait_for

pytestmark = pytest.mark.slow

CHANNEL, TOKEN = "C0FAULTS01", "xoxb-cairn-faults-token"
REVENUE = "revenue.net_daily"
# The loop's audit trail for a verified revert that became a PR, in order; each event exactly once.
TRAIL = ("incident.opened", "attribution.started", "attribution.finished", "verification.attempt",
         "verification.finished", "decision.made")


# --- the processes a test starts --------------------------------------------------------------


class PrivateRedis:
    """A redis-server of the test's own, without persistence: a restart loses everything, as a fresh node does."""

    def __init__(self, directory: Path):
        self.port = free_port()
        self.directory = directory
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.directory)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for("redis to listen", lambda: _listening(self.port), timeout=20)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def client(self):
        from redis import Redis

        return Redis.from_url(self.url)


# --- one deployment, one regression ---------------------------------------------------------


@dataclass
class Stack:
    root: Path
    env: dict[str, str]
    redis: PrivateRedis
    slack: SlackAPI
    logs: list[Path] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def sandboxes(self) -> Path:
        return self.root / ".cairn" / "sandboxes"

    def store(self):
        from jobs.store.store import Store

        return Store.open(self.env.get("CAIRN_DATABASE_URL") or f"sqlite:///{self.root / '.cairn' / 'cairn.db'}")

    def read(self, what: Callable[[Any], Any]) -> Any:
        store = self.store()
        try:
            return what(store)
        finally:
            store.close()

    def incident(self):
        return self.read(lambda s: next((i for i in s.incidents() if i.contract_id == REVENUE), None))

    def status(self) -> str | None:
        incident = self.incident()
        return incident.status.value if incident else None

    def cairn(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bot.cli", *args], env=env or self.env, capture_output=True,
                              text=True, timeout=600)

    def check(self) -> subprocess.CompletedProcess:
        done = self.cairn("check", "--at", CHECK.isoformat())
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    def worker(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log = self.root.parent / f"worker-{len(self.logs) + 1}.log"
        self.logs.append(log)
        proc = start(["worker", *args], env or self.env, log)
        self.procs.append(proc)
        return proc

    def job_pid(self, stage: str, incident_id: int) -> int | None:
        """The work horse's PID once the stage's job runs (jobs.loop.queue.stage_job records it)."""
        from rq.exceptions import NoSuchJobError
        from rq.job import Job

        try:
            return Job.fetch(f"cairn-{stage}-{incident_id}", connection=self.redis.client()).get_meta().get("pid")
        except NoSuchJobError:
            return None

    def settled(self) -> bool:
        """No job queued, scheduled for a retry, or running, twice half a second apart: a job a worker is
        dequeuing sits in neither the queue nor the started registry for a moment."""
        from rq import Queue

        redis = self.redis.client()
        queues = [Queue("cairn", connection=redis), Queue("cairn-notify", connection=redis)]

        def idle() -> bool:
            return not any(q.count or q.started_job_registry.count or q.scheduled_job_registry.count for q in queues)

        return idle() and (time.sleep(0.5) or idle())


def configure(root: Path, **extra: Any) -> None:
    path = root / "cairn.yml"
    data = yaml.safe_load(path.read_text())
    data["slack"] = {"channel": CHANNEL}
    # Retries as in production, with short backoffs; a dead worker's lease expires within seconds.
    data["queue"] = {"retries": 2, "backoff": [1, 2], "lease": "2s"}
    data.update(extra)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    commit(root, "Cairn: alert channel, fast leases", at(DAY, 8))


def deploy(baseline: Path, root: Path, database_url: str | None = None, **settings: Any) -> Path:
    """The baseline configured, the regression landed, the day's data arrived and production rebuilt."""
    deploy_copy(baseline, root)
    configure(root, **settings)
    if database_url:
        rebase_store(root, database_url)
    land(root, Case("faults", (PAYPAL_FILTER,)))
    add_day(root / "warehouse.duckdb", DAY)
    assert production_dbt(root).build().success
    return root


@pytest.fixture(scope="module")
def landed(scenario_baseline: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One deployment built once, copied by every test that configures nothing of its own (two cores are shared)."""
    return deploy(scenario_baseline, tmp_path_factory.mktemp("faults-landed") / "shop")


@pytest.fixture
def make_stack(scenario_baseline: Path, landed: Path, tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    made: list[Stack] = []
    with SlackAPI(token=TOKEN, channels=(CHANNEL,)) as slack:
        def make(env: dict[str, str] | None = None, *, redis: bool = True, **settings: Any) -> Stack:
            database_url = (env or {}).get("CAIRN_DATABASE_URL")
            if settings or database_url:
                root = deploy(scenario_baseline, tmp_path / "shop", database_url, **settings)
            else:
                root = deploy_copy(landed, tmp_path / "shop")
            queue = PrivateRedis(tmp_path)
            if redis:
                queue.start()
            full = {**os.environ, "REDIS_URL": queue.url, "SLACK_BOT_TOKEN": TOKEN, "SLACK_API_URL": slack.base_url,
                    "CAIRN_CONFIG": str(root / "cairn.yml"), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false", **(env or {})}
            unsets = ("GITHUB_TOKEN", "CAIRN_DATABASE_URL", "ANTHROPIC_API_KEY", *(() if redis else ("REDIS_URL",)))
            for unset in unsets:
                if unset not in (env or {}):
                    full.pop(unset, None)
            stack = Stack(root, full, queue, slack)
            made.append(stack)
            return stack

        yield make
    for stack in made:
        for proc in stack.procs:
            stop(proc)
        stack.redis.kill()
        for log in stack.logs:
            print(f"--- {log.name}\n" + log.read_text()[-4000:])


def run_until(stack: Stack, stage: str) -> tuple[subprocess.Popen, int, int]:
    """A worker, the check, and the moment the stage's job starts: the worker, the incident, the work horse."""
    worker = stack.worker()
    stack.check()
    incident_id = stack.incident().id
    horse = wait_for(f"the {stage} job's work horse", lambda: stack.job_pid(stage, incident_id), every=0.05)
    return worker, incident_id, horse


def rebase_store(root: Path, url: str) -> None:
    """The baseline's 28 backfilled days and its quiet morning check, in the store at `url` instead."""
    from jobs.config import load_config
    from jobs.core.clock import Clock
    from jobs.detect.backfill import backfill
    from jobs.detect.check import check
    from jobs.runtime import Runtime
    from tests.conftest import release_duckdb
    from tests.test_scenarios import MORNING

    rt = Runtime(load_config(root / "cairn.yml", env={"CAIRN_DATABASE_URL": url}), Clock(MORNING))
    try:
        backfill(rt, MORNING, 28)
        check(rt)
    finally:
        rt.close()
        release_duckdb()


def kill_worker(stack: Stack, worker: subprocess.Popen, horse: int) -> None:
    """A lost machine: the work horse (a session of its own) and its worker, SIGKILLed."""
    os.kill(horse, signal.SIGKILL)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(timeout=10)


def finish(stack: Stack, *, timeout: float = 600) -> float:
    """A fresh `cairn worker --burst` (it reconciles first) runs until the queues are empty; its seconds."""
    started = time.monotonic()
    worker = stack.worker("--burst")
    assert worker.wait(timeout=timeout) == 0, stack.logs[-1].read_text()[-4000:]
    return time.monotonic() - started


# --- the invariants -------------------------------------------------------------------------


def healed(stack: Stack, status: str = "pr_opened") -> list:
    """One card, at most one PR, nothing left on disk, the incident where it should end, the trail in order.
    The incident's audit events."""
    incident = stack.incident()
    assert incident is not None and incident.status.value == status, incident and incident.details.error
    cards = [m for m in stack.slack.messages(CHANNEL).values() if m.get("thread_ts", m["ts"]) == m["ts"]]
    assert len(cards) == 1, [c["text"] for c in cards]
    posted = stack.read(lambda s: s.chat_message(incident.id, "card"))
    assert posted is not None and posted.ts == cards[0]["ts"], "the store knows the card it updates"
    assert cards[0]["text"].startswith({"pr_opened": "PR opened", "errored": "Errored"}.get(status, "")), cards[0]
    prs = [p for p in stack.read(lambda s: [s.pull_request_for(i.id) for i in s.incidents()]) if p is not None]
    assert len(prs) <= 1 and (status != "pr_opened" or len(prs) == 1)
    branches = stack.root and subprocess.run(["git", "-C", str(stack.root), "branch", "--list", "cairn/*"],
                                             capture_output=True, text=True).stdout.split()
    assert len(branches) <= 1, branches
    assert list(stack.sandboxes.glob("*")) == [], "no sandbox or worktree is left"
    worktrees = subprocess.run(["git", "-C", str(stack.root), "worktree", "list", "--porcelain"],
                               capture_output=True, text=True).stdout
    assert worktrees.count("worktree ") == 1, worktrees
    events = stack.read(lambda s: s.audit_events(incident.id))
    names = [e.name for e in events]
    expected = TRAIL if status == "pr_opened" else TRAIL[:1]
    for name in expected:
        assert names.count(name) == 1, (name, names)
    assert [n for n in names if n in expected] == list(expected), names
    times = [e.at for e in events]
    assert times == sorted(times), "the trail is in the order it happened"
    return events


def resumed(stack: Stack, stage: str, status: str) -> tuple[float, list]:
    """The next worker start resumes the incident once, at `stage`, and takes it to its PR: its seconds, the trail."""
    seconds = finish(stack)
    events = healed(stack)
    assert [e.data for e in events if e.name == "loop.resumed"] == [
        {"stage": stage, "status": status, "why": "no live job", "resume": 1}]
    return seconds, events


# --- SIGKILL of the worker at every stage boundary ------------------------------------------


@pytest.mark.parametrize("stage", ["attribute", "verify", "propose"])
def test_a_worker_sigkilled_as_a_stage_starts_is_resumed_by_the_next_worker(make_stack, stage: str) -> None:
    stack = make_stack()
    worker, _, horse = run_until(stack, stage)
    kill_worker(stack, worker, horse)
    killed_at = time.monotonic()
    status = stack.status()
    assert status in {"attribute": ("detected", "attributing"), "verify": ("verifying",),
                      "propose": ("verified",)}[stage], status
    # A dead worker's job stays "started" in RQ; its lease is what says no one works on it any more.
    from jobs.core.clock import Clock

    wait_for("the dead worker's lease to expire", lambda: not stack.read(lambda s: s.live_leases(Clock().now())),
             timeout=30)
    time.sleep(2)  # the started job is older than a lease: dead
    seconds, _ = resumed(stack, stage, status)
    print(f"FIGURE sigkill-{stage}: recovered {time.monotonic() - killed_at:.1f}s after the kill "
          f"(burst worker {seconds:.1f}s)")


# --- Redis restarted mid-job ----------------------------------------------------------------


def test_a_redis_restart_mid_verification_leaves_the_incident_to_the_next_worker(make_stack) -> None:
    stack = make_stack()
    worker, incident_id, _ = run_until(stack, "verify")
    stack.redis.kill()  # SIGKILL, no persistence: every queue, registry and job record is gone
    down_at = time.monotonic()
    # The verification goes on without Redis; its card refresh and next stage cannot be enqueued: audited.
    failed = wait_for("the failed enqueues", lambda: [e.data for e in stack.read(lambda s: s.audit_events(incident_id))
                                                      if e.name == "job.enqueue_failed"], timeout=300, every=0.5)
    assert stack.status() == "verified"
    stack.redis.start()  # the same port, empty
    down = time.monotonic() - down_at
    # The worker lost its connection and stopped, saying why; a supervisor starts it again.
    assert worker.wait(timeout=60) == 1
    assert "Redis became unreachable" in stack.logs[0].read_text()
    seconds, _ = resumed(stack, "propose", "verified")
    assert {f["job"] for f in failed} == {"stage_job", "notify_incident"}  # the next stage and the card refresh
    assert all("ConnectionError" in f["reason"] for f in failed)
    print(f"FIGURE redis-restart: Redis down {down:.1f}s, {len(failed)} enqueues audited as failed, "
          f"the old worker stopped (exit 1), resumed and finished by the next worker in {seconds:.1f}s")


# --- Slack answering 429, 5xx, and too late -------------------------------------------------


def test_slack_429_5xx_and_a_timeout_still_leave_one_card_shown_current(make_stack) -> None:
    stack = make_stack()
    slack = stack.slack
    slack.rate_limit("chat.postMessage", times=1, retry_after=1)  # the card's post: slack_sdk waits, retries
    slack.server_error("chat.update", times=3)  # the first card update: slack_sdk retries twice, then RQ
    slack.stall("chat.update", seconds=32)  # done, answered after slack_sdk's 30 s timeout: RQ retries
    started = time.monotonic()
    stack.worker()
    stack.check()
    wait_for("the PR card", lambda: stack.status() == "pr_opened" and stack.settled() and slack.uploads
             and slack.messages(CHANNEL)[stack.read(lambda s: s.chat_message(stack.incident().id, "card")).ts]
             ["text"].startswith("PR opened"), timeout=400, every=0.5)
    seconds = time.monotonic() - started
    healed(stack)
    posts = [c for c in slack.calls_to("chat.postMessage") if not c.params.get("thread_ts")]
    assert len(posts) == 2, "the 429 and its retry"
    updates = slack.calls_to("chat.update")
    assert len(updates) >= 5, "three 503s, the stalled one, and those that landed"
    card_ts = stack.read(lambda s: s.chat_message(stack.incident().id, "card")).ts
    replies = [m["text"] for m in slack.thread(CHANNEL, card_ts) if m.get("text") and not m.get("files")]
    assert replies[0].startswith("Detected") and replies[-1].startswith("PR opened"), replies
    assert len(replies) == len(set(replies)), "each step threaded once"
    print(f"FIGURE slack: card posted once after 1 x 429; {len(updates)} chat.update calls for 3 x 503 and "
          f"1 stall of 32 s; PR card shown {seconds:.1f}s after the check started")


# --- GitHub answering 429, 5xx, and too late ------------------------------------------------


def test_github_429_5xx_and_timeouts_still_open_exactly_one_pr(make_stack) -> None:
    from jobs.project.git import Git
    from tests.github_server import FakeGitHub
    from tests.test_forge import seed_from

    with FakeGitHub() as github:
        stack = make_stack(env={"GITHUB_TOKEN": "ghp_faultsfaultsfaults"},
                           forge={"github": {"repo": "acme/shop", "base_url": github.base_url}})
        seed_from(github, Git(stack.root))
        repo = "/repos/acme/shop"
        github.fail("POST", f"{repo}/git/blobs", 429, "You have exceeded a secondary rate limit")
        for _ in range(11):  # more 503s than PyGithub retries at once: the stage fails and RQ retries it
            github.fail("GET", f"{repo}/git/commits/\\w+", 503, "Service Unavailable")
        github.lose_answer("POST", f"{repo}/git/refs", status=200, stall=16)  # the branch made; PyGithub times out
        github.lose_answer("POST", f"{repo}/pulls", status=502)  # the PR opened; the gateway lost the answer
        started = time.monotonic()
        stack.worker()
        stack.check()
        wait_for("the PR card", lambda: stack.status() in ("pr_opened", "errored") and stack.settled(),
                 timeout=400, every=0.5)
        seconds = time.monotonic() - started
        healed(stack)
        assert len(github.pulls) == 1 and github.pulls[1]["state"] == "open"
        assert github.pulls[1]["labels"], "labelled once opened"
        creates = github.calls("POST", f"{repo}/pulls")
        assert len(creates) == 2, "the lost answer's retry is told the PR exists, and finds it"
        assert len(github.calls("POST", f"{repo}/git/refs")) == 2
        assert len(github.calls("POST", f"{repo}/git/blobs")) == 2, "the 429 and PyGithub's retry after Retry-After"
        reads = github.calls("GET", f"{repo}/git/commits/\\w+")
        assert len(reads) == 12, "11 x 503 (PyGithub's first try and its 10 retries), then the queue's retry"
        assert "failed transiently, RQ retries it" in "".join(log.read_text() for log in stack.logs)
        assert stack.read(lambda s: s.pull_request_for(stack.incident().id)).number == 1
        print(f"FIGURE github: {len(github.requests)} requests for 1 PR through 1 x 429, 11 x 503, a 16 s stall "
              f"and a lost 502; PR card {seconds:.1f}s after the check started")


# --- a full disk under the sandboxes --------------------------------------------------------


@pytest.fixture
def small_disk() -> Iterator[Callable[[Path, str], None]]:
    """Mount a tmpfs of a given size over a directory (we run as root): writes past it fail with ENOSPC."""
    mounted: list[Path] = []

    def mount(where: Path, size: str) -> None:
        where.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(where)

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_under_the_sandboxes_ends_the_incident_errored_with_the_reason(make_stack, small_disk) -> None:
    stack = make_stack()
    worker, incident_id, _ = run_until(stack, "attribute")
    # Detection's own deploy check has built and removed its sandbox; the revert's will not fit.
    small_disk(stack.sandboxes, "256k")
    wait_for("the verification's end", lambda: stack.status() not in ("detected", "attributing", "verifying")
             and stack.settled(), timeout=400, every=0.5)
    events = healed(stack, "errored")
    [failed] = [e.data for e in events if e.name == "stage.failed"]
    assert failed["stage"] == "verify" and "No space left on device" in failed["reason"], failed
    assert stack.incident().details.error.error_id == failed["error_id"]
    card = stack.slack.messages(CHANNEL)[stack.read(lambda s: s.chat_message(incident_id, "card")).ts]
    assert failed["error_id"] in str(card["blocks"]), "the card shows the error ID"
    print(f"FIGURE full-disk: verify failed with {failed['reason'][:80]!r}; error {failed['error_id']}")


# --- PostgreSQL restarted mid-check ---------------------------------------------------------


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own, run as the postgres user in a temporary directory."""

    def __init__(self, directory: Path):
        self.directory, self.port = directory, free_port()
        self.bin = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1] if Path("/usr/lib/postgresql").is_dir() \
            else None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def pg_ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(["runuser", "-u", "postgres", "--", str(self.bin / "pg_ctl"), "-D", str(self.directory / "data"),
                        "-o", options, "-l", str(self.directory / "log"), "-w", *args], check=True,
                       capture_output=True)

    def init(self) -> None:
        shutil.chown(self.directory, "postgres")
        subprocess.run(["runuser", "-u", "postgres", "--", str(self.bin / "initdb"), "-D", str(self.directory / "data"),
                        "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"], check=True, capture_output=True)
        self.pg_ctl("start")


@pytest.fixture
def postgres() -> Iterator[PrivatePostgres]:
    # Not under pytest's tmp_path: the postgres user cannot enter root's private pytest directory.
    server = PrivatePostgres(Path(tempfile.mkdtemp(prefix="cairn-faults-pg-")))
    try:
        if server.bin is None or shutil.which("runuser") is None:
            pytest.skip("no PostgreSQL server binaries here")
        server.init()
        yield server
        server.pg_ctl("-m", "immediate", "stop")
    finally:
        shutil.rmtree(server.directory, ignore_errors=True)


def test_a_postgresql_restart_mid_check_does_not_lose_the_incident(make_stack, postgres) -> None:
    stack = make_stack(env={"CAIRN_DATABASE_URL": postgres.url}, redis=False)  # the loop runs in the check
    check = subprocess.Popen([sys.executable, "-m", "bot.cli", "check", "--at", CHECK.isoformat()], env=stack.env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Detection's deploy check builds the deploy on a clone; meanwhile the store's pooled connections sit idle.
    wait_for("the deploy check's sandbox", lambda: list(stack.sandboxes.glob("incident-deploy-*")), timeout=300)
    took = [restart(postgres)]  # every connection the check holds is closed under it
    # And again while the revert builds: the stage's lease heartbeat writes to the store every third of a lease.
    wait_for("the verification's sandbox", lambda: list(stack.sandboxes.glob("incident-[0-9]*")), timeout=300,
             every=0.05)
    took.append(restart(postgres))
    output, _ = check.communicate(timeout=600)
    print(output[-3000:])
    events = healed(stack)
    assert check.returncode == 0, output[-2000:]
    print(f"FIGURE postgres-restart: restarted in {took[0]:.1f}s during detection's deploy check and "
          f"{took[1]:.1f}s mid-verification; check exit {check.returncode}, {len(events)} audit events")


def restart(postgres: PrivatePostgres) -> float:
    started = time.monotonic()
    postgres.pg_ctl("-m", "fast", "restart")
    return time.monotonic() - started
