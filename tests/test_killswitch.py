"""The kill switch stops every side effect beyond reading production, org-wide or for the incidents its
selectors cover: no clone or sandbox build, no PR, no merge; Slack refuses an approval before saying
anything else, and the card hides Approve while the switch covers the incident.

Stages run on a real store and git repository; Slack is the real Bolt app (`bot.app.create_app`) driven
by signed requests, talking to the local Slack Web API of tests/slack_server.py; selectors are matched
against the real dbt manifest of the example shop; the CLI through its real entry point.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from redis import Redis
from rq import Queue
from slack_bolt import BoltRequest
from slack_sdk import WebClient

from bot.app import create_app
from bot.messages import KILLED_APPROVAL
from jobs.config import load_config
from jobs.core.clock import Clock
from jobs.core.records import IncidentStatus, Observation, PullRequest
from jobs.loop.queue import InlineJobs
from jobs.loop.reconcile import reconcile
from jobs.loop.stages import attribute_stage, verify_stage
from jobs.runtime import Runtime
from jobs.store import switches
from tests.conftest import SHOP, copy_shop
from tests.deployment import run_cli
from tests.slack_server import ALERT_CHANNEL, SlackAPI, block_action_body, signed_headers, slash_command_body
from tests.test_reconcile import jobs_of, redis, rt, stuck_at  # noqa: F401 - fixtures
from tests.test_store import store_url  # noqa: F401 - the SQLite/PostgreSQL store URL fixture

T0 = datetime(2026, 11, 2, tzinfo=timezone.utc)
APPROVER, SECRET = "U0123ABCD", "8f742231b10e8888abcd99yyyzzz85a5"
HEAD = "c" * 40


# --- stages -----------------------------------------------------------------------------------


def test_the_kill_switch_stops_the_sandbox_build_and_the_release_resumes_it(rt: Runtime, redis: Redis) -> None:  # noqa: F811
    verifying = stuck_at(rt, IncidentStatus.verifying)
    detected = stuck_at(rt, IncidentStatus.detected, "orders.daily_count")
    switches.pull(rt.store, "warehouse migration", "cli:ops")
    assert verify_stage(rt, verifying) == [] and attribute_stage(rt, detected) == []
    assert not rt.sandboxes_root.exists() or list(rt.sandboxes_root.iterdir()) == [], "no sandbox was made"
    assert rt.git.run("worktree", "list").count("\n") == 1, "no worktree was made"
    for incident_id, stage in ((verifying, "verify"), (detected, "attribute")):
        incident = rt.store.incident(incident_id)
        names = [e.name for e in rt.store.audit_events(incident_id)]
        assert not {"verification.attempt", "verification.cost", "attribution.started"} & set(names)
        assert names.count("loop.held") == 1
        assert incident.status in (IncidentStatus.verifying, IncidentStatus.detected), "left where it was"
        assert (incident.details.held.stage, incident.details.held.by) == (stage, "cli:ops")
    verify_stage(rt, verifying)  # held again by the same switch: recorded once
    assert [e.name for e in rt.store.audit_events(verifying)].count("loop.held") == 1
    # While the switch is on, a check holds them (nothing queued, not counted as stuck) ...
    assert reconcile(rt, jobs_of(rt)).held == (verifying, detected) and Queue("cairn", connection=redis).count == 0
    # ... and once it is released, the next check resumes each at its stage.
    switches.release(rt.store, "cli:ops")
    assert sorted(reconcile(rt, jobs_of(rt)).resumed) == sorted([verifying, detected])
    assert sorted(Queue("cairn", connection=redis).get_job_ids()) == sorted(
        [f"cairn-verify-{verifying}", f"cairn-attribute-{detected}"])
    why = [e.data["why"] for e in rt.store.audit_events(verifying) if e.name == "loop.resumed"]
    assert why == ["kill switch released"]


# --- the shop: selectors against its manifest, Slack, the CLI ----------------------------------------


@pytest.fixture
def shop(tmp_path: Path):
    """The example shop's project with Slack at the local API; one incident on revenue with an open PR."""
    project = copy_shop(tmp_path / "shop")
    settings = yaml.safe_load((SHOP / "cairn.yml").read_text())
    settings.update(store=f"sqlite:///{tmp_path / 'cairn.db'}", slack={"channel": ALERT_CHANNEL,
                                                                       "approvers": [APPROVER]})
    (project / "cairn.yml").write_text(yaml.safe_dump(settings))
    with SlackAPI(users=(APPROVER, "U0STRANGER")) as api:
        env = {"SLACK_BOT_TOKEN": api.token, "SLACK_API_URL": api.base_url}
        rt = Runtime(load_config(project / "cairn.yml", env=env), Clock(T0))
        bad = rt.store.add_observation(Observation("revenue.net_daily", T0 + timedelta(hours=1), 80.0,
                                                   T0 - timedelta(days=1), T0, "b" * 40))
        incident = rt.store.open_incident("revenue.net_daily", severity="high", first_bad=bad, last_good=None,
                                          value=80.0, baseline=None, change_pct=-20.0, reason="down 20%")
        pr = PullRequest(incident_id=incident.id, number=1, branch=f"cairn/incident-{incident.id}", state="open",
                         head_sha=HEAD, title="Revert d3ee5eb", url=None)
        rt.store.update_incident(incident.id, status=IncidentStatus.pr_opened, details={"pr": pr})
        try:
            yield rt, api, incident.id, env
        finally:
            rt.close()


def _dispatch(app, body: str) -> None:
    assert app.dispatch(BoltRequest(body=body, headers=signed_headers(SECRET, body))).status == 200


def _wait(condition, timeout: float = 10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def _card_actions(api: SlackAPI) -> list[str]:
    [card] = [m for m in api.messages(ALERT_CHANNEL).values() if m.get("thread_ts", m["ts"]) == m["ts"]]
    return [e["action_id"] for b in card["blocks"] if b["type"] == "actions" for e in b["elements"]]


def test_slack_refuses_approval_first_and_the_card_hides_approve_while_a_selector_covers_it(shop) -> None:
    rt, api, incident_id, _ = shop
    jobs = InlineJobs(rt, background=True)  # as `cairn serve` runs it: listeners return at once
    app = create_app(rt, jobs, WebClient(token=api.token, base_url=api.base_url), signing_secret=SECRET)
    jobs.notify(incident_id)
    _wait(lambda: api.messages(ALERT_CHANNEL))
    assert "cairn.approve" in _card_actions(api)
    # A switch over models upstream of something else does not cover revenue: Approve stays.
    _dispatch(app, slash_command_body("kill --select stg_plans+ plan prices in flux", user_id=APPROVER))
    _wait(lambda: switches.kill_switch(rt.store) and len(api.calls_to("chat.update")) >= 1)
    assert rt.kill_switch_for(rt.store.incident(incident_id)) is None and "cairn.approve" in _card_actions(api)
    # fct_orders+ reaches fct_revenue: the card loses Approve and says why.
    _dispatch(app, slash_command_body("kill --select fct_orders+ quarter close", user_id=APPROVER))
    _wait(lambda: switches.kill_switch(rt.store).selectors == ("fct_orders+",))
    _wait(lambda: "cairn.approve" not in _card_actions(api))
    [card] = [m for m in api.messages(ALERT_CHANNEL).values() if m.get("thread_ts", m["ts"]) == m["ts"]]
    assert "pulled for fct_orders+ by <@U0123ABCD>: quarter close" in json.dumps(card["blocks"])  # a mention in Slack
    assert "slack:U0123ABCD" not in json.dumps(card["blocks"])
    before = len(api.ephemerals)
    _dispatch(app, block_action_body("cairn.approve", value=f"{incident_id}:{HEAD}", user_id=APPROVER,
                                     action_ts="9.000001"))
    _wait(lambda: len(api.ephemerals) > before)
    time.sleep(0.3)  # anything else the click would say arrives by now
    said = [e["text"] for e in api.ephemerals[before:]]
    assert said == [KILLED_APPROVAL.format(reason="quarter close", by="<@U0123ABCD>", incident=incident_id)]
    names = [e.name for e in rt.store.audit_events(incident_id)]
    assert "approval.refused" in names and "approval.requested" not in names and "pr.merged" not in names


def test_slash_kill_with_a_bad_selector_names_it_and_changes_nothing(shop) -> None:
    rt, api, _, _ = shop
    app = create_app(rt, InlineJobs(rt, background=True), WebClient(token=api.token, base_url=api.base_url),
                     signing_secret=SECRET)
    body = slash_command_body("kill --select tag: quarter close", user_id=APPROVER)
    response = app.dispatch(BoltRequest(body=body, headers=signed_headers(SECRET, body)))
    assert "'tag:' is not a selector" in response.body and switches.kill_switch(rt.store) is None
    body = slash_command_body("kill tag:finance", user_id=APPROVER)  # a selector and no reason
    assert "Usage: `/cairn kill" in app.dispatch(BoltRequest(body=body, headers=signed_headers(SECRET, body))).body
    body = slash_command_body("kill tag:finance quarter close", user_id=APPROVER)
    assert "Kill switch ON for tag:finance" in app.dispatch(BoltRequest(body=body, headers=signed_headers(SECRET, body))).body
    assert switches.kill_switch(rt.store).selectors == ("tag:finance",)


def test_cli_kill_with_selectors_and_status(shop) -> None:
    rt, _, incident_id, env = shop
    config = str(rt.config.path)
    result = run_cli("--config", config, "kill", "--select", "path:", "why", env=env)
    assert result.exit_code != 0 and "'path:' is not a selector" in result.stderr
    result = run_cli("--config", config, "kill", "--select", "fct_orders+", "--select", "tag:finance",
                     "quarter", "close", env=env)
    assert result.exit_code == 0 and "Kill switch ON for fct_orders+, tag:finance (quarter close)" in result.stdout
    kill = switches.kill_switch(rt.store)
    assert kill.selectors == ("fct_orders+", "tag:finance") and kill.reason == "quarter close"
    assert rt.kill_switch_for(rt.store.incident(incident_id)) == kill
    status = run_cli("--config", config, "status", env=env).stdout
    assert "Kill switch: ON for fct_orders+, tag:finance — quarter close" in status
    assert run_cli("--config", config, "unkill", env=env).exit_code == 0 and switches.kill_switch(rt.store) is None
