"""The org's mode and kill switch: durable in the store, so every worker sees a change at once."""

from __future__ import annotations

from collections.abc import Sequence

from policies.decide import KillSwitch
from policies.model import Mode, check_selector

MODE_KEY = "mode"
KILL_KEY = "kill_switch"


def org_mode(store) -> Mode | None:
    """The mode set from Slack or the CLI; None means the policy file's mode applies."""
    state = store.get_state(MODE_KEY)
    return Mode(state["mode"]) if state else None


def set_mode(store, mode: Mode, actor: str, reason: str = "") -> None:
    store.set_state(MODE_KEY, {"mode": mode.value, "by": actor, "reason": reason}, actor)
    store.audit("mode.changed", actor=actor, data={"mode": mode.value, "reason": reason})


def kill_switch(store) -> KillSwitch | None:
    state = store.get_state(KILL_KEY)
    if not state:
        return None
    return KillSwitch(reason=state["reason"], by=state["by"], selectors=tuple(state.get("selectors", ())))


def pull(store, reason: str, actor: str, selectors: Sequence[str] = ()) -> None:
    """Stop every side effect beyond reading production (no clone, build, PR or merge) for the org, or for
    the incidents whose models the selectors match, before the next side effect of any job."""
    selectors = [check_selector(s) for s in selectors]
    store.set_state(KILL_KEY, {"reason": reason, "by": actor, "selectors": list(selectors)}, actor)
    store.audit("kill_switch.pulled", actor=actor, data={"reason": reason, "selectors": list(selectors)})


def release(store, actor: str) -> None:
    store.set_state(KILL_KEY, None, actor)
    store.audit("kill_switch.released", actor=actor)
