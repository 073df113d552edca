"""The real Bolt app answers every request cleanly: signed, unsigned and garbage requests, and failures after the ack.

Requests go over HTTP into `cairn serve`'s WSGI callable (`SignedOnly` around Bolt's handler); Slack
is the local `SlackAPI`, which records what the app said.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from urllib.parse import urlencode
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_sdk import WebClient

from bot import messages
from bot.app import create_app
from bot.cards import thread_message
from bot.server import EVENTS_PATH, SignedOnly
from bot.thread import render_terminal, thread_steps
from jobs.core.records import IncidentStatus
from jobs.loop.queue import InlineJobs
from tests.slack_server import (
    ALERT_CHANNEL,
    block_action_body,
    signed_headers,
    slash_command_body,
)
from tests.test_killswitch import APPROVER, HEAD, SECRET, shop  # noqa: F401 - the fixture

ERROR_ID = re.compile(r"error(?: ID)? ([0-9a-f]{8})")
LEAKED = "xoxb-1234567890-leakedtokenvalue"


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def served(shop):  # noqa: F811
    """`cairn serve`'s WSGI stack on a local port: (post, api, rt, incident_id)."""
    rt, api, incident_id, _ = shop
    app = create_app(rt, InlineJobs(rt, background=True), WebClient(token=api.token, base_url=api.base_url),
                     signing_secret=SECRET)
    server = make_server("127.0.0.1", 0, SignedOnly(SlackRequestHandler(app, path=EVENTS_PATH), SECRET),
                         handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}{EVENTS_PATH}"

    def post(body: str, headers: dict[str, str] | None = None) -> tuple[int, str, float]:
        request = urllib.request.Request(url, data=body.encode(), method="POST",
                                         headers=signed_headers(SECRET, body) if headers is None else headers)
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode(), time.monotonic() - started
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(), time.monotonic() - started

    try:
        yield post, api, rt, incident_id
    finally:
        server.shutdown()
        server.server_close()


def test_a_garbage_button_value_is_answered_with_the_ack_and_explained(served, caplog) -> None:
    post, api, _, _ = served
    caplog.set_level(logging.WARNING, logger="bot.app")
    status, body, took = post(block_action_body("cairn.approve", value="drop table", user_id=APPROVER))
    assert (status, body) == (200, "") and took < 2.5  # the ack, not Bolt's 404 after 3 s
    [said] = api.ephemerals
    assert said["user"] == APPROVER and said["channel"] == ALERT_CHANNEL
    assert said["text"].startswith(":warning: " + messages.BAD_BUTTON.format(value="drop table"))
    error_id = ERROR_ID.search(said["text"])[1]
    [record] = [r for r in caplog.records if error_id in r.getMessage()]
    assert "Traceback" in record.getMessage() and "BadValue" in record.getMessage()


def test_an_unexpected_failure_says_so_plainly_with_an_id_and_logs_it_masked(served, caplog) -> None:
    post, api, _, _ = served
    caplog.set_level(logging.WARNING, logger="bot.app")
    status, body, _ = post(block_action_body("cairn.mode", selected_option=LEAKED, user_id=APPROVER))
    assert (status, body) == (200, "")
    [said] = api.ephemerals
    error_id = ERROR_ID.search(said["text"])[1]
    assert said["text"] == ":x: " + messages.UNEXPECTED_ERROR.format(error_id=error_id)
    [record] = [r for r in caplog.records if error_id in r.getMessage()]
    logged = record.getMessage()
    assert record.levelno == logging.ERROR and "Traceback" in logged and "ValueError" in logged
    assert LEAKED not in logged and "xoxb-***" in logged


def test_a_slash_command_still_answers_in_its_ack(served) -> None:
    post, api, _, _ = served
    status, body, _ = post(slash_command_body("kill --select tag: quarter close", user_id=APPROVER))
    assert status == 200 and "'tag:' is not a selector" in json.loads(body)["text"]
    assert ERROR_ID.search(json.loads(body)["text"]) and api.ephemerals == []


def test_cairn_runs_lists_the_latest_runs_and_their_failures(served, shop_runs) -> None:
    from jobs.detect.ingest import ingest_target
    from tests.dbt_runs import BROKEN_MODEL, FAILING_TEST

    post, _, rt, _ = served
    status, body, _ = post(slash_command_body("runs"))
    assert status == 200 and json.loads(body)["text"] == messages.NO_RUNS
    ingest_target(rt, shop_runs.green, sha=shop_runs.green_sha)
    ingest_target(rt, shop_runs.failed, sha=shop_runs.failed_sha)
    status, body, _ = post(slash_command_body("runs 1"))  # anyone may look; only the latest run
    text = json.loads(body)["text"]
    assert status == 200 and text.startswith("```") and "failed" in text and shop_runs.failed_sha[:7] in text
    assert BROKEN_MODEL in text and "refund_reason_code" in text and FAILING_TEST in text
    runs = [line for line in text.strip("`\n").splitlines() if not line.startswith("  ")]
    assert len(runs) == 1 and " failed " in runs[0]


GARBAGE = [
    urlencode({"payload": "{not json"}),
    urlencode({"payload": "[1, 2]"}),
    urlencode({"payload": "\"just a string\""}),
    "{\"type\": ",
]


@pytest.mark.parametrize("body", GARBAGE)
def test_garbage_signed_is_400_unsigned_or_badly_signed_401_and_nothing_is_said(served, body, caplog) -> None:
    post, api, _, _ = served
    caplog.set_level(logging.DEBUG)
    assert post(body) == (400, messages.UNREADABLE_REQUEST, pytest.approx(0, abs=2.5))
    assert post(body, headers={"Content-Type": "application/x-www-form-urlencoded"})[:2] == (
        401, messages.UNSIGNED_REQUEST)
    assert post(body, headers=signed_headers("another-secret", body))[:2] == (401, messages.UNSIGNED_REQUEST)
    stale = signed_headers(SECRET, body, timestamp=int(time.time()) - 6 * 60)
    assert post(body, headers=stale)[:2] == (401, messages.UNSIGNED_REQUEST)
    assert api.calls_to("chat.postEphemeral") == [] and api.calls_to("chat.postMessage") == []
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


def test_a_signed_click_goes_through_and_a_forged_one_does_not(served) -> None:
    post, api, _, incident_id = served
    click = block_action_body("cairn.reject", value=str(incident_id), user_id=APPROVER)
    assert post(click, headers=signed_headers("another-secret", click))[0] == 401
    assert api.views == []
    assert post(click)[:2] == (200, "")
    assert [v["callback_id"] for v in api.views] == ["cairn.reject_modal"]


# --- people appear as mentions on Slack's surfaces, as IDs in the terminal ---------------------


def test_people_are_mentions_in_replies_cards_and_threads_and_ids_in_the_terminal(served) -> None:
    post, api, rt, incident_id = served
    InlineJobs(rt).notify(incident_id)  # the card, posted before anyone acts on it
    card_kill = block_action_body("cairn.kill", value=str(incident_id), user_id=APPROVER, action_ts="5.000001")
    assert post(card_kill)[:2] == (200, "")
    status, body, _ = post(slash_command_body("status", user_id=APPROVER))
    assert status == 200
    reply = json.loads(body)["text"]
    assert f"pulled from the incident card by <@{APPROVER}>" in reply and f"(by <@{APPROVER}>)" in reply
    assert "slack:" not in reply

    click = block_action_body("cairn.approve", value=f"{incident_id}:{HEAD}", user_id=APPROVER, action_ts="6.000001")
    assert post(click)[:2] == (200, "")
    said = api.ephemerals[-1]["text"]
    assert f"by <@{APPROVER}>" in said and "slack:" not in said

    deadline = time.monotonic() + 10
    while not [m for m in api.messages(ALERT_CHANNEL).values() if "pulled" in json.dumps(m.get("blocks", []))]:
        assert time.monotonic() < deadline, "the card was never refreshed with the kill switch"
        time.sleep(0.05)
    shown = json.dumps([m.get("blocks", []) for m in api.messages(ALERT_CHANNEL).values()])
    assert f"by <@{APPROVER}>" in shown and "slack:U" not in shown

    rt.store.update_incident(incident_id, status=IncidentStatus.rejected,
                             details={"rejection": {"by": f"slack:{APPROVER}", "reason": "an intended change"}})
    steps = thread_steps(rt.store.incident(incident_id), None)
    posted = json.dumps(thread_message(steps[-1]).blocks[0].to_dict())
    assert f"Rejected by <@{APPROVER}>: an intended change" in posted
    assert f"Rejected by slack:{APPROVER}: an intended change" in render_terminal(steps)


def test_cairn_incidents_and_show_name_a_failed_runs_node_and_relay_its_error_escaped(served) -> None:
    post, _, rt, _ = served
    at = datetime(2026, 11, 2, tzinfo=timezone.utc)
    run = {"node": "model.shop.stg_refunds", "kind": "runtime_sql", "summary": "model stg_refunds: <!channel> SQL",
           "error": "Runtime Error <!here> at postgres://cairn:hunter2@db/shop", "invocation_id": "83d1547c",
           "last_invocation_id": "83d1547c", "last_failed_at": at}
    incident = rt.store.open_run_incident("run:model.shop.stg_refunds", severity="high", failed_at=at,
                                          failed_sha="c" * 40, green_at=None, green_sha=None, value=None,
                                          reason=run["summary"], details={"run": run})
    status, body, _ = post(slash_command_body("incidents"))
    listed = json.loads(body)["text"]
    assert status == 200 and f"#{incident.id:<4} failed: model stg_refunds" in listed and "run:model" not in listed
    status, body, _ = post(slash_command_body(f"show {incident.id}"))
    shown = json.loads(body)["text"]
    assert status == 200 and "Failed run: model stg_refunds — runtime SQL error" in shown
    assert "Runtime Error &lt;!here&gt; at postgres://***@db/shop" in shown
    assert "<!" not in shown and "hunter2" not in shown
