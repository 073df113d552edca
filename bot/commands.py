"""`/cairn` commands: parse the text, check who may do what, answer in a few lines.

Every command only reads or writes the store and enqueues jobs, so a listener answers well
inside Slack's 3 seconds; `check` is queued, never run here. `show` also reads its PR from GitHub
(one request) while it is not merged, so a merge done there shows at once. The CLI offers the same actions
through the functions below, so both surfaces say the same thing.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bot import messages, render
from jobs.core.errors import CairnError, NotFound, QueueUnavailable
from jobs.core.records import IncidentStatus
from jobs.loop.queue import Jobs
from jobs.loop.reconcile import survey
from jobs.propose.current import current_pull_request
from jobs.runtime import Runtime
from jobs.store import switches
from policies.model import Mode

USAGE = """*`/cairn` commands*
`help` — this list
`status` — mode, kill switch, open incidents, queue health
`incidents` — open incidents
`show ID` — one incident: cause, proof, PR and audit trail
`check [CONTRACT]` — measure now (all contracts, or one) and heal what broke
`contracts` — the metric contracts and where they are declared
`runs [N]` — the latest N production runs (default 5) and their failures
`mode observe|assisted|autonomous` — the org's mode (approvers)
`kill [tag:X|path:DIR|--select SEL]... REASON` — stop every side effect beyond reading production: no clone, build, PR or merge, for the org or the incidents the selectors cover (approvers)
`unkill` — release the kill switch (approvers)"""

MUTATING = {"mode", "kill", "unkill", "check"}


class Refused(CairnError):
    """The person may not do this; the message says who may."""


class BadInput(CairnError):
    """The command's input is not valid; the message names the value and the shape expected."""


@dataclass(frozen=True)
class Invocation:
    """Who ran a command, from where."""

    actor: str  # "slack:U123" or "cli"
    may_act: bool  # an approver (the CLI is trusted: it runs where the config is)


def run_command(rt: Runtime, jobs: Jobs, text: str, who: Invocation) -> str:
    """The reply to `/cairn TEXT`; unknown input gets the usage, never a traceback."""
    try:
        words = shlex.split(text or "")
    except ValueError:
        words = (text or "").split()
    if not words or words[0] == "help":
        return USAGE
    name, args = words[0].lower(), words[1:]
    handler = _COMMANDS.get(name)
    if handler is None:
        return f"Unknown command `{name}`.\n\n{USAGE}"
    if name in MUTATING and not who.may_act:
        rt.store.audit("command.refused", actor=who.actor, data={"command": name, "args": args})
        raise Refused(f"`/cairn {name}` is for approvers (slack.approvers in cairn.yml); ask one of them.")
    return handler(rt, jobs, args, who)


def status_text(rt: Runtime, jobs: Jobs) -> str:
    mode = switches.org_mode(rt.store)
    kill = switches.kill_switch(rt.store)
    open_incidents = rt.store.incidents(open_only=True)
    health = jobs.health()
    try:
        found = survey(rt, jobs)
        stuck, held = _ids(found.stuck), _ids(found.held)
    except QueueUnavailable:
        stuck = held = "unknown: the queue is unreachable"
    lines = [f"*Mode:* {(mode or rt.policy.mode).value}" + ("" if mode else " (policy default)"),
             f"*Kill switch:* {_kill_text(kill)}",
             f"*Open incidents:* {len(open_incidents)}",
             f"*Stuck (no live job; the next check resumes them):* {stuck}",
             f"*Held by the kill switch:* {held}",
             f"*Errored:* {_ids(rt.store.incidents(status=IncidentStatus.errored))}",
             f"*Queue:* {_health_text(health)}"]
    return "\n".join(lines)


def _ids(incidents) -> str:
    return f"{len(incidents)}" + (f" ({', '.join(f'#{i.id}' for i in incidents)})" if incidents else "")


def _kill_text(kill) -> str:
    if kill is None:
        return "off"
    scope = f" for {', '.join(kill.selectors)}" if kill.selectors else ""
    return f"ON{scope} — {kill.reason} (by {kill.by})"


def incidents_text(rt: Runtime) -> str:
    found = rt.store.incidents(open_only=True)
    if not found:
        return messages.NO_INCIDENTS
    return _code("\n".join(render.incident_line(i) for i in found))


def show_text(rt: Runtime, incident_id: int) -> str:
    incident = rt.store.incident(incident_id)
    pr = current_pull_request(rt, incident)
    return _code(render.incident_detail(incident, rt.store.audit_events(incident_id), pr))


def contracts_text(rt: Runtime) -> str:
    return _code("\n".join(render.contract_line(c, rt.config) for c in rt.contracts))


def runs_text(rt: Runtime, limit: int = 5) -> str:
    found = rt.store.runs(limit)
    if not found:
        return messages.NO_RUNS
    return _code("\n".join(line for run in found for line in render.run_lines(run)))


def set_mode(rt: Runtime, jobs: Jobs, mode: Mode, actor: str, reason: str = "") -> str:
    switches.set_mode(rt.store, mode, actor, reason)
    refresh_open_cards(rt, jobs)
    return f"Mode is now *{mode.value}*: {MODE_MEANING[mode]}"


def pull_kill_switch(rt: Runtime, jobs: Jobs, reason: str, actor: str, selectors: Sequence[str] = ()) -> str:
    try:
        switches.pull(rt.store, reason, actor, selectors)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    refresh_open_cards(rt, jobs)
    scope = f" for {', '.join(selectors)}" if selectors else ""
    return (f"Kill switch ON{scope} ({reason}). No clone, sandbox build, PR or merge for the incidents it covers: "
            "each job records what it would have done and stops. `/cairn unkill` releases it.")


def release_kill_switch(rt: Runtime, jobs: Jobs, actor: str) -> str:
    switches.release(rt.store, actor)
    refresh_open_cards(rt, jobs)
    return "Kill switch released: the mode applies again; held incidents resume at the next check."


def refresh_open_cards(rt: Runtime, jobs: Jobs) -> None:
    """Mode and kill switch show on every open card."""
    for incident in rt.store.incidents(open_only=True):
        jobs.notify(incident.id)


MODE_MEANING = {
    Mode.observe: "Cairn records what it would have done and opens no PR.",
    Mode.assisted: "Cairn opens verified revert PRs; a person merges them.",
    Mode.autonomous: "Cairn merges verified reverts that policy allows; the rest wait for a person.",
}


# --- the table -------------------------------------------------------------------------------


def _status(rt, jobs, args, who) -> str:
    return status_text(rt, jobs)


def _incidents(rt, jobs, args, who) -> str:
    return incidents_text(rt)


def _show(rt, jobs, args, who) -> str:
    if len(args) != 1 or not args[0].lstrip("#").isdigit():
        return "Usage: `/cairn show ID` (an incident number, e.g. `/cairn show 12`)"
    try:
        return show_text(rt, int(args[0].lstrip("#")))
    except NotFound as exc:
        return str(exc)


def _check(rt, jobs, args, who) -> str:
    if len(args) > 1:
        return "Usage: `/cairn check [CONTRACT]`"
    if args:
        rt.contract(args[0])  # NotFound names the known contracts
    jobs.check(args or None)
    rt.store.audit("check.requested", actor=who.actor, data={"contracts": args})
    return f"Check queued for {args[0] if args else 'every contract'}; cards follow for anything that moved."


def _contracts(rt, jobs, args, who) -> str:
    return contracts_text(rt)


def _runs(rt, jobs, args, who) -> str:
    if len(args) > 1 or (args and not (args[0].isdigit() and 1 <= int(args[0]) <= 50)):
        return "Usage: `/cairn runs [N]` (how many of the latest runs, 1 to 50; default 5)"
    return runs_text(rt, int(args[0]) if args else 5)


def _mode(rt, jobs, args, who) -> str:
    choices = "|".join(m.value for m in Mode)
    if len(args) != 1 or args[0] not in {m.value for m in Mode}:
        return f"Usage: `/cairn mode {choices}`"
    return set_mode(rt, jobs, Mode(args[0]), who.actor, reason="/cairn mode")


KILL_USAGE = ("Usage: `/cairn kill [tag:X|path:DIR|--select SEL]... REASON` — say why, it is shown on every card "
              "it covers (e.g. `/cairn kill tag:finance quarter close`).")


def _kill(rt, jobs, args, who) -> str:
    selectors, rest = kill_selectors(args)
    if not rest:
        return KILL_USAGE
    return pull_kill_switch(rt, jobs, " ".join(rest), who.actor, selectors)


def kill_selectors(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """Leading selectors (`tag:X`, `path:DIR`, `--select SEL`), then the reason's words."""
    selectors, words = [], list(args)
    while words:
        if words[0] == "--select":
            if len(words) < 2:
                raise BadInput(f"`--select` needs a selector after it. {KILL_USAGE}")
            selectors.append(words[1])
            words = words[2:]
        elif words[0].startswith(("tag:", "path:")):
            selectors.append(words.pop(0))
        else:
            break
    return selectors, words


def _unkill(rt, jobs, args, who) -> str:
    return release_kill_switch(rt, jobs, who.actor)


_COMMANDS: dict[str, Callable[..., str]] = {
    "status": _status, "incidents": _incidents, "show": _show, "check": _check, "contracts": _contracts,
    "runs": _runs, "mode": _mode, "kill": _kill, "unkill": _unkill,
}


def _health_text(health: dict) -> str:
    if health.get("error"):
        return f"RQ, {health['error']}"
    if health.get("backend") == "rq":
        queued = ", ".join(f"{name} {n}" for name, n in health["queued"].items())
        failed = sum(health["failed"].values())
        return f"RQ, {health['workers']} worker(s); queued: {queued}; failed: {failed}"
    return f"in-process (no REDIS_URL); queued {health['queued']}, failed {health['failed']}"


def _code(text: str) -> str:
    return f"```\n{text.replace('```', '`​``')}\n```"
