"""Slack's incident card, its thread and the metric chart: Block Kit that Slack accepts, says what happened, and
cannot be turned against the channel by repository text."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import struct
from datetime import datetime, timedelta, timezone

import pytest
from matplotlib.image import imread
from slack_sdk.models.blocks import ActionsBlock, ButtonElement, ContextBlock, DividerBlock, HeaderBlock, SectionBlock

from bot import ids
from bot.cards import (
    BLOCKS_BUDGET,
    MAX_BLOCKS,
    SECTION_TEXT,
    Message,
    _fit,
    incident_card,
    reject_modal,
    thread_message,
)
from bot.chart import day_bands, metric_chart
from bot.messages import KIND_LABEL, STATUS_LABEL
from bot.render import incident_detail, incident_line
from bot.thread import render_terminal, thread_steps
from jobs.attribute.llm import NO_KEY, UNAVAILABLE
from jobs.core.records import (
    BaselineStats,
    Candidate,
    Incident,
    IncidentDetails,
    IncidentStatus,
    MemberResult,
    Observation,
    PullRequest,
    RankedCause,
    Ranking,
    RowDelta,
    Verdict,
    Verification,
)
from jobs.core.report import to_json
from policies.decide import Action, Decision, KillSwitch
from policies.model import Mode

AT = datetime(2026, 11, 23, 1, 0, tzinfo=timezone.utc)
SHA = "5a20dc5" + "3" * 33
ALT = "2b7a91d" + "1" * 33
HEAD = "3d88ea8" + "b" * 33
URL = "https://cairn.example/incidents/7/evidence?full=1&format=html"
HOSTILE = "<!channel> <https://evil.example|click> & friends"

CAUSE = Candidate(sha=SHA, author="Dana Analyst", authored_at=AT - timedelta(hours=15),
                  message="Only count settled payment methods\n\nLong body", files=("models/int_order_payments.sql",),
                  models=("model.shop.int_order_payments",), distance=2, touches_metric_columns=True)
OTHERS = [dataclasses.replace(CAUSE, sha=f"{i:07x}" + "e" * 33, message=f"Tweak model {i}", intentional=False,
                              files=(f"models/m{i}.sql",)) for i in range(1, 5)]
RANKING = Ranking(causes=(RankedCause(SHA, 0.47, "2 hops upstream; 1 line of SQL logic changed"),
                          *(RankedCause(c.sha, 0.1, "far from the metric") for c in OTHERS)),
                  ranker="scorer", note="LLM ranking unavailable (timeout): the scorer's ranking is used")
DELTA = RowDelta(model="int_order_payments", key=("order_id",), added=0, removed=3295, changed=1074, unchanged=8489,
                 column_changes={"coupon_amount": 1074}, concentration="97% of changed rows have method = 'coupon'",
                 samples=tuple({"kind": "changed", "key": {"order_id": 2026101900000 + i},
                                "before": {"coupon_amount": 5.0, "email": "•••"},
                                "after": {"coupon_amount": 0.0, "email": "•••"}} for i in range(7)))
FIX = Verification(sha=SHA, verdict=Verdict.verified, clone_id="duckdb:incident-7-275f69",
                   dbt_command="dbt build --select int_order_payments+,+fct_revenue --defer --favor-state",
                   before=14265.37, after=19097.95, tests={"pass": 19, "fail": 0, "error": 0, "skip": 1},
                   durations={"clone": 0.04, "build": 2.8}, detail="revenue.net_daily = 19,098 with the revert",
                   reverted=(SHA,), deltas=(DELTA,))
PR = PullRequest(incident_id=7, number=12, branch="cairn/incident-7", state="open", head_sha=HEAD,
                 title="Revert 5a20dc5: Only count settled payment methods (revenue.net_daily -31.0%, Cairn #7)",
                 url="https://github.com/acme/analytics/pull/12")
ATTRIBUTION = {"candidates": to_json([CAUSE, *OTHERS]), "ranking": to_json(RANKING), "lineage_nodes": 14,
               "lineage_path": {SHA: ["int_order_payments", "fct_orders", "fct_revenue"]}}
VERIFIED = {"verification": {"attempts": to_json([FIX]), "builds": 1, "fix": to_json(FIX)}, "verdict": "verified"}
DECIDED = {"decision": to_json(Decision(Action.open_pr, Mode.assisted, ("org mode is assisted", "verified revert"))),
           "pr": to_json(PR), "ranking": to_json(dataclasses.replace(RANKING, causes=(RankedCause(SHA, 0.99, "r"),)))}
INCIDENT = Incident(
    id=7, contract_id="revenue.net_daily", status=IncidentStatus.detected, severity="high", detected_at=AT,
    updated_at=AT, first_bad_at=AT, first_bad_sha=SHA, last_good_at=AT - timedelta(days=1), last_good_sha=ALT,
    value=14265.37,
    baseline=BaselineStats(expected=20684.79, lower=18120.3, upper=23249.3, n=28, seasonal=True),
    change_pct=-31.03, reason="sum(net_revenue) 14,265 is 31.0% below its 28-day Sunday median 20,685",
)


def incident(status: IncidentStatus, **details) -> Incident:
    return dataclasses.replace(INCIDENT, status=status, details=IncidentDetails.model_validate(details))


PR_OPENED = incident(IncidentStatus.pr_opened, attribution=ATTRIBUTION, **VERIFIED, **DECIDED)


def serialized(message: Message) -> list[dict]:
    """The blocks as Slack receives them; `to_dict` runs the SDK's validators and raises on a violation."""
    assert message.text.strip()
    assert len(message.blocks) <= MAX_BLOCKS
    blocks = [block.to_dict() for block in message.blocks]
    assert len(json.dumps(blocks)) <= BLOCKS_BUDGET
    for block in message.blocks:
        if isinstance(block, SectionBlock) and block.text:
            assert len(block.text.text) <= SECTION_TEXT
    return blocks


def texts(blocks: list[dict]) -> list[str]:
    """Every text string anywhere in the blocks."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("text"), str):
                found.append(node["text"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(blocks)
    return found


def actions(message: Message) -> dict[str, dict]:
    """The card's interactive elements by action ID."""
    return {element["action_id"]: element for block in message.blocks if isinstance(block, ActionsBlock)
            for element in block.to_dict()["elements"]}


# -- the card ----------------------------------------------------------------------------------


def test_detected_card_has_header_status_and_no_approve():
    card = incident_card(incident(IncidentStatus.detected), None, Mode.assisted, None, baseline_days=28)
    blocks = serialized(card)
    assert isinstance(card.blocks[0], HeaderBlock)
    assert card.blocks[0].text.text == "revenue.net_daily · high severity"
    text = "\n".join(texts(blocks))
    assert "*Detected* · -31.0% vs 28d baseline" in text and "31.0% below its 28-day Sunday median" in text
    assert "not attributed yet" in text and "*Pull request*\nnone" in text
    assert set(actions(card)) == {ids.REJECT, ids.MODE, ids.KILL}


def test_an_incident_that_follows_another_says_so_on_its_card_and_in_its_thread():
    root = incident(IncidentStatus.escalated, verdict="no_code_cause", followed_by=8)
    follower = dataclasses.replace(incident(IncidentStatus.detected, follows={"incident": 7, "level": 14_265.37,
                                                                              "sha": ALT, "at": None}),
                                   id=8, follows_id=7, value=7020.0)
    card = " ".join(texts(serialized(incident_card(follower, None, Mode.assisted, None))))
    assert "Follows incident #7, still open" in card and "from 14,265 to 7,020" in card
    assert "back to 14,265, not to the baseline" in card
    detected = {s.key: s.lines for s in thread_steps(follower, None)}["detected"]
    assert any(line.startswith("Follows incident #7") for line in detected)
    assert "A later deploy made it worse: incident #8" in " ".join(texts(serialized(
        incident_card(dataclasses.replace(root, status=IncidentStatus.detected), None, Mode.assisted, None))))


def test_verifying_card_shows_the_top_cause_before_any_verdict():
    card = incident_card(incident(IncidentStatus.verifying, attribution=ATTRIBUTION), None, Mode.assisted, None)
    text = "\n".join(texts(serialized(card)))
    assert "Clone running" in text
    assert "5a20dc5 · models/int_order_payments.sql (47%)" in text and "not verified yet" in text
    assert ids.APPROVE not in actions(card)


def test_pr_opened_card_binds_approve_to_the_head_it_shows():
    card = incident_card(PR_OPENED, None, Mode.assisted, None, evidence_url=URL)
    text = "\n".join(texts(serialized(card)))
    assert "verified on duckdb:incident-7-275f69: 14,265 → 19,098" in text
    assert "<https://github.com/acme/analytics/pull/12|#12 Revert 5a20dc5" in text
    assert "<https://cairn.example/incidents/7/evidence?full=1&amp;format=html|full evidence>" in text
    approve = actions(card)[ids.APPROVE]
    assert approve["style"] == "primary" and ids.parse_value(approve["value"]) == (7, HEAD)
    assert ids.parse_value(actions(card)[ids.REJECT]["value"]) == (7, None)
    assert actions(card)[ids.REJECT]["style"] == "danger"
    # The forge's current view wins over what the loop recorded: a closed PR cannot be approved.
    closed = incident_card(PR_OPENED, dataclasses.replace(PR, state="closed"), Mode.assisted, None)
    assert ids.APPROVE not in actions(closed)


@pytest.mark.parametrize("status", [IncidentStatus.merged, IncidentStatus.recovered, IncidentStatus.rejected,
                                    IncidentStatus.resolved])
def test_decided_incidents_show_no_buttons(status):
    card = incident_card(dataclasses.replace(PR_OPENED, status=status), dataclasses.replace(PR, state="merged"),
                         Mode.assisted, None)
    serialized(card)
    assert not any(isinstance(block, ActionsBlock) for block in card.blocks)
    assert STATUS_LABEL[status] in card.text


def test_errored_card_shows_the_reason_and_error_id():
    errored = incident(IncidentStatus.errored, attribution=ATTRIBUTION,
                       error={"reason": "the warehouse clone could not be created: disk full", "error_id": "E7F3",
                              "stage": "verify", "status_before": "verifying"})
    card = incident_card(errored, None, Mode.assisted, None)
    text = "\n".join(texts(serialized(card)))
    assert ":warning: *Errored*" in text
    assert "the warehouse clone could not be created: disk full" in text and "Error ID E7F3" in text
    assert "Errored" in card.text


@pytest.mark.parametrize("mode", list(Mode))
def test_mode_select_starts_at_the_current_mode(mode):
    select = actions(incident_card(PR_OPENED, None, mode, None))[ids.MODE]
    assert select["type"] == "static_select"
    assert select["initial_option"]["value"] == mode.value
    assert [o["value"] for o in select["options"]] == ["observe", "assisted", "autonomous"]


def test_kill_switch_asks_for_confirmation_and_unkill_replaces_it_once_pulled():
    kill = actions(incident_card(PR_OPENED, None, Mode.assisted, None))[ids.KILL]
    assert kill["style"] == "danger"
    assert kill["confirm"]["title"]["text"] == "Pull the kill switch?" and kill["confirm"]["style"] == "danger"
    assert "no clone, no sandbox build, no pull request, no merge" in kill["confirm"]["text"]["text"]

    pulled = KillSwitch(reason="quarter close", by="U0123ABCD")
    card = incident_card(PR_OPENED, None, Mode.assisted, pulled)
    assert ids.UNKILL in actions(card) and ids.KILL not in actions(card)
    assert ids.APPROVE not in actions(card), "nothing is merged while the switch covers the incident"
    text = "\n".join(texts(serialized(card)))
    assert "pulled for the whole org by U0123ABCD: quarter close" in text
    scoped = incident_card(PR_OPENED, None, Mode.assisted, dataclasses.replace(pulled, selectors=("tag:finance",)))
    assert "pulled for tag:finance" in "\n".join(texts(serialized(scoped)))


@pytest.mark.parametrize("status", list(IncidentStatus))
def test_fallback_text_names_the_metric_and_status(status):
    card = incident_card(dataclasses.replace(PR_OPENED, status=status), None, Mode.observe, None)
    serialized(card)
    assert "revenue.net_daily" in card.text and STATUS_LABEL[status] in card.text and "#7" in card.text


def test_hostile_commit_message_cannot_ping_or_link():
    evil = dataclasses.replace(CAUSE, message=HOSTILE)
    attribution = {**ATTRIBUTION, "candidates": to_json([evil, *OTHERS])}
    hostile = dataclasses.replace(PR_OPENED, reason=HOSTILE, details=PR_OPENED.details.merged({"attribution": attribution}))
    messages = [incident_card(hostile, dataclasses.replace(PR, title=HOSTILE), Mode.assisted,
                              KillSwitch(reason=HOSTILE, by="<@U1>")),
                *(thread_message(step) for step in thread_steps(hostile, None))]
    everything = [text for message in messages for text in texts(serialized(message))]
    joined = "\n".join(everything)
    assert "<!channel>" not in joined and "<https://evil" not in joined and "<@U1>" not in joined
    assert "&lt;!channel&gt; &lt;https://evil.example|click&gt; &amp; friends" in joined
    assert all("<!channel>" not in message.text for message in messages)
    # The only link on the card is the PR's own, with the hostile title escaped as its label.
    assert "<https://github.com/acme/analytics/pull/12|#12 &lt;!channel&gt;" in joined
    for message in messages:  # Slack must not auto-link or auto-mention anything either
        assert all(obj.get("verbatim") for obj in _mrkdwn_objects([b.to_dict() for b in message.blocks]))


def _mrkdwn_objects(node) -> list[dict]:
    if isinstance(node, dict):
        own = [node] if node.get("type") == "mrkdwn" else []
        return own + [o for value in node.values() for o in _mrkdwn_objects(value)]
    if isinstance(node, list):
        return [o for value in node for o in _mrkdwn_objects(value)]
    return []


# -- limits ------------------------------------------------------------------------------------


def huge_bundle() -> Incident:
    """Two hundred changed models with long sample values, and a dbt command no one should paste."""
    wide = {"kind": "changed", "key": {"id": 1}, "before": {f"col{i}": "x" * 300 for i in range(12)},
            "after": {f"col{i}": "<y>" * 100 for i in range(12)}}
    deltas = tuple(dataclasses.replace(DELTA, model=f"model_{n}", samples=(wide,) * 9) for n in range(200))
    fix = dataclasses.replace(FIX, deltas=deltas, dbt_command="dbt build --select " + " ".join(["a&b"] * 4000))
    return incident(IncidentStatus.verified, attribution=ATTRIBUTION,
                    verification={"attempts": to_json([fix]), "builds": 1, "fix": to_json(fix)}, verdict="verified")


def test_huge_evidence_is_cut_to_slack_limits_with_a_link_to_the_rest():
    steps = {step.key: step for step in thread_steps(huge_bundle(), None)}
    evidence = thread_message(steps["evidence"], evidence_url=URL)
    blocks = serialized(evidence)
    assert sum(len(line) for line in steps["evidence"].lines) > 10 * BLOCKS_BUDGET  # it really was huge
    assert isinstance(evidence.blocks[-1], ContextBlock)
    assert "more sections not shown … full evidence: <https://cairn.example/incidents/7/evidence?full=1&amp;" \
           "format=html|" in texts(blocks)[-1]

    verification = thread_message(steps["verification"], evidence_url=URL)
    command = next(t for t in texts(serialized(verification)) if "dbt: dbt build" in t)
    assert len(command) <= SECTION_TEXT and "… full evidence: <https://cairn.example" in command
    assert "a&amp;b a&amp;b" in command and not command.split("…")[0].endswith("&amp")  # no entity cut in half

    without_url = thread_message(steps["evidence"])
    assert texts(serialized(without_url))[-1].endswith("more sections not shown …")


def test_a_card_with_huge_repository_text_keeps_its_buttons():
    long = dataclasses.replace(PR_OPENED, reason="r" * 50_000, contract_id="c" * 400)
    card = incident_card(long, dataclasses.replace(PR, title="t" * 5000), Mode.assisted, None, evidence_url=URL)
    serialized(card)
    assert len(card.blocks[0].text.text) <= 150
    assert ids.APPROVE in actions(card) and len(card.text) <= 1000


def grouped(incident_id: int, status: IncidentStatus, **details) -> Incident:
    """A member of the group #7 leads: #7, #8 and #9 broke in one deploy; the PR is #7's."""
    return dataclasses.replace(incident(status, group={"leader": 7, "members": [7, 8, 9]}, **details),
                               id=incident_id, group_id=7)


GROUP_FIX = dataclasses.replace(FIX, members=(
    MemberResult(7, "revenue.net_daily", Verdict.verified, 14265.37, 19097.95, "back"),
    MemberResult(8, "orders.daily_count", Verdict.verified, 300.0, 480.0, "back"),
    MemberResult(9, "payments.daily_amount", Verdict.verified, 9000.0, 15000.0, "back")))


def test_grouped_cards_say_which_incident_runs_the_one_loop_and_share_its_pr():
    leader = grouped(7, IncidentStatus.verifying, attribution=ATTRIBUTION)
    assert ("Grouped with #8, #9: one deploy broke them together, so they get one culprit, one verification and "
            "one PR, run from this incident.") in " ".join(texts(serialized(incident_card(leader, None, Mode.assisted,
                                                                                          None))))
    verified = {"verification": {"attempts": to_json([GROUP_FIX]), "builds": 1, "fix": to_json(GROUP_FIX)},
                "verdict": "verified"}
    member = grouped(8, IncidentStatus.pr_opened, attribution=ATTRIBUTION, **verified, **DECIDED)
    card = incident_card(member, PR, Mode.assisted, None)
    text = " ".join(texts(serialized(card)))
    assert ("Grouped with #7 and #9: one culprit, one verification and one PR for all of them, run from #7."
            in text)
    assert "<https://github.com/acme/analytics/pull/12|#12 Revert 5a20dc5" in text  # the group's PR, linked
    # Approve on a member's card binds the member and the head it shows: the review acts on the group's PR.
    assert ids.parse_value(actions(card)[ids.APPROVE]["value"]) == (8, HEAD)
    steps = {s.key: s.lines for s in thread_steps(member, PR)}
    assert any(line.startswith("Grouped with #7 and #9") for line in steps["detected"])
    assert steps["pr"][-1] == ("The group's PR, opened by incident #7: Approve or Reject on this card acts on it "
                               "for every incident of the group.")
    verification = "\n".join(steps["verification"])
    assert "#8 orders.daily_count: 300 → 480, verified" in verification
    assert "#9 payments.daily_amount: 9,000 → 15,000, verified" in verification
    assert "1 build used for the group's 3 incidents" in verification
    assert "pr" in {s.key for s in thread_steps(dataclasses.replace(member, id=7), PR)}  # the leader's own: no note
    assert not any(line.startswith("The group's PR") for line in
                   {s.key: s.lines for s in thread_steps(dataclasses.replace(member, id=7), PR)}["pr"])


def test_a_member_that_left_its_group_says_why_and_threads_its_own_loop_apart():
    left = dataclasses.replace(incident(IncidentStatus.verifying, attribution=ATTRIBUTION,
                                        left_group={"group": 7, "why": "not_recovered", "fix": SHA}), id=8)
    note = ("Left group #7: no revert the group tried on its clone brought this metric back (the best, 5a20dc5, "
            "brought back others), so it runs its own attribution, verification and PR.")
    assert note in " ".join(texts(serialized(incident_card(left, None, Mode.assisted, None))))
    steps = thread_steps(left, None)
    # Its own steps get their own keys: the group's attribution and verification were posted under the others.
    assert [s.key for s in steps] == ["detected", "left_group", "attribution:own"]
    assert steps[1].lines == (note,)
    unexplained = dataclasses.replace(left, status=IncidentStatus.escalated, details=IncidentDetails.model_validate({
        "left_group": {"group": 7, "why": "unexplained", "fix": None}, "verdict": "no_code_cause",
        "attribution": {**ATTRIBUTION, "candidates": [], "ranking": to_json(Ranking((), "scorer"))}}))
    assert [s.key for s in thread_steps(unexplained, None)] == ["detected", "left_group", "attribution"]
    assert "no commit in the suspect range touches this metric's lineage" in thread_steps(unexplained, None)[1].lines[0]
    # A split group: each part goes on with the revert that brought it back, verifying nothing again.
    split = dataclasses.replace(left, status=IncidentStatus.verified, details=IncidentDetails.model_validate({
        "left_group": {"group": 7, "why": "split", "fix": SHA}, "attribution": ATTRIBUTION, **VERIFIED}))
    steps = thread_steps(split, None)
    assert [s.key for s in steps] == ["detected", "left_group", "attribution", "evidence", "verification"]
    assert steps[1].title == "Group split" and steps[1].lines == (
        "Group #7 split: no one revert brings all its incidents back, so this one goes on with the revert of "
        "5a20dc5, which brought it back on the group's clone.",)


# -- the thread --------------------------------------------------------------------------------


def test_thread_of_a_verified_incident_with_a_pr():
    steps = thread_steps(PR_OPENED, None, baseline_days=28)
    assert [s.key for s in steps] == ["detected", "attribution", "evidence", "verification", "decision", "pr"]
    assert steps == thread_steps(PR_OPENED, None, baseline_days=28)  # stable: posted once per key
    by_key = {s.key: s.lines for s in steps}
    assert by_key["detected"] == (
        INCIDENT.reason,
        "-31.0% vs 28d baseline: 14,265 against the forecast 20,685 from 28 points, band 18,120–23,249 "
        "(weekly pattern)",
        "First bad: 2026-11-23 01:00 at 5a20dc5",
        "Last good: 2026-11-22 01:00 at 2b7a91d",
    )
    attribution = "\n".join(by_key["attribution"])
    assert "1. 5a20dc5 · models/int_order_payments.sql (47%) “Only count settled payment methods” — 2 hops" \
           in attribution
    assert "3. " in attribution and "4. " not in attribution and "and 2 other candidates" in attribution
    assert "Lineage: int_order_payments → fct_orders → fct_revenue" in attribution
    assert "Ranked by scorer: LLM ranking unavailable (timeout)" in attribution and "Long body" not in attribution
    evidence = by_key["evidence"]
    assert evidence[1] == ("int_order_payments on order_id: 0 added, 3295 removed, 1074 changed, 8489 unchanged "
                           "(66.0% of rows match)")
    assert "97% of changed rows have method = 'coupon'" in evidence
    samples = [line for line in evidence if line.startswith("- changed")]
    assert len(samples) == 5 and "coupon_amount 5 → 0; email ••• → •••" in samples[0]  # masked stays masked
    assert evidence[-1] == "2 more sample rows not shown."
    verification = "\n".join(by_key["verification"])
    for needed in ("Clone duckdb:incident-7-275f69: reverted 5a20dc5; production was not written",
                   "dbt: dbt build --select int_order_payments+,+fct_revenue --defer --favor-state",
                   "14,265 → 19,098, back inside the baseline band", "19 passed, 0 failed, 0 errors, 1 skipped",
                   "1 build used; took 2.8s (clone 0.0s, build 2.8s)"):
        assert needed in verification, needed
    assert by_key["decision"] == ("open_pr (org mode is assisted; verified revert)", "Mode: assisted",
                                  "Confidence after verification: 5a20dc5 99% (scorer)")
    assert by_key["pr"][0] == "#12 https://github.com/acme/analytics/pull/12 (open)"
    assert steps[4].title == "Decision" and steps[3].title == "Verified revert"

    merged = dataclasses.replace(PR, state="merged")
    recovered = dataclasses.replace(PR_OPENED, status=IncidentStatus.recovered, resolved_at=AT + timedelta(days=1),
                                    reason="sum(net_revenue) 20,100 is within its band")
    tail = thread_steps(recovered, merged)
    assert [s.key for s in tail][-2:] == ["merged", "recovered"]
    assert tail[-2].lines[0] == "PR #12 merged at head 3d88ea8"
    assert tail[-1].lines[0] == "2026-11-24 01:00 UTC: sum(net_revenue) 20,100 is within its band"
    assert "14,265" not in "\n".join(tail[0].lines)  # recovery overwrote the value: the detected step drops it


def test_thread_of_an_incident_no_code_explains():
    unexplained = incident(IncidentStatus.escalated, attribution={**ATTRIBUTION, "candidates": [],
                                                                   "ranking": to_json(Ranking((), "scorer"))},
                           verdict="no_code_cause")
    steps = thread_steps(unexplained, None)
    assert [s.key for s in steps] == ["detected", "attribution"]
    assert "No code change in the suspect range explains this: look at the source data" in steps[1].lines

    intended = dataclasses.replace(CAUSE, intentional=True)
    intentional = incident(IncidentStatus.escalated, attribution={**ATTRIBUTION, "candidates": to_json([intended])},
                           verdict="intentional")
    lines = thread_steps(intentional, None)[1].lines
    assert ("Commit 5a20dc5 marks this change as intentional: re-baseline with "
            "`cairn rebaseline revenue.net_daily --reason ...`") in lines


def test_thread_of_a_revert_that_did_not_verify():
    failed = dataclasses.replace(FIX, verdict=Verdict.not_recovered, after=15000.0)
    other = dataclasses.replace(failed, sha=ALT, reverted=(ALT,), deltas=())
    not_verified = incident(IncidentStatus.not_verified, attribution=ATTRIBUTION, verdict="not_recovered",
                            verification={"attempts": to_json([failed, other]), "builds": 2, "fix": None})
    steps = {s.key: s for s in thread_steps(not_verified, None)}
    assert steps["evidence"].lines[0] == "Production with 5a20dc5 vs the leading candidate's revert (not verified):"
    assert steps["verification"].title == "Not verified"
    assert "not_recovered on duckdb:incident-7-275f69: 14,265 → 15,000, not back inside the baseline band" \
           in steps["verification"].lines
    assert steps["verification"].lines[-2:] == ("Attempt 1: revert 5a20dc5 → not_recovered",
                                                "Attempt 2: revert 2b7a91d → not_recovered")
    card = incident_card(not_verified, None, Mode.assisted, None)
    assert "not_recovered on duckdb:incident-7-275f69" in "\n".join(texts(serialized(card)))


def test_rejected_and_errored_steps_say_who_and_why():
    rejected = incident(IncidentStatus.rejected, rejection={"by": "U0123ABCD", "reason": "a planned change"})
    assert thread_steps(rejected, None)[-1].lines == ("Rejected by U0123ABCD: a planned change",)
    errored = incident(IncidentStatus.errored)
    assert thread_steps(errored, None)[-1].lines == ("no reason recorded",)


def test_every_step_is_valid_block_kit():
    for step in thread_steps(PR_OPENED, None):
        message = thread_message(step, evidence_url=URL)
        blocks = serialized(message)
        assert texts(blocks)[0].startswith(f"*{step.title}*")
        assert message.text.startswith(step.title)


def test_render_terminal():
    text = render_terminal(thread_steps(PR_OPENED, None, baseline_days=28))
    lines = text.splitlines()
    assert lines[0] == "  ● Detected" and lines[1] == f"      {INCIDENT.reason}"
    assert "  ● Evidence" in lines and "  ● PR opened" in lines
    assert "      #12 https://github.com/acme/analytics/pull/12 (open)" in lines


# -- the modal and the IDs ---------------------------------------------------------------------


def test_reject_modal_asks_for_a_required_reason():
    view = reject_modal(7).to_dict()  # validates: title, submit and close fit Slack's 24 characters
    assert view["type"] == "modal" and view["callback_id"] == ids.REJECT_MODAL and view["private_metadata"] == "7"
    (field,) = [b for b in view["blocks"] if b["type"] == "input"]
    assert field["block_id"] == ids.REJECT_REASON_BLOCK and field["optional"] is False
    assert field["element"]["action_id"] == ids.REJECT_REASON_INPUT and field["element"]["type"] == "plain_text_input"


def test_button_values_round_trip_and_refuse_anything_else():
    assert ids.parse_value(ids.button_value(12, HEAD)) == (12, HEAD)
    assert ids.parse_value(ids.button_value(12)) == (12, None)
    for forged in ("", "abc", "12:", "12:XYZ", "0", "12:abc123:9", "-1"):
        with pytest.raises(ValueError, match=repr(forged)):
            ids.parse_value(forged)


# -- the chart ---------------------------------------------------------------------------------


def observations() -> list[Observation]:
    start = datetime(2026, 10, 25, 1, 0, tzinfo=timezone.utc)
    return [Observation("revenue.net_daily", start + timedelta(days=d), 14000.0 if d >= 28 else 20000.0 + 150 * (d % 7),
                        window_start=start + timedelta(days=d - 1, hours=-1), sha=SHA if d >= 28 else ALT,
                        anomalous=d >= 28, id=d) for d in range(30)]


def test_chart_is_a_png_of_the_metric_with_its_anomalies_marked():
    obs = observations()
    png = metric_chart("revenue.net_daily", obs, INCIDENT.baseline, obs[28].observed_at)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", png[16:24])  # IHDR
    assert (width, height) == (800, 320)
    pixels = imread(io.BytesIO(png))
    assert pixels.shape[:2] == (320, 800)
    red = (pixels[..., 0] > 0.7) & (pixels[..., 1] < 0.35) & (pixels[..., 2] < 0.35)
    assert red.sum() > 50  # the anomalous points and the first-bad annotation were drawn
    assert png == metric_chart("revenue.net_daily", obs, INCIDENT.baseline, obs[28].observed_at)


def test_each_day_is_drawn_against_the_band_its_own_baseline_drew():
    """A weekly metric: Sundays are low and their band is low; today's band is not smeared over five weeks."""
    start = datetime(2026, 10, 19, 1, tzinfo=timezone.utc)  # a Monday morning
    obs = [Observation("revenue.net_daily", start + timedelta(days=d), level, window_start=start + timedelta(days=d - 1),
                       expected=level, lower=0.9 * level, upper=1.1 * level, id=d)
           for d in range(35) for level in [11000.0 if (start + timedelta(days=d - 1)).weekday() == 6 else 20000.0]]
    obs.append(Observation("revenue.net_daily", start + timedelta(days=35), 9000.0, window_start=start + timedelta(days=34),
                           anomalous=True, expected=20000.0, lower=18000.0, upper=None, id=35))
    bands = day_bands(obs)
    assert all(lower <= o.value <= upper for (lower, upper, _), o in zip(bands[:35], obs))
    assert {round(expected) for _, _, expected in bands} == {11000, 20000}
    assert bands[-1] == (18000.0, 20000.0, 20000.0)  # a drop-only band: its open upper edge goes to the data's top
    assert all(math.isnan(x) for x in day_bands([obs[0], dataclasses.replace(obs[1], expected=None)])[1])  # unscored: a gap
    assert metric_chart("revenue.net_daily", obs, INCIDENT.baseline, obs[35].observed_at).startswith(b"\x89PNG")


def test_chart_without_observations_or_baseline_still_draws():
    png = metric_chart("orders.freshness", [], None, None)
    assert png.startswith(b"\x89PNG") and struct.unpack(">II", png[16:24]) == (800, 320)


def test_at_most_fifty_blocks_and_the_blocks_that_must_stay_are_kept():
    keep = [ActionsBlock(elements=[ButtonElement(text="Reject", action_id=ids.REJECT, value="7")])]
    fitted = _fit([DividerBlock() for _ in range(120)], "…", keep=keep)
    assert len(fitted) == MAX_BLOCKS and fitted[-1] is keep[0]
    assert fitted[-2].to_dict()["elements"][0]["text"] == "72 more sections not shown …"


def test_a_refused_verification_says_why_in_the_thread() -> None:
    refused = incident(IncidentStatus.escalated, verdict="refused", verification={
        "attempts": [], "builds": 0, "fix": None,
        "refused": {"reason": "estimated 3.2 TB exceeds the budget", "estimated_bytes": 3_200_000_000_000,
                    "budget_bytes": 1_000_000_000_000}})
    [step] = [s for s in thread_steps(refused, None) if s.key == "verification"]
    assert step.title == "Verification refused"
    assert step.lines == ("estimated 3.2 TB exceeds the budget",
                          "Estimated 3,200,000,000,000 bytes against a budget of 1,000,000,000,000")


def test_a_card_says_when_the_llms_answer_was_not_used_but_not_when_no_key_is_set():
    unusable = dataclasses.replace(RANKING, note=UNAVAILABLE.format(reason="the answer is not JSON"))
    asked = incident(IncidentStatus.verifying, attribution={**ATTRIBUTION, "ranking": to_json(unusable)})
    fields = " ".join(texts(serialized(incident_card(asked, None, Mode.assisted, None))))
    assert "LLM re-ranking unavailable (the answer is not JSON); kept the scorer's ranking" in fields
    keyless = dataclasses.replace(RANKING, note=UNAVAILABLE.format(reason=NO_KEY))
    unasked = incident(IncidentStatus.verifying, attribution={**ATTRIBUTION, "ranking": to_json(keyless)})
    assert "re-ranking unavailable" not in " ".join(texts(serialized(incident_card(unasked, None, Mode.assisted,
                                                                                    None))))


def test_a_held_incident_says_what_the_kill_switch_stopped_while_it_covers_it():
    held = incident(IncidentStatus.verifying, attribution=ATTRIBUTION,
                    held={"stage": "verify", "would": "build the revert of its suspects on a sandbox clone",
                          "by": "slack:U1", "reason": "quarter close"})
    pulled = KillSwitch(reason="quarter close", by="slack:U1")
    text = "\n".join(texts(serialized(incident_card(held, None, Mode.assisted, pulled))))
    assert "Held by the kill switch: Cairn would now build the revert of its suspects on a sandbox clone" in text
    released = "\n".join(texts(serialized(incident_card(held, None, Mode.assisted, None))))
    assert "Held by the kill switch" not in released


# -- a failed production run's incident ----------------------------------------------------------

NODE = "test.shop.not_null_fct_orders_customer_id.d7fcf15f79"
HOSTILE_ERROR = ("Got 2034 results, configured to fail if != 0\n``` <!channel> *bold* <https://evil.example|x>\n"
                 "compiled at postgres://cairn:hunter2@db/shop with xoxb-1234567890-abcdefghij")
RUN = {"node": NODE, "kind": "test_failure", "summary": "test not_null on fct_orders.customer_id failed: 2034 rows",
       "error": HOSTILE_ERROR, "invocation_id": "83d1547c-aaaa", "last_invocation_id": "91e0aa02-bbbb",
       "last_failed_at": AT, "failures": 2, "last_green_invocation_id": "0c4f2e19-cccc", "failing_rows": 2034,
       "stale": (NODE, "model.shop.fct_revenue", "model.shop.fct_margin")}
RUN_FIX = dataclasses.replace(FIX, before=2034.0, after=0.0, detail="", deltas=(),
                              dbt_command=f"dbt build --select {NODE}+ model.shop.fct_revenue+ --defer --favor-state")
MODEL_FIX = dataclasses.replace(RUN_FIX, before=None, after=None)


def run_verified(fix: Verification) -> dict:
    return {"verification": {"attempts": to_json([fix]), "builds": 1, "fix": to_json(fix)}, "verdict": "verified"}


RUN_INCIDENT = dataclasses.replace(INCIDENT, contract_id="run:" + NODE, value=2034.0, baseline=None, change_pct=None,
                                   reason=RUN["summary"])


def run_incident(status: IncidentStatus, run: dict = RUN, **details) -> Incident:
    return dataclasses.replace(RUN_INCIDENT, status=status, details=IncidentDetails.model_validate({"run": run,
                                                                                                   **details}))


def test_a_failed_runs_card_names_the_node_and_shows_dbts_error_as_code():
    card = incident_card(run_incident(IncidentStatus.detected), None, Mode.assisted, None)
    blocks = serialized(card)
    assert card.blocks[0].text.text == ("Failed run: test not_null_fct_orders_customer_id — 2,034 failing rows · "
                                        "high severity")
    assert card.text.startswith("Detected: Failed run: test not_null_fct_orders_customer_id — 2,034 failing rows "
                                "test failure in the production run at 5a20dc5, 2 runs in a row")
    run = card.blocks[2].text.text
    assert run.startswith(f"*test failure* in `{NODE}`\nRun `83d1547c-aaaa` at 5a20dc5, failing again in "
                          "`91e0aa02-bbbb` (2 runs) · last green run `0c4f2e19-cccc`\n"
                          "Left stale by the run: 2 nodes\n```\nGot 2034 results, configured to fail if != 0\n")
    assert run.endswith("```") and run.count("```") == 2  # dbt's backticks cannot close the block early
    assert "&lt;!channel&gt; *bold* &lt;https://evil.example|x&gt;" in run
    everything = "\n".join(texts(blocks))
    assert "hunter2" not in everything and "xoxb-1234567890" not in everything and "postgres://***@db" in everything
    assert "<!channel>" not in everything and "<https://evil" not in everything
    assert "failed run 2026-11-23 01:00 at 5a20dc5" in everything and "last green run 2026-11-22" in everything
    assert "run:test." not in everything and "run:test." not in card.text  # the raw contract_id is nowhere
    assert set(actions(card)) == {ids.REJECT, ids.MODE, ids.KILL}


def test_a_failed_models_card_says_its_class_and_cuts_a_long_error():
    run = {**RUN, "node": "model.shop.stg_refunds", "kind": "runtime_sql", "failing_rows": None, "failures": 1,
           "stale": (), "error": "Runtime Error in model stg_refunds\n" + "near `x` & <y>\n" * 400}
    pr = dataclasses.replace(PR, title="Revert 5a20dc5: Only count settled payment methods (stg_refunds failed)")
    card = incident_card(run_incident(IncidentStatus.pr_opened, run, attribution=ATTRIBUTION,
                                      **run_verified(MODEL_FIX), **DECIDED),
                         pr, Mode.assisted, None, evidence_url=URL)
    blocks = serialized(card)
    assert card.blocks[0].text.text == "Failed run: model stg_refunds — runtime SQL error · high severity"
    error = card.blocks[2].text.text
    assert error.startswith("*runtime SQL error* in `model.shop.stg_refunds`\nRun `83d1547c-aaaa` at 5a20dc5 · "
                            "last green run `0c4f2e19-cccc`\n```\nRuntime Error in model stg_refunds\nnear `x` &amp; "
                            "&lt;y&gt;\n")
    assert len(error) < 1400 and error.endswith("…\n```") and "&amp\n" not in error  # cut, never inside an entity
    everything = "\n".join(texts(blocks))
    assert "5a20dc5 · models/int_order_payments.sql (99%)" in everything  # the suspect, as a metric card shows it
    assert "*Verdict*\nverified on duckdb:incident-7-275f69, the failed run's nodes build and pass" in everything
    assert "Revert 5a20dc5" in everything
    assert ids.APPROVE in actions(card)


@pytest.mark.parametrize("kind", ["compilation", "runtime_sql"])
def test_a_failed_models_notification_says_its_class_once(kind):
    run = {**RUN, "node": "model.shop.stg_refunds", "kind": kind, "failing_rows": None, "failures": 1}
    card = incident_card(run_incident(IncidentStatus.detected, run), None, Mode.assisted, None)
    label = KIND_LABEL[kind]
    assert card.blocks[0].text.text == f"Failed run: model stg_refunds — {label} · high severity"
    assert card.text.startswith(f"Detected: Failed run: model stg_refunds — {label} in the production run at 5a20dc5 "
                                "(incident #")  # not "— compilation error compilation error in the production run"


def test_a_failed_runs_thread_tells_the_run_not_a_metric():
    failed = run_incident(IncidentStatus.verified, attribution=ATTRIBUTION, **run_verified(RUN_FIX))
    by_key = {s.key: s.lines for s in thread_steps(failed, None, baseline_days=28)}
    assert by_key["detected"] == (
        RUN["summary"], "test failure in the production run at 5a20dc5, 2 runs in a row",
        f"Node: {NODE} (2,034 failing rows)", "Run: 83d1547c-aaaa, failing again in 91e0aa02-bbbb (2 runs)",
        "Left stale by the run: model.shop.fct_revenue, model.shop.fct_margin", "dbt said:",
        "Got 2034 results, configured to fail if != 0", "``` <!channel> *bold* <https://evil.example|x>",
        "compiled at postgres://***@db/shop with xoxb-***",
        "Failed run: 2026-11-23 01:00 at 5a20dc5", "Last green run: 2026-11-22 01:00 at 2b7a91d")
    assert by_key["attribution"][0].startswith("Commits in the suspect range that touch the failing node's lineage")
    assert ("verified on duckdb:incident-7-275f69: 2,034 → 0 failing rows, the failed run's nodes build and pass"
            in by_key["verification"])
    card = "\n".join(texts(serialized(incident_card(failed, None, Mode.assisted, None))))
    assert "*Verdict*\nverified on duckdb:incident-7-275f69: 2,034 → 0 failing rows, the failed run's nodes" in card
    posted = "\n".join(texts(serialized(thread_message(thread_steps(failed, None)[0]))))
    assert "&lt;!channel&gt;" in posted and "<!channel>" not in posted

    merged = dataclasses.replace(PR, state="merged")
    recovered = dataclasses.replace(run_incident(IncidentStatus.recovered), resolved_at=AT + timedelta(days=1), reason="built green in run 7a1")
    tail = thread_steps(recovered, merged)
    assert tail[-1].lines == ("2026-11-24 01:00 UTC: built green in run 7a1",
                              "A production run after the merged revert built and passed the node")
    assert tail[0].lines == ("Failed run: 2026-11-23 01:00 at 5a20dc5", "Last green run: 2026-11-22 01:00 at 2b7a91d")


def test_a_failed_runs_incident_in_the_terminal_names_the_node():
    failed = run_incident(IncidentStatus.detected)
    assert incident_line(failed).split() == ["#7", "failed:", "test", "not_null_fct_orders_customer_id", "Detected",
                                             "test_failure", "high", "since", "2026-11-23", "01:00"]
    detail = incident_detail(failed, [])
    assert detail.splitlines()[:5] == [
        "Incident #7 · Failed run: test not_null_fct_orders_customer_id — 2,034 failing rows · Detected · high",
        f"  {RUN['summary']}", "  failed run: 2026-11-23 01:00 at 5a20dc5", "  last green run: 2026-11-22 01:00 at "
        "2b7a91d", f"  node: {NODE} (test_failure), run 83d1547c-aaaa"]
    assert "    compiled at postgres://***@db/shop with xoxb-***" in detail and "hunter2" not in detail
    verified = incident_detail(run_incident(IncidentStatus.verified, attribution=ATTRIBUTION,
                                            **run_verified(RUN_FIX)), [])
    assert "  verdict: verified on duckdb:incident-7-275f69: 2,034 → 0 failing rows" in verified.splitlines()


def test_every_failure_class_has_words_for_the_card():
    from jobs.core.runs import FailureKind

    assert set(KIND_LABEL) == {kind.value for kind in FailureKind}
    assert all(label and "_" not in label for label in KIND_LABEL.values())
