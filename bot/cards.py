"""Slack messages for an incident: the card in the alert channel, its thread, the reject modal.

Pure functions from Cairn's records to `slack_sdk.models` Block Kit objects. Text from the
repository or the warehouse (commit messages, SQL, sample rows) is escaped before it is placed in
mrkdwn, and every text object is `verbatim`, so nothing Cairn relays can mention a channel or
forge a link: only the links built here are links.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ConfirmObject,
    ContextBlock,
    HeaderBlock,
    InputBlock,
    MarkdownTextObject,
    Option,
    PlainTextInputElement,
    PlainTextObject,
    SectionBlock,
    StaticSelectElement,
)
from slack_sdk.models.views import View

from bot import ids
from bot.messages import (
    HELD,
    KIND_LABEL,
    STATUS_LABEL,
    TRIAGE_LABEL,
    chain_lines,
    fix_phrase,
    group_lines,
    headline,
    headline_and_regression,
    left_group_line,
    regression,
    short_sha,
)
from bot.thread import (
    Step,
    cause_phrase,
    decision_phrase,
    incident_pr,
    merge_refusal,
    moment,
    proof_phrase,
    run_proof,
    thread_steps,
)
from jobs.attribute.llm import NO_KEY
from jobs.core.records import Incident, IncidentStatus, PullRequest, RunDetail
from jobs.core.report import loop_json
from jobs.propose.prbody import redact
from policies.decide import KillSwitch
from policies.model import Mode

# Block Kit limits (docs.slack.dev/reference/block-kit/blocks and each block's page): 50 blocks per
# message, section text 3,000 characters and fields 2,000, header 150, context 10 elements, button text 75.
MAX_BLOCKS = 50
SECTION_TEXT = 3000
HEADER_TEXT = 150
CONTEXT_ELEMENTS = 10
BUTTON_TEXT = 75
# Slack also refuses blocks whose total is too long (`msg_blocks_too_long`) at about 13,000
# characters, below every documented limit (slackapi/bolt-js#2509): keep serialized blocks under 12,000.
BLOCKS_BUDGET = 12_000
# The card is a summary and the thread carries the detail: a card field never needs Slack's 2,000.
CARD_FIELD = 500
PR_LABEL = 200  # a PR title is cut before it becomes a link label, so the field's cut never splits a link
# `text` is truncated at 40,000 characters and split above 4,000 (api.slack.com/changelog/
# 2018-04-truncating-really-long-messages); as the notification fallback it needs a line or two.
FALLBACK_TEXT = 1000
ERROR_TEXT = 1200  # dbt's error on a run incident's card: its first lines; the thread and the PR say the rest

STATUS_EMOJI = {
    IncidentStatus.detected: ":rotating_light:",
    IncidentStatus.attributing: ":mag:",
    IncidentStatus.verifying: ":hourglass_flowing_sand:",
    IncidentStatus.verified: ":white_check_mark:",
    IncidentStatus.not_verified: ":x:",
    IncidentStatus.pr_opened: ":memo:",
    IncidentStatus.merged: ":twisted_rightwards_arrows:",
    IncidentStatus.recovered: ":large_green_circle:",
    IncidentStatus.escalated: ":raising_hand:",
    IncidentStatus.rejected: ":no_entry_sign:",
    IncidentStatus.errored: ":warning:",
    IncidentStatus.resolved: ":white_circle:",
}
# Nothing is left to decide: the revert is merged, or the incident is closed.
DECIDED = {IncidentStatus.merged, IncidentStatus.recovered, IncidentStatus.resolved, IncidentStatus.rejected}
# Statuses whose thread step says why the card stopped where it did.
EXPLAINED = {IncidentStatus.errored, IncidentStatus.rejected, IncidentStatus.recovered, IncidentStatus.resolved}
MODE_LABEL = {
    Mode.observe: "Observe: record what Cairn would do",
    Mode.assisted: "Assisted: open PRs, a human merges",
    Mode.autonomous: "Autonomous: merge allowlisted reverts",
}


@dataclass(frozen=True)
class Message:
    """What `chat.postMessage` / `chat.update` send: blocks and their plain-text fallback."""

    blocks: list[Block]
    text: str  # never empty: notifications and screen readers show it


# -- text --------------------------------------------------------------------------------------

def escape(text: str) -> str:
    """Slack's three control characters as entities, so relayed text cannot mention or link."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_ACTOR = re.compile(r"\bslack:([UW][A-Z0-9]{2,})\b")


def mentions(text: str) -> str:
    """People as the store names them ('slack:U123') as Slack mentions ('<@U123>'); for Slack's surfaces only."""
    return _ACTOR.sub(r"<@\1>", text)


def _cut(text: str, limit: int, more: str = "…") -> str:
    """At most `limit` characters, ending in `more` when cut; never inside an entity like `&amp;`."""
    if len(text) <= limit:
        return text
    kept = text[: limit - len(more)]
    entity = kept.rfind("&")
    if entity > kept.rfind(";"):
        kept = kept[:entity]
    return kept + more


def _more(evidence_url: str | None) -> str:
    return f"… full evidence: {_link(evidence_url, evidence_url)}" if evidence_url else "…"


def _link(url: str, label: str) -> str:
    return f"<{escape(url).replace('|', '%7C')}|{escape(label)}>"


def _mrkdwn(text: str) -> MarkdownTextObject:
    # verbatim: Slack must not turn relayed words into @channel mentions or links on its own.
    return MarkdownTextObject(text=text, verbatim=True)


def _section(text: str, more: str = "…") -> SectionBlock:
    return SectionBlock(text=_mrkdwn(_cut(text, SECTION_TEXT, more)))


def _fallback(text: str) -> str:
    return _cut(escape(" ".join(text.split())), FALLBACK_TEXT) or "Cairn"


def _size(block: Block) -> int:
    return len(json.dumps(block.to_dict()))  # as the SDK sends it: non-ASCII escaped, so never undercounted


def _fit(blocks: Sequence[Block], more: str, keep: Sequence[Block] = ()) -> list[Block]:
    """`blocks` then `keep` within MAX_BLOCKS and BLOCKS_BUDGET; what does not fit becomes one line saying so."""
    reserved = sum(map(_size, keep))
    if len(blocks) + len(keep) <= MAX_BLOCKS and sum(map(_size, blocks)) + reserved <= BLOCKS_BUDGET:
        return [*blocks, *keep]
    room, kept = BLOCKS_BUDGET - reserved - _size(_omitted(len(blocks), more)), []
    for block in blocks:
        room -= _size(block)
        if room < 0 or len(kept) + len(keep) + 2 > MAX_BLOCKS:
            break
        kept.append(block)
    return [*kept, _omitted(len(blocks) - len(kept), more), *keep]


def _omitted(count: int, more: str) -> ContextBlock:
    return ContextBlock(elements=[_mrkdwn(f"{count} more sections not shown {more}")])


# -- the incident card -------------------------------------------------------------------------

def incident_card(incident: Incident, pr: PullRequest | None, mode: Mode, kill: KillSwitch | None, *,
                  evidence_url: str | None = None, baseline_days: int | None = None) -> Message:
    """The card in the alert channel, updated in place as the status moves; `mode` is the org's mode, `kill`
    the kill switch if it covers this incident (then Approve is not offered)."""
    pr = incident_pr(incident, pr)
    more = _more(evidence_url)
    label = STATUS_LABEL[incident.status]
    status = f"{STATUS_EMOJI[incident.status]} *{label}* · {escape(regression(incident, baseline_days))}"
    content: list[Block] = [
        HeaderBlock(text=PlainTextObject(text=_cut(f"{headline(incident)} · {incident.severity} severity",
                                                   HEADER_TEXT), emoji=False)),
        _section("\n".join([status, *map(escape, _held(incident, kill) + _why(incident, pr))]), more),
        *([_run_block(incident, incident.details.run)] if incident.details.run else []),
        SectionBlock(fields=[_mrkdwn(_cut(f"*{name}*\n{value}", CARD_FIELD, more))
                             for name, value in _facts(incident, pr, mode, kill)]),
        ContextBlock(elements=_context(incident, evidence_url)),
    ]
    actions = [] if incident.status in DECIDED else [_actions(incident, pr, mode, kill)]
    return Message(blocks=_fit(content, more, keep=actions),
                   text=_fallback(f"{label}: {headline_and_regression(incident, baseline_days)} "
                                  f"(incident #{incident.id}, {incident.severity})"))


def _run_block(incident: Incident, run: RunDetail) -> SectionBlock:
    """The failing node, its class, the run it failed in and dbt's error as a code block."""
    stale = [uid for uid in run.stale if uid != run.node]
    facts = [f"*{escape(KIND_LABEL.get(run.kind, run.kind))}* in `{escape(run.node)}`",
             f"Run `{escape(run.invocation_id)}` at {short_sha(incident.first_bad_sha)}"
             + (f", failing again in `{escape(run.last_invocation_id)}` ({run.failures} runs)" if run.failures > 1
                else "")
             + (f" · last green run `{escape(run.last_green_invocation_id)}`" if run.last_green_invocation_id else ""),
             *([f"Left stale by the run: {len(stale)} node{'s' * (len(stale) != 1)}"] if stale else [])]
    return _section("\n".join([*facts, code_block(run.error or "(dbt gave no message)", ERROR_TEXT)]))


def code_block(text: str, limit: int) -> str:
    """`text` as a mrkdwn code block: credentials masked, escaped, cut, and unable to close the block early."""
    lines = [redact(line) for line in text.splitlines()]
    # A zero-width space between backticks: relayed text never ends the block and turns the rest into mrkdwn.
    body = _cut(escape("\n".join(lines)).replace("``", "`\u200b`"), limit)
    return f"```\n{body}\n```"


def _why(incident: Incident, pr: PullRequest | None) -> list[str]:
    """Detection's reason while the incident runs; how it ended, or why it stopped, once it has."""
    if incident.status not in EXPLAINED:
        left, refused = left_group_line(incident), merge_refusal(incident)  # a refused merge first: it waits on people
        return [*([refused] if refused else []), incident.reason, *chain_lines(incident), *group_lines(incident),
                *([left] if left else [])]
    return [line for step in thread_steps(incident, pr) if step.key == incident.status.value for line in step.lines]


def _held(incident: Incident, kill: KillSwitch | None) -> list[str]:
    """What the kill switch stopped, while it still covers the incident."""
    held = incident.details.held
    return [HELD.format(would=held.would)] if held and kill is not None and incident.status.is_open else []


def _facts(incident: Incident, pr: PullRequest | None, mode: Mode, kill: KillSwitch | None) -> list[tuple[str, str]]:
    """Top cause, verdict, decision, PR, mode and kill switch: the card's two-column fields."""
    loop = loop_json(incident.details)
    top = loop["top_cause"]
    cause = escape(cause_phrase(top["sha"], top["files"], top["confidence"])) if top else "not attributed yet"
    if top and (note := _fallback_note(incident)):
        cause += f"\n_{escape(note)}_"
    run, draft = incident.details.run, incident.details.fix_draft
    if draft is not None and loop["verdict"]:  # no commit caused it: the fix Cairn wrote is what is on offer
        cause = escape(f"no commit: {draft.relation} no longer has {draft.missing}; Cairn's fix: {fix_phrase(draft)}")
    verdict = (escape(proof_phrase(loop["verdict"], loop["clone_id"], loop["before"], loop["after"], rows=bool(run))
                      + (f", {run_proof(loop['verdict'])}" if run and loop["clone_id"] else ""))
               if loop["verdict"] else "not verified yet")
    found = incident.details.triage
    facts = [("Triage", escape(f"{TRIAGE_LABEL[found.kind]}: {found.evidence[0]}") if found else "not yet"),
             ("Top cause", cause), ("Verdict", verdict)]
    if loop["decision"]:
        facts.append(("Decision", escape(decision_phrase(incident.details.decision))))
    facts += [("Pull request", _pr_text(pr)), ("Mode", MODE_LABEL[mode]), ("Kill switch", _kill_text(kill))]
    return facts


def _fallback_note(incident: Incident) -> str | None:
    """Why the LLM's ranking was not used, when it was asked and its answer could not be (not when no key is set)."""
    details = incident.details
    ranking = details.ranking or (details.suspects.ranking if details.suspects else None)
    if ranking is None or ranking.ranker != "scorer" or not ranking.note or NO_KEY in ranking.note:
        return None
    return ranking.note


def _pr_text(pr: PullRequest | None) -> str:
    if pr is None:
        return "none"
    if pr.url:
        return f"{_link(pr.url, _cut(f'#{pr.number} {pr.title}', PR_LABEL))} ({escape(pr.state)})"
    return f"#{pr.number} on branch `{escape(pr.branch)}` ({escape(pr.state)})"


def _kill_text(kill: KillSwitch | None) -> str:
    if kill is None:
        return "off"
    scope = f"for {', '.join(kill.selectors)}" if kill.selectors else "for the whole org"
    return mentions(escape(f":octagonal_sign: pulled {scope} by {kill.by}: {kill.reason}. No clone, build, PR or "
                           "merge for this incident; Cairn only reads production."))


def _context(incident: Incident, evidence_url: str | None) -> list[MarkdownTextObject]:
    bad, good = ("failed run", "last green run") if incident.details.run else ("first bad", "last good")
    elements = [
        f"Incident #{incident.id}",
        f"{bad} {escape(moment(incident.first_bad_at, incident.first_bad_sha))}",
        f"{good} {escape(moment(incident.last_good_at, incident.last_good_sha))}",
    ]
    if evidence_url:
        elements.append(_link(evidence_url, "full evidence"))
    return [_mrkdwn(_cut(text, SECTION_TEXT)) for text in elements[:CONTEXT_ELEMENTS]]


def _actions(incident: Incident, pr: PullRequest | None, mode: Mode, kill: KillSwitch | None) -> ActionsBlock:
    value = ids.button_value(incident.id)
    elements = []
    if pr is not None and pr.state == "open" and kill is None:
        # The value binds the head the card showed: an approval never merges commits nobody saw.
        elements.append(_button(f"Approve & merge #{pr.number}", ids.APPROVE,
                                ids.button_value(incident.id, pr.head_sha), style="primary"))
    elements.append(_button("Reject", ids.REJECT, value, style="danger"))
    options = {m: Option(value=m.value, text=_cut(MODE_LABEL[m], BUTTON_TEXT)) for m in Mode}
    elements.append(StaticSelectElement(action_id=ids.MODE, placeholder="Switch mode", options=list(options.values()),
                                        initial_option=options[mode]))
    if kill is None:
        elements.append(_button("Kill switch", ids.KILL, value, style="danger", confirm=ConfirmObject(
            title="Pull the kill switch?",
            text=PlainTextObject(text="Every Cairn job stops before its next side effect: no clone, no sandbox "
                                      "build, no pull request, no merge until the switch is released."),
            confirm="Pull it", deny="Cancel", style="danger")))
    else:
        elements.append(_button("Release kill switch", ids.UNKILL, value, confirm=ConfirmObject(
            title="Release the kill switch?",
            text=PlainTextObject(text=f"Cairn acts in {mode.value} mode again from its next step."),
            confirm="Release", deny="Cancel")))
    return ActionsBlock(elements=elements)


def _button(text: str, action_id: str, value: str, *, style: str | None = None,
            confirm: ConfirmObject | None = None) -> ButtonElement:
    return ButtonElement(text=PlainTextObject(text=_cut(text, BUTTON_TEXT), emoji=False), action_id=action_id,
                         value=value, style=style, confirm=confirm)


# -- the thread, the modal, replies ------------------------------------------------------------

def thread_message(step: Step, evidence_url: str | None = None) -> Message:
    """One step of the incident's story, threaded under its card."""
    more = _more(evidence_url)
    chunks, current = [], f"*{escape(step.title)}*"
    for line in step.lines:
        line = mentions(_cut(escape(line), SECTION_TEXT, more))
        if len(current) + 1 + len(line) > SECTION_TEXT:
            chunks.append(current)
            current = line
        else:
            current = f"{current}\n{line}"
    chunks.append(current)
    first = step.lines[0] if step.lines else ""
    return Message(blocks=_fit([_section(chunk, more) for chunk in chunks], more),
                   text=mentions(_fallback(f"{step.title}: {first}")))


def reject_modal(incident_id: int) -> View:
    """Asks why: a rejection without a reason teaches nobody anything."""
    return View(
        type="modal", callback_id=ids.REJECT_MODAL, private_metadata=str(incident_id),
        title=PlainTextObject(text="Reject the revert"), submit=PlainTextObject(text="Reject"),
        close=PlainTextObject(text="Cancel"),
        blocks=[
            _section(f"Incident #{incident_id} is closed without merging its revert. The reason is audited "
                     "and shown on the card."),
            InputBlock(block_id=ids.REJECT_REASON_BLOCK, label=PlainTextObject(text="Why reject it?"), optional=False,
                       element=PlainTextInputElement(action_id=ids.REJECT_REASON_INPUT, multiline=True,
                                                     min_length=3, max_length=500)),
        ],
    )


def ephemeral(text: str) -> Message:
    """A short reply only the person who acted sees (`chat.postEphemeral`, `respond`)."""
    return Message(blocks=[_section(escape(text))], text=_fallback(text))
