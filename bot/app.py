"""The Bolt app: one routing table from Slack's requests to Cairn's actions.

Every listener acknowledges at once and only reads or writes the store and enqueues jobs: Bolt
runs listeners on a small thread pool, and a merge or a dbt build there would starve every
other click. Listeners run before the HTTP answer (`process_before_response`), so a failure after the
ack reaches the one error handler while the request is still open: it tells the person (with an
error ID) and answers Slack with the ack, never a 404 or 500. `bot.server` verifies each request's
signature and age before anything parses it; Bolt checks them again. Bolt does
not de-duplicate: a request Slack re-sends (`X-Slack-Retry-Num`) is acknowledged and dropped, and
a repeated click (same user and `action_ts`) is acknowledged and ignored.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from typing import Any

from slack_bolt import App, BoltResponse
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot import ids, messages
from bot.approvers import Approvers
from bot.cards import escape, mentions, reject_modal
from bot.commands import Invocation, pull_kill_switch, release_kill_switch, run_command, set_mode
from jobs.attribute import groups
from jobs.core.errors import CairnError, NotFound
from jobs.core.masking import mask
from jobs.core.records import IncidentStatus
from jobs.loop.queue import Jobs
from jobs.runtime import Runtime
from policies.model import Mode

log = logging.getLogger(__name__)

CLICK_MEMORY = 600  # seconds a click is remembered; Slack's own retries come within a minute
LISTENER_THREADS = 8


def create_app(rt: Runtime, jobs: Jobs, client: WebClient, *, signing_secret: str,
               clicks: "Clicks | None" = None) -> App:
    """The app, wired to one Runtime (store, config) and the job queue; no listener does slow work."""
    from concurrent.futures import ThreadPoolExecutor

    app = App(client=client, signing_secret=signing_secret, logger=log, process_before_response=True,
              listener_executor=ThreadPoolExecutor(max_workers=LISTENER_THREADS, thread_name_prefix="bolt"))
    approvers = Approvers(rt.config.settings.slack.approvers, client)
    clicks = clicks or Clicks()

    @app.middleware
    def drop_slack_retries(request, next):  # noqa: A002 - Bolt's argument name
        if request.headers.get("x-slack-retry-num"):
            return BoltResponse(status=200, body="")  # the first delivery was handled
        return next()

    def say(channel: str, user: str, text: str) -> None:
        """An ephemeral note to the person who acted; people in it appear as mentions."""
        client.chat_postEphemeral(channel=channel, user=user, text=mentions(escape(text)))

    @app.error
    def explain_error(error: Exception, body: dict[str, Any], request) -> BoltResponse:
        """The one error handler: what escaped a listener becomes an ephemeral note; Slack gets the ack."""
        user, channel = _who(body)
        text = explain(error)
        if user and channel:
            try:
                say(channel, user, text)
            except SlackApiError as exc:  # the error ID is in the log already
                log.warning("could not tell %s about the error: %s", user, exc.response.get("error"))
        return request.context.ack.response or BoltResponse(status=200, body="")

    @app.command("/cairn")
    def cairn_command(ack, command: dict[str, Any]) -> None:
        user = command["user_id"]
        try:
            reply = run_command(rt, jobs, command.get("text", ""),
                                Invocation(f"slack:{user}", approvers.may_act(user)))
        except Exception as exc:  # answered in the ack: the person sees why at once
            reply = explain(exc)
        # Replies relay repository and dbt text (`/cairn show`, `/cairn runs`): escaped, they cannot mention or link.
        ack(text=mentions(escape(reply)), response_type="ephemeral")

    def action(handler: Callable[[dict[str, Any], dict[str, Any], str], str | None]) -> Callable:
        """Ack, drop repeated clicks, check the approver, run `handler`, tell the person the outcome."""

        def listener(ack, body: dict[str, Any]) -> None:
            ack()
            act = body["actions"][0]
            user, channel = _who(body)
            if not clicks.first(user, act.get("action_ts", "")):
                log.info("repeated click %s by %s ignored", act["action_id"], user)
                return
            if not approvers.may_act(user):
                rt.store.audit("action.refused", actor=f"slack:{user}",
                               incident_id=_incident_of(rt, act), data={"action": act["action_id"]})
                say(channel, user, messages.NOT_AN_APPROVER)
                return
            reply = handler(body, act, f"slack:{user}")
            if reply:
                say(channel, user, reply)

        listener.__name__ = handler.__name__
        return listener

    def approve(body, act, actor) -> str | None:
        incident_id, head_sha = ids.parse_value(act["value"])
        incident = rt.store.incident(incident_id)
        if (kill := rt.kill_switch_for(incident)) is not None:  # first: nothing else is said or queued
            refusal = messages.KILLED_APPROVAL.format(reason=kill.reason, by=kill.by, incident=incident_id)
            rt.store.audit("approval.refused", incident_id=incident_id, actor=actor,
                           data={"head_sha": head_sha, "reason": refusal})
            jobs.notify(incident_id)  # a card still offering Approve is refreshed without it
            return refusal
        pr = groups.pull_request(rt.store, incident)  # a member's is its group's
        if pr is None or head_sha is None:
            return f"Incident #{incident_id} has no pull request to approve."
        if pr.head_sha != head_sha:
            rt.store.audit("approval.stale", incident_id=incident_id, actor=actor,
                           data={"shown": head_sha, "head": pr.head_sha})
            jobs.notify(incident_id)
            return messages.STALE_APPROVAL.format(number=pr.number, shown=head_sha[:7], head=pr.head_sha[:7])
        rt.store.audit("approval.requested", incident_id=incident_id, actor=actor, data={"head_sha": head_sha})
        jobs.review("approve", incident_id, actor, head_sha, reply_to=body["channel"]["id"])
        return f"Approved: merging PR #{pr.number} at {head_sha[:7]}; the card updates when it is merged."

    def reject(body, act, actor) -> str | None:
        incident_id, _ = ids.parse_value(act["value"])
        incident = rt.store.incident(incident_id)
        if not incident.status.is_open or incident.status is IncidentStatus.merged:
            return f"Incident #{incident_id} is {incident.status.value}: nothing to reject."
        modal = reject_modal(incident_id)
        # The reply goes back to the card's channel: remember it with the incident ID.
        modal.private_metadata = f"{incident_id}:{body['channel']['id']}"
        client.views_open(trigger_id=body["trigger_id"], view=modal)
        return None

    def switch_mode(body, act, actor) -> str | None:
        mode = Mode(act["selected_option"]["value"])
        return set_mode(rt, jobs, mode, actor, reason="incident card")

    def kill(body, act, actor) -> str | None:
        return pull_kill_switch(rt, jobs, f"pulled from the incident card by {actor}", actor)

    def unkill(body, act, actor) -> str | None:
        return release_kill_switch(rt, jobs, actor)

    app.action(ids.APPROVE)(action(approve))
    app.action(ids.REJECT)(action(reject))
    app.action(ids.MODE)(action(switch_mode))
    app.action(ids.KILL)(action(kill))
    app.action(ids.UNKILL)(action(unkill))

    @app.view(ids.REJECT_MODAL)
    def reject_submitted(ack, body: dict[str, Any], view: dict[str, Any]) -> None:
        ack()
        user = body["user"]["id"]
        incident_text, _, channel = view["private_metadata"].partition(":")
        incident_id = int(incident_text)
        if not approvers.may_act(user):
            rt.store.audit("action.refused", actor=f"slack:{user}", incident_id=incident_id,
                           data={"action": ids.REJECT_MODAL})
            return
        reason = view["state"]["values"][ids.REJECT_REASON_BLOCK][ids.REJECT_REASON_INPUT]["value"].strip()
        jobs.review("reject", incident_id, f"slack:{user}", reason, reply_to=channel or None)

    return app


def explain(error: BaseException) -> str:
    """Our typed errors say what to do, anything else says it failed; both carry an ID logged with the traceback."""
    error_id = uuid.uuid4().hex[:8]
    trace = mask("".join(traceback.format_exception(error)))
    if isinstance(error, CairnError):
        log.warning("error %s in a Slack listener:\n%s", error_id, trace)
        return f":warning: {messages.CAIRN_ERROR.format(error=mask(str(error)), error_id=error_id)}"
    log.error("error %s in a Slack listener:\n%s", error_id, trace)
    return f":x: {messages.UNEXPECTED_ERROR.format(error_id=error_id)}"


class Clicks:
    """Remembers (user, action_ts) pairs so a repeated delivery of one click acts once.

    In Redis (SET NX with an expiry) when the app runs with workers, so every web process shares
    it; in memory otherwise.
    """

    def __init__(self, redis=None):
        self.redis = redis
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def first(self, user: str, action_ts: str) -> bool:
        key = f"cairn:click:{user}:{action_ts}"
        if self.redis is not None:
            return bool(self.redis.set(key, 1, nx=True, ex=CLICK_MEMORY))
        now = time.monotonic()
        with self._lock:
            self._seen = {k: t for k, t in self._seen.items() if now - t < CLICK_MEMORY}
            if key in self._seen:
                return False
            self._seen[key] = now
            return True


def _who(body: dict[str, Any]) -> tuple[str | None, str | None]:
    user = (body.get("user") or {}).get("id") or body.get("user_id")
    channel = (body.get("channel") or {}).get("id") or body.get("channel_id")
    return user, channel


def _incident_of(rt: Runtime, act: dict[str, Any]) -> int | None:
    """The incident a button names, if it exists (a forged value must not break the audit write)."""
    try:
        incident_id = ids.parse_value(act.get("value") or "")[0]
        rt.store.incident(incident_id)
    except (ValueError, NotFound):
        return None
    return incident_id
