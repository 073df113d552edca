"""Policy as a pure function: (incident facts, verification, switches, now) → one action and its reasons."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum

from policies.model import Mode, ModelRef, Policy, matches

_STRICTNESS = {Mode.observe: 0, Mode.assisted: 1, Mode.autonomous: 2}


class Action(str, Enum):
    record_only = "record_only"
    open_pr = "open_pr"
    auto_merge = "auto_merge"
    escalate = "escalate"


@dataclass(frozen=True)
class KillSwitch:
    """Stops every side effect beyond reading production for the whole org (no selectors) or for the models
    the selectors match; the stages hold before acting, and `decide` forces observe as the last guard."""

    reason: str
    by: str
    selectors: tuple[str, ...] = ()

    def covers(self, models: Sequence[ModelRef]) -> bool:
        return not self.selectors or any(matches(s, m) for s in self.selectors for m in models)


@dataclass(frozen=True)
class Facts:
    verified: bool
    confidence: float
    models: tuple[ModelRef, ...]  # the models the revert changes
    blast_radius: int  # models the revert rebuilds
    now: datetime
    org_mode: Mode | None = None  # set from Slack/CLI; wins over the policy file
    kill_switch: KillSwitch | None = None
    intentional: bool = False
    fix: bool = False  # Cairn's own change, not a revert: auto-merged only where `fix_allowlist` says


@dataclass(frozen=True)
class Decision:
    action: Action
    mode: Mode
    reasons: tuple[str, ...] = field(default_factory=tuple)


def effective_mode(policy: Policy, facts: Facts) -> tuple[Mode, list[str]]:
    """The strictest of the org mode and every selector mode matching a touched model; kill switch wins."""
    mode = facts.org_mode or policy.mode
    reasons = [f"org mode is {mode.value}"]
    for rule in policy.selectors:
        if any(matches(rule.select, m) for m in facts.models) and _STRICTNESS[rule.mode] < _STRICTNESS[mode]:
            mode = rule.mode
            reasons.append(f"{rule.select} is in {rule.mode.value} mode")
    if facts.kill_switch and facts.kill_switch.covers(facts.models):
        reasons.append(f"kill switch pulled by {facts.kill_switch.by}: {facts.kill_switch.reason}")
        mode = Mode.observe
    return mode, reasons


def decide(policy: Policy, facts: Facts) -> Decision:
    mode, reasons = effective_mode(policy, facts)
    if not facts.verified:
        # The invariant: an unverified revert is never proposed, whatever the mode.
        return Decision(Action.escalate if mode is not Mode.observe else Action.record_only, mode,
                        (*reasons, "the revert is not verified on a clone"))
    if mode is Mode.observe:
        return Decision(Action.record_only, mode, (*reasons, "observe mode records what Cairn would do"))
    if facts.intentional:
        return Decision(Action.escalate, mode, (*reasons, "the commit marks the change as intentional"))
    blockers = _blockers(policy, facts)
    if blockers:
        return Decision(Action.escalate, mode, (*reasons, *blockers))
    if mode is Mode.autonomous:
        allowlist = policy.fix_allowlist if facts.fix else policy.autonomous_allowlist
        allowed = [s for s in allowlist if all(matches(s, m) for m in facts.models)]
        if allowed and facts.models:
            return Decision(Action.auto_merge, mode, (*reasons, f"allowlisted by {allowed[0]}"))
        reasons.append("not on the fix allowlist: a human merges Cairn's own fix" if facts.fix else
                       "not on the autonomous allowlist: a human merges")
    if facts.fix:
        return Decision(Action.open_pr, mode, (*reasons, "verified fix, not a revert: an escalation PR a human "
                                                         "reviews and merges"))
    return Decision(Action.open_pr, mode, (*reasons, "verified revert; a human reviews and merges"))


def _blockers(policy: Policy, facts: Facts) -> list[str]:
    found = [f"freeze window: {w.reason} (until {w.end.isoformat()})"
             for w in policy.freeze_windows if w.covers(facts.now)]
    found += [f"{s} is protected" for s in policy.protected if any(matches(s, m) for m in facts.models)]
    if facts.confidence < policy.min_confidence and not facts.fix:  # a fix blames no commit: proof is the build
        found.append(f"confidence {facts.confidence:.0%} is below the policy's {policy.min_confidence:.0%}")
    if facts.blast_radius > policy.max_blast_radius:
        found.append(f"the revert rebuilds {facts.blast_radius} models (policy allows {policy.max_blast_radius})")
    return found
