"""The trust model: modes, selectors, kill switch, freeze windows, thresholds — table-driven."""

from datetime import datetime, timezone
from pathlib import Path

import pytest

from policies.decide import Action, Facts, KillSwitch, decide
from policies.model import Mode, ModelRef, Policy, PolicyError, load_policy, matches

NOW = datetime(2026, 11, 23, 9, tzinfo=timezone.utc)
STG = ModelRef("stg_payments", "models/staging/stg_payments.sql", frozenset({"payments"}))
FCT = ModelRef("fct_revenue", "models/marts/fct_revenue.sql", frozenset({"finance"}),
               frozenset({"stg_payments", "fct_payments"}))


def facts(**kw) -> Facts:
    base = dict(verified=True, confidence=0.9, models=(STG,), blast_radius=3, now=NOW)
    return Facts(**{**base, **kw})


@pytest.mark.parametrize("selector, model, expected", [
    ("tag:payments", STG, True), ("tag:finance", STG, False),
    ("path:models/staging", STG, True), ("path:models/stag", STG, False),
    ("stg_payments", STG, True), ("stg_payments+", FCT, True), ("fct_payments+", STG, False),
    ("fct_revenue", FCT, True),
])
def test_selectors(selector: str, model: ModelRef, expected: bool) -> None:
    assert matches(selector, model) is expected


FREEZE = {"start": "2026-11-20T00:00:00Z", "end": "2026-11-30T00:00:00Z", "reason": "quarter close"}


@pytest.mark.parametrize("name, policy, kw, action, reason", [
    ("assisted opens a PR", {}, {}, Action.open_pr, "a human reviews and merges"),
    ("observe records only", {"mode": "observe"}, {}, Action.record_only, "observe mode"),
    ("unverified never proposes", {}, {"verified": False}, Action.escalate, "not verified"),
    ("unverified in observe records", {"mode": "observe"}, {"verified": False}, Action.record_only, "not verified"),
    ("org mode from the store wins", {}, {"org_mode": Mode.observe}, Action.record_only, "org mode is observe"),
    ("kill switch forces observe", {"mode": "autonomous"}, {"kill_switch": KillSwitch("migration", "U1")},
     Action.record_only, "kill switch pulled by U1: migration"),
    ("selector kill switch misses other models", {},
     {"kill_switch": KillSwitch("fin freeze", "U1", ("tag:finance",))}, Action.open_pr, "a human reviews"),
    ("selector kill switch hits", {}, {"kill_switch": KillSwitch("fin", "U1", ("tag:payments",))},
     Action.record_only, "kill switch"),
    ("selector mode is stricter", {"selectors": [{"select": "tag:payments", "mode": "observe"}]}, {},
     Action.record_only, "tag:payments is in observe mode"),
    ("selector cannot loosen", {"mode": "observe", "selectors": [{"select": "tag:payments", "mode": "autonomous"}]},
     {}, Action.record_only, "observe"),
    ("autonomous merges allowlisted", {"mode": "autonomous", "autonomous_allowlist": ["path:models/staging"]}, {},
     Action.auto_merge, "allowlisted by path:models/staging"),
    ("autonomous without allowlist opens PR", {"mode": "autonomous"}, {}, Action.open_pr, "not on the autonomous"),
    ("freeze window escalates", {"freeze_windows": [FREEZE]}, {}, Action.escalate, "freeze window: quarter close"),
    ("protected escalates", {"protected": ["stg_payments+"]}, {}, Action.escalate, "stg_payments+ is protected"),
    ("low confidence escalates", {}, {"confidence": 0.3}, Action.escalate, "confidence 30% is below"),
    ("blast radius escalates", {"max_blast_radius": 2}, {}, Action.escalate, "rebuilds 3 models"),
    ("intentional escalates", {}, {"intentional": True}, Action.escalate, "intentional"),
    # Cairn's own fix is new code: the revert allowlist does not let it merge; only the fix allowlist does.
    ("a fix opens an escalation PR", {}, {"fix": True}, Action.open_pr, "verified fix, not a revert"),
    ("a fix is not merged by the revert allowlist", {"mode": "autonomous", "autonomous_allowlist": ["path:models"]},
     {"fix": True}, Action.open_pr, "not on the fix allowlist"),
    ("a fix on the fix allowlist merges", {"mode": "autonomous", "fix_allowlist": ["path:models/staging"]},
     {"fix": True}, Action.auto_merge, "allowlisted by path:models/staging"),
    ("the fix allowlist does not merge reverts", {"mode": "autonomous", "fix_allowlist": ["path:models/staging"]},
     {}, Action.open_pr, "not on the autonomous allowlist"),
    ("an unverified fix is never proposed", {"mode": "autonomous", "fix_allowlist": ["path:models"]},
     {"fix": True, "verified": False}, Action.escalate, "not verified"),
    ("a fix blames no commit: no confidence floor", {}, {"fix": True, "confidence": 0.0}, Action.open_pr,
     "verified fix"),
    ("a fix still respects protected models", {"protected": ["stg_payments"]}, {"fix": True}, Action.escalate,
     "stg_payments is protected"),
])
def test_decide(name: str, policy: dict, kw: dict, action: Action, reason: str) -> None:
    decision = decide(Policy.model_validate(policy), facts(**kw))
    assert decision.action is action, decision.reasons
    assert any(reason in r for r in decision.reasons), decision.reasons


def test_bundled_policy_is_assisted() -> None:
    assert load_policy().mode is Mode.assisted


def test_policy_errors_name_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "policy.yml"
    path.write_text("mode: yolo\nfreeze_windows: [{start: 2026-01-01T00:00:00, end: 2026-01-02T00:00:00Z}]\n")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert str(path) in str(info.value)
    assert "mode:" in str(info.value) and "freeze_windows.0.start" in str(info.value)
