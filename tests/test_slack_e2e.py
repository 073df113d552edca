"""Slack end to end: real Redis, real RQ workers (`cairn worker`), the real Bolt app under gunicorn
(`cairn serve`), and a local server that answers like the Slack Web API (SLACK_API_URL).

One deployment (the scenario baseline with two regressing commits landed and deployed: PayPal
payments fall out of revenue, plan prices are read in mills) is checked once with
`cairn check --at`; detection runs in that process and every later stage is a job on the
workers. Two incidents, two cards: one deploy broke both, so they start as one group, which splits
when each revert brings back only its own; one is approved, the other rejected. The first verification's work horse is killed mid-build: RQ retries the job, which
removes the sandbox its predecessor left and finishes. The tests then read the Slack traffic
and click the card's buttons with signed requests.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.demo import commit
from examples.generate import add_day
from tests.deployment import at
from tests.slack_server import SlackAPI, block_action_body, signed_headers, slash_command_body, view_submission_body
from tests.test_scenarios import CHECK, DAY, PAYPAL_FILTER, Case, Commit, Edit, deploy_copy, land, production_dbt

pytestmark = pytest.mark.slow

CHANNEL, APPROVER, GROUPIE, STRANGER, GROUP = "C0123456789", "U0APPROVER", "U0GROUPIE1", "U0STRANGER", "S0APPROVERS"
SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
TOKEN = "xoxb-cairn-test-token"
REDIS_URL = os.environ.get("CAIRN_TEST_REDIS_URL", "redis://127.0.0.1:6379/0").rsplit("/", 1)[0] + "/14"
REVENUE, MRR = "revenue.net_daily", "mrr.level"
MILLS = Commit("Plan prices: convert mills to dollars", (Edit(
    "models/staging/stg_plans.sql", "{{ cents_to_dollars('monthly_price_cents') }} as monthly_price",
    "cast(monthly_price_cents / 1000 as decimal(18, 2)) as monthly_price"),), (MRR,))


@dataclass
class Stack:
    root: Path
    slack: SlackAPI
    url: str  # the app's /slack/events
    env: dict[str, str]
    worker: subprocess.Popen
    killed_horse: int | None
    leftover_seen: Path | None

    def store(self):
        from jobs.store.store import Store

        return Store.open(f"sqlite:///{self.root / '.cairn' / 'cairn.db'}")

    def post(self, body: str, **headers_kw: Any) -> tuple[int, str]:
        headers = signed_headers(SECRET, body, **headers_kw)
        request = urllib.request.Request(self.url, data=body.encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def incident_id(self, contract: str) -> int:
        store = self.store()
        try:
            return next(i.id for i in store.incidents() if i.contract_id == contract)
        finally:
            store.close()

    def card(self, contract: str = REVENUE) -> dict[str, Any]:
        store = self.store()
        try:
            posted = store.chat_message(self.incident_id(contract), "card")
        finally:
            store.close()
        return self.slack.messages(CHANNEL)[posted.ts]

    def cards(self) -> list[dict[str, Any]]:
        return [m for m in self.slack.messages(CHANNEL).values() if m.get("thread_ts", m["ts"]) == m["ts"]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, condition: Callable[[], Any], timeout: float = 240, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def flush_redis() -> None:
    from redis import Redis

    Redis.from_url(REDIS_URL).flushdb()


def configure(root: Path) -> None:
    """Slack channel and approvers and fast retries, committed: cairn.yml lives in the repository,
    and the local forge's merge checks the branch out again."""
    path = root / "cairn.yml"
    data = yaml.safe_load(path.read_text())
    data["slack"] = {"channel": CHANNEL, "approvers": [APPROVER, GROUP]}
    data["queue"] = {"retries": 2, "backoff": [1, 1]}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    commit(root, "Cairn: alert channel and approvers", at(DAY, 8))


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bot.cli", *args], env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def kill_verification_horse(root: Path) -> tuple[int, Path]:
    """SIGKILL the work horse running the first verification once its sandbox exists."""
    from redis import Redis
    from rq.job import Job

    sandboxes = root / ".cairn" / "sandboxes"
    leftover = wait_for("a verification sandbox", lambda: next(iter(sorted(sandboxes.glob("incident-*-*"))), None))
    incident_id = leftover.name.split("-")[1]
    job = Job.fetch(f"cairn-verify-{incident_id}", connection=Redis.from_url(REDIS_URL))
    pid = wait_for("the verify job's pid", lambda: job.get_meta(refresh=True).get("pid"))
    os.kill(pid, signal.SIGKILL)
    return pid, leftover


@pytest.fixture(scope="module")
def stack(scenario_baseline: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = deploy_copy(scenario_baseline, tmp_path_factory.mktemp("slack-e2e") / "shop")
    configure(root)
    land(root, Case("slack", (PAYPAL_FILTER, MILLS)))
    add_day(root / "warehouse.duckdb", DAY)
    assert production_dbt(root).build().success
    flush_redis()
    logs = root.parent
    with SlackAPI(token=TOKEN, channels=(CHANNEL,), users=(APPROVER, GROUPIE, STRANGER),
                  usergroups={GROUP: [GROUPIE]}) as slack:
        port = free_port()
        env = {**os.environ, "REDIS_URL": REDIS_URL, "SLACK_BOT_TOKEN": TOKEN, "SLACK_SIGNING_SECRET": SECRET,
               "SLACK_API_URL": slack.base_url, "CAIRN_CONFIG": str(root / "cairn.yml"),
               "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
        web = start(["serve", "--host", "127.0.0.1", "--port", str(port), "--threads", "8"], env, logs / "web.log")
        worker = start(["worker"], env, logs / "worker.log")
        try:
            wait_for("the app to listen", lambda: _listening(port), timeout=60)
            check = subprocess.run([sys.executable, "-m", "bot.cli", "check", "--at", CHECK.isoformat()],
                                   env=env, capture_output=True, text=True, timeout=600)
            assert check.returncode == 0, check.stderr
            killed, leftover = kill_verification_horse(root)
            stack = Stack(root, slack, f"http://127.0.0.1:{port}/slack/events", env, worker, killed, leftover)
            wait_for("both PR cards", lambda: _statuses(stack) == {REVENUE: "pr_opened", MRR: "pr_opened"}
                     and _settled(stack), timeout=600)
            yield stack
        finally:
            stop(web)
            stop(worker)
            print("--- web.log\n" + (logs / "web.log").read_text()[-4000:])
            print("--- worker.log\n" + (logs / "worker.log").read_text()[-6000:])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _statuses(stack: Stack) -> dict[str, str]:
    store = stack.store()
    try:
        return {i.contract_id: i.status.value for i in store.incidents()}
    finally:
        store.close()


def _settled(stack: Stack) -> bool:
    """Every queue drained and the chart posted: the last card refresh has run."""
    from redis import Redis
    from rq import Queue

    redis = Redis.from_url(REDIS_URL)
    queues = [Queue("cairn", connection=redis), Queue("cairn-notify", connection=redis)]
    busy = any(q.count or q.started_job_registry.count or q.scheduled_job_registry.count for q in queues)
    return not busy and len(stack.slack.uploads) == 2


def card_updates(stack: Stack, contract: str) -> list[str]:
    """The card's fallback text at its post and each update, in order."""
    card_ts = stack.card(contract)["ts"]
    calls = [c for c in stack.slack.calls if c.method in ("chat.postMessage", "chat.update")
             and (c.params.get("ts") == card_ts or (c.method == "chat.postMessage" and not c.params.get("thread_ts")
                                                    and c.params["text"].split(": ", 1)[-1].startswith(contract)))]
    return [c.params["text"] for c in calls]


def settle(stack: Stack, what: str, condition: Callable[[], Any]) -> None:
    wait_for(what, lambda: condition() and _settled(stack), timeout=120)


# --- the loop on workers --------------------------------------------------------------------


def test_one_card_per_incident_posted_once_and_updated_in_place(stack: Stack) -> None:
    posts = [c for c in stack.slack.calls_to("chat.postMessage") if not c.params.get("thread_ts")]
    assert len(posts) == 2 and {p.params["channel"] for p in posts} == {CHANNEL}
    assert len(stack.cards()) == 2
    order = ["Detected", "Clone running", "Verified revert", "PR opened"]
    for contract in (REVENUE, MRR):
        texts = card_updates(stack, contract)
        firsts = [next((i for i, t in enumerate(texts) if t.startswith(label)), None) for label in order]
        assert None not in firsts and firsts == sorted(firsts), (contract, texts)
        card = stack.card(contract)
        assert card["text"].startswith("PR opened") and contract in card["text"]
        action_ids = [e["action_id"] for b in card["blocks"] if b["type"] == "actions" for e in b["elements"]]
        assert action_ids == ["cairn.approve", "cairn.reject", "cairn.mode", "cairn.kill"]


def test_the_story_is_threaded_under_the_card_with_a_chart(stack: Stack) -> None:
    card_ts = stack.card(REVENUE)["ts"]
    replies = stack.slack.thread(CHANNEL, card_ts)
    texts = [r["text"] for r in replies if r.get("text") and not r.get("files")]
    titles = [t.split(":", 1)[0] for t in texts]
    # Triage is posted when attribution suspects the code, and again when the verified revert proves it.
    assert titles == ["Detected", "Attribution", "Triage", "Group split", "Evidence", "Verified revert", "Triage",
                      "Decision", "PR opened"], texts
    store = stack.store()
    try:
        fix = store.incident(stack.incident_id(REVENUE)).details.verification.fix
    finally:
        store.close()
    verification = next(r for r in replies if fix.clone_id in json.dumps(r.get("blocks", [])))
    assert "dbt build" in json.dumps(verification["blocks"]) and verification["text"].startswith("Verified revert")
    [chart] = [u for u in stack.slack.uploads if u.thread_ts == card_ts]
    assert chart.completed and chart.channel_id == CHANNEL and REVENUE in chart.title
    assert chart.content.startswith(b"\x89PNG\r\n\x1a\n")
    # Each step posted once, whatever refreshes ran.
    keys = [r["text"] for r in replies if r.get("text")]
    assert len(keys) == len(set(keys)), keys


def test_a_killed_worker_leaves_one_card_one_pr_and_no_sandbox(stack: Stack) -> None:
    assert stack.killed_horse is not None and stack.leftover_seen is not None
    assert not stack.leftover_seen.exists(), "the retried verification removed its predecessor's sandbox"
    assert list((stack.root / ".cairn" / "sandboxes").glob("*")) == []
    killed = int(stack.leftover_seen.name.split("-")[1])
    store = stack.store()
    try:
        events = [e.name for e in store.audit_events(killed)]
        assert store.pull_request_for(killed) is not None
        assert sorted(pr.number for pr in map(store.pull_request_for, (1, 2))) == [1, 2]
    finally:
        store.close()
    for name in ("attribution.finished", "verification.finished", "decision.made"):
        assert events.count(name) == 1, events
    assert stack.worker.poll() is None, "the worker survived its horse"
    assert len(stack.cards()) == 2


# --- requests into the app ------------------------------------------------------------------


def test_forged_and_stale_signatures_are_rejected(stack: Stack) -> None:
    body = slash_command_body("status", user_id=APPROVER, channel_id=CHANNEL)
    request = urllib.request.Request(stack.url, data=body.encode(), method="POST",
                                     headers={**signed_headers("not-the-secret", body)})
    with pytest.raises(urllib.error.HTTPError) as forged:
        urllib.request.urlopen(request, timeout=10)
    assert forged.value.code == 401
    status, _ = stack.post(body, timestamp=int(time.time()) - 600)
    assert status == 401


def test_slash_commands_answer_without_a_traceback(stack: Stack) -> None:
    status, reply = stack.post(slash_command_body("status", user_id=STRANGER, channel_id=CHANNEL))
    assert status == 200 and "Mode:" in reply and "Open incidents:* 2" in reply and "RQ, 1 worker" in reply
    status, reply = stack.post(slash_command_body(f"show {_rev(stack)}", user_id=STRANGER, channel_id=CHANNEL))
    assert status == 200 and f"Incident #{_rev(stack)} · {REVENUE}" in json.loads(reply)["text"]
    status, reply = stack.post(slash_command_body("frobnicate", user_id=STRANGER, channel_id=CHANNEL))
    assert "Unknown command" in reply and "`/cairn` commands" in reply
    status, reply = stack.post(slash_command_body("check no.such_contract", user_id=APPROVER, channel_id=CHANNEL))
    assert status == 200 and "no.such_contract" in reply and "Traceback" not in reply
    status, reply = stack.post(slash_command_body("mode observe", user_id=STRANGER, channel_id=CHANNEL))
    assert "for approvers" in reply


def test_a_non_approver_click_is_refused_and_audited(stack: Stack) -> None:
    head = _pr(stack).head_sha
    before = len(stack.slack.ephemerals)
    status, _ = stack.post(block_action_body("cairn.approve", value=f"{_rev(stack)}:{head}", user_id=STRANGER,
                                             channel_id=CHANNEL, message_ts=stack.card()["ts"], action_ts="1.000001"))
    assert status == 200
    wait_for("the refusal", lambda: len(stack.slack.ephemerals) > before, timeout=10)
    assert stack.slack.ephemerals[-1]["user"] == STRANGER and "Only approvers" in stack.slack.ephemerals[-1]["text"]
    assert _pr(stack).state == "open"
    assert "action.refused" in _events(stack)


def test_a_stale_approval_is_refused(stack: Stack) -> None:
    status, _ = stack.post(block_action_body("cairn.approve", value=f"{_rev(stack)}:" + "0" * 40, user_id=APPROVER,
                                             channel_id=CHANNEL, message_ts=stack.card()["ts"], action_ts="2.000001"))
    assert status == 200
    wait_for("the stale notice", lambda: "changed after this card" in (stack.slack.ephemerals or [{}])[-1].get("text", ""),
             timeout=10)
    assert _pr(stack).state == "open" and "approval.stale" in _events(stack)


def test_mode_select_and_kill_switch_change_the_org_and_the_card(stack: Stack) -> None:
    body = block_action_body("cairn.mode", selected_option={"value": "observe", "text": {"type": "plain_text",
                             "text": "observe"}}, user_id=GROUPIE, channel_id=CHANNEL, message_ts=stack.card()["ts"],
                             action_ts="3.000001")
    assert stack.post(body)[0] == 200
    settle(stack, "mode on the card", lambda: "observe" in json.dumps(stack.card()["blocks"]))
    assert stack.post(block_action_body("cairn.kill", value=str(_rev(stack)), user_id=APPROVER, channel_id=CHANNEL,
                                        message_ts=stack.card()["ts"], action_ts="4.000001"))[0] == 200
    settle(stack, "kill switch on the card", lambda: "cairn.unkill" in json.dumps(stack.card()["blocks"]))
    store = stack.store()
    try:
        assert store.get_state("kill_switch")["by"] == f"slack:{APPROVER}"
    finally:
        store.close()
    # While the switch is on, an approval is refused by the job before it merges anything.
    head = _pr(stack).head_sha
    stack.post(block_action_body("cairn.approve", value=f"{_rev(stack)}:{head}", user_id=APPROVER,
                                 channel_id=CHANNEL, message_ts=stack.card()["ts"], action_ts="5.000001"))
    wait_for("the refused approval", lambda: "approval.refused" in _events(stack), timeout=60)
    wait_for("the refusal told", lambda: "kill switch is on" in stack.slack.ephemerals[-1]["text"], timeout=30)
    assert stack.slack.ephemerals[-1]["user"] == APPROVER and _pr(stack).state == "open"
    status, reply = stack.post(slash_command_body("unkill", user_id=APPROVER, channel_id=CHANNEL))
    assert "released" in reply
    status, reply = stack.post(slash_command_body("mode assisted", user_id=APPROVER, channel_id=CHANNEL))
    assert "assisted" in reply
    names = [e.name for e in _all_events(stack)]
    assert {"mode.changed", "kill_switch.pulled", "kill_switch.released"} <= set(names)


def test_approve_merges_at_the_shown_head_once(stack: Stack) -> None:
    head = _pr(stack).head_sha
    requested = _events(stack).count("approval.requested")
    stack.slack.rate_limit("chat.update", times=1, retry_after=1)  # the merged card's update is throttled once
    body = block_action_body("cairn.approve", value=f"{_rev(stack)}:{head}", user_id=APPROVER,
                             channel_id=CHANNEL, message_ts=stack.card()["ts"], action_ts="6.000001")
    assert stack.post(body)[0] == 200
    assert stack.post(body)[0] == 200  # the same click delivered twice
    assert stack.post(body, retry_num=1)[0] == 200  # and Slack's retry of it
    settle(stack, "the merged card and its thread step",
           lambda: stack.card()["text"].startswith("Merged")
           and any(r["text"].startswith("Merged") for r in stack.slack.thread(CHANNEL, stack.card()["ts"])))
    throttled = [c for c in stack.slack.calls_to("chat.update")][-3:]
    assert any(c.params.get("text", "").startswith("Merged") for c in throttled)
    pr = _pr(stack)
    store = stack.store()
    try:
        assert pr.state == "merged" and store.pull_request_row(_rev(stack))["merged_by"] == f"slack:{APPROVER}"
    finally:
        store.close()
    events = _events(stack)
    assert events.count("approval.requested") == requested + 1 and events.count("pr.merged") == 1
    assert not any(e["action_id"] == "cairn.approve" for b in stack.card()["blocks"] if b["type"] == "actions"
                   for e in b["elements"])


def test_reject_asks_why_then_closes_the_pr_and_keeps_the_reason(stack: Stack) -> None:
    mrr = stack.incident_id(MRR)
    card = stack.card(MRR)
    assert stack.post(block_action_body("cairn.reject", value=str(mrr), user_id=GROUPIE, channel_id=CHANNEL,
                                        message_ts=card["ts"], action_ts="7.000001", trigger_id="trigger-7"))[0] == 200
    [view] = wait_for("the reason modal", lambda: stack.slack.views, timeout=10)
    assert view["callback_id"] == "cairn.reject_modal" and view["trigger_id"] == "trigger-7"
    metadata = view["private_metadata"]
    assert metadata == f"{mrr}:{CHANNEL}"
    # A stranger's forged submission is refused and audited; the approver's goes through.
    forged = view_submission_body("cairn.reject_modal", private_metadata=metadata,
                                  values={"reject_reason": {"reason": "not the cause"}}, user_id=STRANGER)
    assert stack.post(forged)[0] == 200
    body = view_submission_body("cairn.reject_modal", private_metadata=metadata,
                                values={"reject_reason": {"reason": "prices really are in mills now"}}, user_id=GROUPIE)
    assert stack.post(body)[0] == 200
    settle(stack, "the rejected card", lambda: stack.card(MRR)["text"].startswith("Rejected"))
    store = stack.store()
    try:
        incident = store.incident(mrr)
        assert incident.status.value == "rejected" and store.pull_request_for(mrr).state == "closed"
        assert incident.details.rejection.reason == "prices really are in mills now"
        assert incident.details.rejection.by == f"slack:{GROUPIE}"
        assert incident.details.rejection.blamed_sha
        names = [e.name for e in store.audit_events(mrr)]
    finally:
        store.close()
    assert names.count("incident.rejected") == 1 and "action.refused" in names
    assert not [b for b in stack.card(MRR)["blocks"] if b["type"] == "actions"]
    assert any(r["text"].startswith("Rejected") for r in stack.slack.thread(CHANNEL, card["ts"]))


def _rev(stack: Stack) -> int:
    return stack.incident_id(REVENUE)


def _pr(stack: Stack):
    store = stack.store()
    try:
        return store.pull_request_for(_rev(stack))
    finally:
        store.close()


def _events(stack: Stack) -> list[str]:
    store = stack.store()
    try:
        return [e.name for e in store.audit_events(_rev(stack))]
    finally:
        store.close()


def _all_events(stack: Stack):
    store = stack.store()
    try:
        return store.audit_events()
    finally:
        store.close()
