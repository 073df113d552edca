"""The queue's rules without a worker: failure classes, the errored state, chat claims, `/cairn` commands.

The same code runs under real RQ workers in tests/test_slack_e2e.py; here each rule is checked
on its own, on SQLite and PostgreSQL stores.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from github import GithubException
from slack_sdk.errors import SlackApiError
from slack_sdk.web import SlackResponse

from bot.commands import USAGE, Invocation, Refused, run_command
from jobs.config import load_config
from jobs.core.errors import ConfigError, TransientError, WarehouseBusy
from jobs.core.records import AttributionDetail, IncidentStatus, Observation, Ranking
from jobs.loop.failures import is_transient, mark_errored
from jobs.loop.queue import InlineJobs, next_stage
from jobs.runtime import Runtime
from jobs.store import switches
from jobs.store.chat import CLAIM_LEASE
from jobs.store.store import Store
from tests.test_store import store, store_url  # noqa: F401 - the SQLite/PostgreSQL store fixtures

T0 = datetime(2026, 11, 2, tzinfo=timezone.utc)


def open_incident(store: Store, contract: str = "revenue.net_daily"):
    bad = store.add_observation(Observation(contract, T0 + timedelta(hours=1), 80.0, T0 - timedelta(days=1), T0,
                                            "b" * 40))
    return store.open_incident(contract, severity="high", first_bad=bad, last_good=None, value=80.0,
                               baseline=None, change_pct=-20.0, reason="down 20%")


def slack_error(status: int) -> SlackApiError:
    response = SlackResponse(client=None, http_verb="POST", api_url="https://slack.com/api/chat.update",
                             req_args={}, data={"ok": False, "error": "ratelimited"}, headers={}, status_code=status)
    return SlackApiError("failed", response)


@pytest.mark.parametrize("exc, transient", [
    (slack_error(429), True),
    (slack_error(503), True),
    (slack_error(200), False),  # ok=false with a 200: channel_not_found and friends do not heal by waiting
    (GithubException(502, {"message": "Bad Gateway"}), True),
    (GithubException(422, {"message": "Validation Failed"}), False),
    (WarehouseBusy("held by a dbt run"), True),
    (TransientError("timeout"), True),
    (TimeoutError(), True),
    (ConnectionResetError(), True),
    (ConfigError("cairn.yml: slack.channel: not set"), False),
    (ValueError("bug"), False),
])
def test_only_transient_failures_are_retried(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_the_next_stage_follows_the_status(store: Store) -> None:
    incident = open_incident(store)
    assert next_stage(incident) == "attribute"
    for status, stage in [(IncidentStatus.attributing, "attribute"), (IncidentStatus.verifying, "verify"),
                          (IncidentStatus.verified, "propose"), (IncidentStatus.not_verified, "propose"),
                          (IncidentStatus.pr_opened, None), (IncidentStatus.errored, None)]:
        assert next_stage(store.update_incident(incident.id, status=status)) == stage


def test_a_permanent_failure_marks_the_incident_errored_once(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    token = "xoxb-1234567890-secret-value"
    monkeypatch.setenv("SLACK_BOT_TOKEN", token)
    incident = store.update_incident(open_incident(store).id, status=IncidentStatus.verifying,
                                     details={"attribution": AttributionDetail(ranking=Ranking((), "scorer"))})
    boom = RuntimeError(f"Slack said no to {token} at https://user:hunter2@example.com/x")
    mark_errored(store, incident.id, "verify", boom)
    mark_errored(store, incident.id, "verify", boom)  # a duplicate job failing the same way
    errored = store.incident(incident.id)
    assert errored.status is IncidentStatus.errored
    error = errored.details.error
    assert error.stage == "verify" and error.status_before == "verifying" and len(error.error_id) == 8
    assert token not in error.reason and "hunter2" not in error.reason and "<SLACK_BOT_TOKEN>" in error.reason
    assert errored.details.attribution == AttributionDetail(ranking=Ranking((), "scorer")), "nothing found is lost"
    events = [e for e in store.audit_events(incident.id) if e.name == "stage.failed"]
    assert len(events) == 1 and events[0].data["error_id"] == error.error_id


# --- chat message claims ----------------------------------------------------------------------


def test_a_message_is_claimed_once_then_recorded(store: Store) -> None:
    incident = open_incident(store)
    token = store.claim_chat_message(incident.id, "card")
    assert token and store.claim_chat_message(incident.id, "card") is None  # a second job stands back
    assert store.chat_message(incident.id, "card") is None  # claimed is not posted
    store.record_chat_message(incident.id, "card", token, "C1", "1732350000.000100")
    posted = store.chat_message(incident.id, "card")
    assert (posted.channel, posted.ts) == ("C1", "1732350000.000100")
    assert store.claim_chat_message(incident.id, "card") is None
    assert [m.key for m in store.chat_messages(incident.id)] == ["card"]


def test_a_dead_claim_expires_and_a_failed_post_releases(store: Store) -> None:
    incident = open_incident(store)
    dead = store.claim_chat_message(incident.id, "step:detected", now=T0)
    assert store.claim_chat_message(incident.id, "step:detected", now=T0 + CLAIM_LEASE / 2) is None
    taken = store.claim_chat_message(incident.id, "step:detected", now=T0 + CLAIM_LEASE * 2)
    assert taken and taken != dead
    store.record_chat_message(incident.id, "step:detected", dead, "C1", "1.1")  # the dead job's late write is void
    assert store.chat_message(incident.id, "step:detected") is None
    store.release_chat_claim(incident.id, "step:detected", taken)
    assert store.claim_chat_message(incident.id, "step:detected")


# --- /cairn commands ----------------------------------------------------------------------------


@pytest.fixture
def rt(tmp_path: Path, store_url: str):  # noqa: F811
    (tmp_path / "cairn.yml").write_text("slack: {channel: C1, approvers: [U1]}\n")
    runtime = Runtime(load_config(tmp_path / "cairn.yml", env={"CAIRN_DATABASE_URL": store_url}))
    yield runtime
    runtime.close()


APPROVER, STRANGER = Invocation("slack:U1", True), Invocation("slack:U2", False)


def test_help_and_unknown_input_answer_with_usage(rt: Runtime) -> None:
    jobs = InlineJobs(rt)
    assert run_command(rt, jobs, "", STRANGER) == USAGE
    assert run_command(rt, jobs, "help", STRANGER) == USAGE
    reply = run_command(rt, jobs, "deploy --force", STRANGER)
    assert reply.startswith("Unknown command `deploy`") and USAGE in reply
    assert run_command(rt, jobs, 'show "unclosed', STRANGER).startswith("Usage: `/cairn show ID`")
    assert run_command(rt, jobs, "show 41", STRANGER) == "incident 41 does not exist in the store"
    assert run_command(rt, jobs, "mode sideways", APPROVER).startswith("Usage: `/cairn mode observe|assisted|autonomous`")
    assert run_command(rt, jobs, "kill", APPROVER).startswith("Usage: `/cairn kill [tag:X|path:DIR|--select SEL]... REASON`")


def test_status_says_mode_kill_switch_incidents_and_queue(rt: Runtime) -> None:
    open_incident(rt.store)
    reply = run_command(rt, InlineJobs(rt), "status", STRANGER)
    assert "*Mode:* assisted (policy default)" in reply and "*Kill switch:* off" in reply
    assert "*Open incidents:* 1" in reply and "in-process (no REDIS_URL)" in reply


def test_only_approvers_change_mode_and_every_refusal_is_audited(rt: Runtime) -> None:
    jobs = InlineJobs(rt)
    with pytest.raises(Refused, match="for approvers"):
        run_command(rt, jobs, "mode autonomous", STRANGER)
    assert switches.org_mode(rt.store) is None
    refused = [e for e in rt.store.audit_events() if e.name == "command.refused"]
    assert [(e.actor, e.data["command"]) for e in refused] == [("slack:U2", "mode")]
    assert "observe" in run_command(rt, jobs, "mode observe", APPROVER)
    assert switches.org_mode(rt.store).value == "observe"


def test_kill_and_unkill_are_durable_and_audited(rt: Runtime) -> None:
    jobs = InlineJobs(rt)
    assert "Kill switch ON (bad deploy in progress)" in run_command(rt, jobs, "kill bad deploy in progress", APPROVER)
    kill = switches.kill_switch(rt.store)
    assert (kill.reason, kill.by) == ("bad deploy in progress", "slack:U1")
    assert "ON — bad deploy in progress" in run_command(rt, jobs, "status", STRANGER)
    run_command(rt, jobs, "unkill", APPROVER)
    assert switches.kill_switch(rt.store) is None
    names = [e.name for e in rt.store.audit_events()]
    assert names[-2:] == ["kill_switch.pulled", "kill_switch.released"]
