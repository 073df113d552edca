"""Slack end to end: real Redis, real RQ workers (`cairn worker`), the real Bolt app under gunicorn
(`cairn serve`), and a local server that answers like the Slack Web API (SLACK_API_URL).

One deployment (the scenario baseline with a regressing commit landed and deployed) is checked
once with `cairn check --at`; detection runs in that process and every later stage is a job on
the workers. The first verification's work horse is killed mid-build: RQ retries the job, which
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
from tests.slack_server import SlackAPI, block_action_body, signed_headers, slash_command_body, view_submission_body
from tests.deployment import at
from tests.test_scenarios import CHECK, DAY, PAYPAL_FILTER, Case, deploy_copy, land, production_dbt

pytestmark = pytest.mark.slow

CHANNEL, APPROVER, GROUPIE, STRANGER, GROUP = "C0123456789", "U0APPROVER", "U0GROUPIE1", "U0STRANGER", "S0APPROVERS"
SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
TOKEN = "xoxb-cairn-test-token"
REDIS_URL = os.environ.get("CAIRN_TEST_REDIS_URL", "redis://127.0.0.1:6379/0").rsplit("/", 1)[0] + "/14"
REVENUE = "revenue.net_daily"


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
        from jobs.store import Store

        return Store.open(f"sqlite:///{self.root / '.cairn' / 'cairn.db'}")

    def post(self, body: str, **headers_kw: Any) -> tuple[int, str]:
        headers = signed_headers(SECRET, body, **headers_kw)
        request = urllib.request.Request(self.url, data=body.encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def card(self) -> dict[str, Any]:
        cards = [m for m in self.slack.messages(CHANNEL).values() if not m.get("thread_ts") or m["thread_ts"] == m["ts"]]
        assert len(cards) == 1, cards
        return cards[0]


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
    job = Job.fetch("cairn-verify-1", connection=Redis.from_url(REDIS_URL))
    pid = wait_for("the verify job's pid", lambda: job.get_meta(refresh=True).get("pid"))
    os.kill(pid, signal.SIGKILL)
    return pid, leftover


@pytest.fixture(scope="module")
def stack(scenario_baseline: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = deploy_copy(scenario_baseline, tmp_path_factory.mktemp("slack-e2e") / "shop")
    configure(root)
    land(root, Case("slack", (PAYPAL_FILTER,)))
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
            wait_for("the PR card", lambda: _status(stack) == "pr_opened" and _settled(stack), timeout=400)
            yield stack
        finally:
            stop(web)
            stop(worker)
            print("--- web.log\n" + (logs / "web.log").read_text()[-4000:])
            print("--- worker.log\n" + (logs / "worker.log").read_text()[-6000:])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _status(stack: Stack) -> str | None:
    store = stack.store()
    try:
        found = [i for i in store.incidents() if i.contract_id == REVENUE]
        return found[0].status.value if found else None
    finally:
        store.close()


def _settled(stack: Stack) -> bool:
    """Every queue drained and the chart posted: the last card refresh has run."""
    from redis import Redis
    from rq import Queue

    redis = Redis.from_url(REDIS_URL)
    queues = [Queue("cairn", connection=redis), Queue("cairn-notify", connection=redis)]
    busy = any(q.count or q.started_job_registry.count or q.scheduled_job_registry.count for q in queues)
    return not busy and bool(stack.slack.uploads)


def card_updates(stack: Stack) -> list[str]:
    """The card's fallback text at its post and each update, in order."""
    posts = [c for c in stack.slack.calls_to("chat.postMessage") if not c.params.get("thread_ts")]
    card_ts = stack.card()["ts"]
    updates = [c for c in stack.slack.calls_to("chat.update") if c.params.get("ts") == card_ts]
    return [c.params["text"] for c in posts + updates]


def settle(stack: Stack, what: str, condition: Callable[[], Any]) -> None:
    wait_for(what, lambda: condition() and _settled(stack), timeout=120)


# --- the loop on workers --------------------------------------------------------------------


def test_one_card_posted_and_updated_in_place_through_the_loop(stack: Stack) -> None:
    posts = [c for c in stack.slack.calls_to("chat.postMessage") if not c.params.get("thread_ts")]
    assert len(posts) == 1 and posts[0].params["channel"] == CHANNEL
    texts = card_updates(stack)
    order = ["Detected", "Clone running", "Verified revert", "PR opened"]
    seen = [label for label in order if any(t.startswith(label) for t in texts)]
    assert seen == order, texts
    firsts = [next(i for i, t in enumerate(texts) if t.startswith(label)) for label in order]
    assert firsts == sorted(firsts), texts
    card = stack.card()
    assert card["text"].startswith("PR opened") and REVENUE in card["text"]
    action_ids = [e["action_id"] for b in card["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert action_ids == ["cairn.approve", "cairn.reject", "cairn.mode", "cairn.kill"]


def test_the_story_is_threaded_under_the_card_with_a_chart(stack: Stack) -> None:
    card_ts = stack.card()["ts"]
    replies = stack.slack.thread(CHANNEL, card_ts)
    texts = [r["text"] for r in replies if r.get("text") and not r.get("files")]
    titles = [t.split(":", 1)[0] for t in texts]
    assert titles == ["Detected", "Attribution", "Evidence", "Verified revert", "Decision", "PR opened"], texts
    store = stack.store()
    try:
        incident = next(i for i in store.incidents() if i.contract_id == REVENUE)
        fix = incident.details["verification"]["fix"]
    finally:
        store.close()
    verification = next(r for r in replies if fix["clone_id"] in json.dumps(r.get("blocks", [])))
    assert "dbt build" in json.dumps(verification["blocks"]) and verification["text"].startswith("Verified revert")
    [chart] = stack.slack.uploads
    assert chart.completed and chart.thread_ts == card_ts and chart.channel_id == CHANNEL
    assert chart.content.startswith(b"\x89PNG\r\n\x1a\n")
    # Each step posted once, whatever refreshes ran.
    keys = [r["text"] for r in replies if r.get("text")]
    assert len(keys) == len(set(keys)), keys


def test_a_killed_worker_leaves_one_card_one_pr_and_no_sandbox(stack: Stack) -> None:
    assert stack.killed_horse is not None and stack.leftover_seen is not None
    assert not stack.leftover_seen.exists(), "the retried verification removed its predecessor's sandbox"
    assert list((stack.root / ".cairn" / "sandboxes").glob("*")) == []
    store = stack.store()
    try:
        incident = next(i for i in store.incidents() if i.contract_id == REVENUE)
        events = [e.name for e in store.audit_events(incident.id)]
        assert store.pull_request_for(incident.id).number == 1
    finally:
        store.close()
    assert events.count("decision.made") == 1 and events.count("verification.finished") == 1, events
    assert events.count("attribution.finished") == 1, events
    assert stack.worker.poll() is None, "the worker survived its horse"
    assert [c for c in stack.slack.calls_to("chat.postMessage") if not c.params.get("thread_ts")].__len__() == 1
    prs = [b for b in stack.store().pull_request_row(incident.id)["reverted"]]
    assert len(prs) == 1


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
    assert status == 200 and "Mode:" in reply and "Open incidents:* 1" in reply and "RQ, 1 worker" in reply
    status, reply = stack.post(slash_command_body("show 1", user_id=STRANGER, channel_id=CHANNEL))
    assert status == 200 and "Incident #1" in reply
    status, reply = stack.post(slash_command_body("frobnicate", user_id=STRANGER, channel_id=CHANNEL))
    assert "Unknown command" in reply and "`/cairn` commands" in reply
    status, reply = stack.post(slash_command_body("check no.such_contract", user_id=APPROVER, channel_id=CHANNEL))
    assert status == 200 and "no.such_contract" in reply and "Traceback" not in reply
    status, reply = stack.post(slash_command_body("mode observe", user_id=STRANGER, channel_id=CHANNEL))
    assert "for approvers" in reply


def test_a_non_approver_click_is_refused_and_audited(stack: Stack) -> None:
    head = _pr(stack).head_sha
    before = len(stack.slack.ephemerals)
    status, _ = stack.post(block_action_body("cairn.approve", value=f"1:{head}", user_id=STRANGER,
                                             channel_id=CHANNEL, message_ts=stack.card()["ts"], action_ts="1.000001"))
    assert status == 200
    wait_for("the refusal", lambda: len(stack.slack.ephemerals) > before, timeout=10)
    assert stack.slack.ephemerals[-1]["user"] == STRANGER and "Only approvers" in stack.slack.ephemerals[-1]["text"]
    assert _pr(stack).state == "open"
    assert "action.refused" in _events(stack)


def test_a_stale_approval_is_refused(stack: Stack) -> None:
    status, _ = stack.post(block_action_body("cairn.approve", value="1:" + "0" * 40, user_id=APPROVER,
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
    assert stack.post(block_action_body("cairn.kill", value="1", user_id=APPROVER, channel_id=CHANNEL,
                                        message_ts=stack.card()["ts"], action_ts="4.000001"))[0] == 200
    settle(stack, "kill switch on the card", lambda: "cairn.unkill" in json.dumps(stack.card()["blocks"]))
    store = stack.store()
    try:
        assert store.get_state("kill_switch")["by"] == f"slack:{APPROVER}"
    finally:
        store.close()
    # While the switch is on, an approval is refused by the job before it merges anything.
    head = _pr(stack).head_sha
    stack.post(block_action_body("cairn.approve", value=f"1:{head}", user_id=APPROVER, channel_id=CHANNEL,
                                 message_ts=stack.card()["ts"], action_ts="5.000001"))
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
    body = block_action_body("cairn.approve", value=f"1:{head}", user_id=APPROVER, channel_id=CHANNEL,
                             message_ts=stack.card()["ts"], action_ts="6.000001")
    assert stack.post(body)[0] == 200
    assert stack.post(body)[0] == 200  # the same click delivered twice
    assert stack.post(body, retry_num=1)[0] == 200  # and Slack's retry of it
    settle(stack, "the merged card and its thread step",
           lambda: stack.card()["text"].startswith("Merged")
           and any(r["text"].startswith("Merged") for r in stack.slack.thread(CHANNEL, stack.card()["ts"])))
    pr = _pr(stack)
    store = stack.store()
    try:
        assert pr.state == "merged" and store.pull_request_row(1)["merged_by"] == f"slack:{APPROVER}"
    finally:
        store.close()
    events = _events(stack)
    assert events.count("approval.requested") == requested + 1 and events.count("pr.merged") == 1
    assert not any(e["action_id"] == "cairn.approve" for b in stack.card()["blocks"] if b["type"] == "actions"
                   for e in b["elements"])


def test_reject_opens_a_modal_and_records_the_reason(stack: Stack) -> None:
    """After the merge there is nothing to reject: the button answers so, and the modal path is audited."""
    before = len(stack.slack.ephemerals)
    stack.post(block_action_body("cairn.reject", value="1", user_id=APPROVER, channel_id=CHANNEL,
                                 message_ts=stack.card()["ts"], action_ts="7.000001"))
    wait_for("the reject answer", lambda: len(stack.slack.ephemerals) > before, timeout=10)
    assert "nothing to reject" in stack.slack.ephemerals[-1]["text"]
    assert stack.slack.views == []
    body = view_submission_body("cairn.reject_modal", private_metadata=f"1:{CHANNEL}",
                                values={"reject_reason": {"reason": "not the cause"}}, user_id=STRANGER)
    assert stack.post(body)[0] == 200
    wait_for("the refused submission", lambda: _events(stack).count("action.refused") >= 2, timeout=10)


def _pr(stack: Stack):
    store = stack.store()
    try:
        return store.pull_request_for(1)
    finally:
        store.close()


def _events(stack: Stack) -> list[str]:
    store = stack.store()
    try:
        return [e.name for e in store.audit_events(1)]
    finally:
        store.close()


def _all_events(stack: Stack):
    store = stack.store()
    try:
        return store.audit_events()
    finally:
        store.close()
