"""The jobs that post and update Slack: one card per incident, kept current, its story threaded under it.

`notify_incident` is enqueued (by dotted path, from `jobs.loop.queue`) after every stage and every
action. It re-reads the incident and renders everything from the store, so any number of runs
converge on the same card: the card is posted once and then updated in place with `chat.update`
on the stored channel and `ts` (never `response_url`, which expires after 30 minutes); each
thread step and the chart are posted once. "Once" is held by a claim in the store taken before
posting (`jobs.store.chat`), so two workers refreshing the same incident never post twice; and
each job re-renders after its own card update and updates again if the store moved meanwhile, so
an older render landing last never leaves the card behind.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from slack_sdk import WebClient

from bot.cards import Message, incident_card, mentions, thread_message
from bot.chart import metric_chart
from bot.slack import alert_channel, web_client
from bot.thread import thread_steps
from jobs.attribute import groups
from jobs.core.errors import ConfigError
from jobs.core.records import Incident, PullRequest
from jobs.runtime import Runtime
from jobs.store import switches
from jobs.store.chat import ChatMessage

log = logging.getLogger(__name__)

CARD, CHART = "card", "chart"
CHART_DAYS = 42  # six weeks: the 28-day baseline and the incident after it
MAX_CARD_REFRESHES = 3  # the store rarely moves more than once during one update; the next job follows


def notify_incident(incident_id: int, rt: Runtime | None = None) -> None:
    """Post or update the incident's card, then post the thread steps and chart not posted yet."""
    with _runtime(rt) as rt:
        client = web_client(rt.config)
        if client is None:
            return  # no Slack configured: the CLI and the terminal are the surface
        incident = rt.store.incident(incident_id)
        pr = groups.pull_request(rt.store, incident)
        channel = alert_channel(rt.config)
        card = render_card(rt, incident, pr)
        card_ts = _post_once(rt, client, incident_id, CARD, channel, card, update=True)
        if card_ts is None:
            return  # another job is posting the card right now; its run posts the thread too
        incident, pr = _settle_card(rt, client, incident_id, card)
        days = _baseline_days(rt, incident)
        for step in thread_steps(incident, pr, baseline_days=days):
            _post_once(rt, client, incident_id, f"step:{step.key}", channel,
                       thread_message(step, evidence_url=pr.url if pr else None), thread_ts=card_ts)
        if incident.details.run is None:  # a failed run's node has no metric to chart
            _upload_chart_once(rt, client, incident, channel, card_ts)


def tell_user(channel: str, user: str, text: str, rt: Runtime | None = None) -> None:
    """An ephemeral note to one person (an approval refused after the click was acknowledged)."""
    with _runtime(rt) as rt:
        client = web_client(rt.config)
        if client is not None:
            client.chat_postEphemeral(channel=channel, user=user, text=mentions(text))


def render_card(rt: Runtime, incident: Incident, pr: PullRequest | None) -> Message:
    """The card as of now: the org's mode, and the kill switch if it covers the incident, are part of it."""
    mode = switches.org_mode(rt.store) or rt.policy.mode
    return incident_card(incident, pr, mode, rt.kill_switch_for(incident),
                         evidence_url=pr.url if pr else None, baseline_days=_baseline_days(rt, incident))


def _settle_card(rt: Runtime, client: WebClient, incident_id: int,
                 sent: Message) -> tuple[Incident, PullRequest | None]:
    """Update the card until it shows the store as it is now; the incident and PR it shows.

    Two notify jobs on different workers render at different moments, and the older render's
    `chat.update` can land last. Re-rendering after our own update and sending again when the
    store moved on means the last job to write leaves the newest card, whatever the order.
    """
    for _ in range(MAX_CARD_REFRESHES):
        incident = rt.store.incident(incident_id)
        pr = groups.pull_request(rt.store, incident)
        current = render_card(rt, incident, pr)
        if _same(current, sent):
            break
        _update(client, rt.store.chat_message(incident_id, CARD), current)
        sent = current
    return incident, pr


def _update(client: WebClient, posted: ChatMessage, message: Message) -> None:
    client.chat_update(channel=posted.channel, ts=posted.ts, text=message.text,
                       blocks=[b.to_dict() for b in message.blocks])


def _same(a: Message, b: Message) -> bool:
    return a.text == b.text and [x.to_dict() for x in a.blocks] == [y.to_dict() for y in b.blocks]


def _post_once(rt: Runtime, client: WebClient, incident_id: int, key: str, channel: str, message: Message,
               *, thread_ts: str | None = None, update: bool = False) -> str | None:
    """The message's ts: posted now if nobody had, else updated in place (`update`) or left alone."""
    store = rt.store
    posted = store.chat_message(incident_id, key)
    if posted is not None:
        if update:
            _update(client, posted, message)
        return posted.ts
    token = store.claim_chat_message(incident_id, key)
    if token is None:
        posted = store.chat_message(incident_id, key)
        return posted.ts if posted else None
    try:
        response = client.chat_postMessage(channel=channel, text=message.text, thread_ts=thread_ts,
                                           blocks=[b.to_dict() for b in message.blocks], unfurl_links=False)
    except BaseException:
        store.release_chat_claim(incident_id, key, token)
        raise
    store.record_chat_message(incident_id, key, token, response["channel"], response["ts"])
    return response["ts"]


def _upload_chart_once(rt: Runtime, client: WebClient, incident: Incident, channel: str, thread_ts: str) -> None:
    store = rt.store
    if store.chat_message(incident.id, CHART) is not None:
        return
    token = store.claim_chat_message(incident.id, CHART)
    if token is None:
        return
    try:
        since = incident.first_bad_at - timedelta(days=CHART_DAYS)
        png = metric_chart(incident.contract_id, store.observations(incident.contract_id, since=since),
                           incident.baseline, incident.first_bad_at)
        response = client.files_upload_v2(
            channel=channel, thread_ts=thread_ts, content=png, filename=f"cairn-incident-{incident.id}.png",
            title=f"{incident.contract_id}: observations and baseline band",
            alt_txt=f"{incident.contract_id} over {CHART_DAYS} days with its baseline band; the anomaly is marked")
    except BaseException:
        store.release_chat_claim(incident.id, CHART, token)
        raise
    store.record_chat_message(incident.id, CHART, token, channel, response["file"]["id"])


def _baseline_days(rt: Runtime, incident: Incident) -> int | None:
    try:
        return rt.contract(incident.contract_id).baseline.days
    except ConfigError:  # the contract was removed since: the card still renders, without the span
        return None


@contextmanager
def _runtime(rt: Runtime | None) -> Iterator[Runtime]:
    """The caller's Runtime (in-process), or one of our own (an RQ job: from $CAIRN_CONFIG).

    Ours does not run dbt: a card renders from the store, cairn.yml and the manifest the last check's parse
    left on disk, so a refresh takes a fraction of a second instead of a project parse (a worker whose disk
    has no manifest yet parses once, so the contracts and a selector kill switch's coverage stay right).
    """
    if rt is not None:
        yield rt
        return
    from jobs.config import load_config

    own = Runtime(load_config(), parse=False)
    try:
        yield own
    finally:
        own.close()
