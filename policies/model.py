"""The trust model's vocabulary: modes, selectors, freeze windows and the policy file's shape."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

BUNDLED = Path(__file__).with_name("default.yml")


class Mode(str, Enum):
    observe = "observe"  # detect, attribute, verify, record what would have been done; no PR
    assisted = "assisted"  # open verified revert PRs; a human merges
    autonomous = "autonomous"  # also merge verified reverts that match the allowlist


@dataclass(frozen=True)
class ModelRef:
    """What a selector can see of a dbt model: no import of dbt or of Cairn's engine needed."""

    name: str
    path: str = ""  # project-relative file path
    tags: frozenset[str] = frozenset()
    ancestors: frozenset[str] = frozenset()  # names of every upstream model


def matches(selector: str, model: ModelRef) -> bool:
    """dbt-style selector subset: `tag:x`, `path:dir`, `name`, `name+` (it and its descendants)."""
    selector = selector.strip()
    if selector.startswith("tag:"):
        return selector[4:] in model.tags
    if selector.startswith("path:"):
        prefix = selector[5:].rstrip("/")
        return model.path == prefix or model.path.startswith(prefix + "/")
    if selector.endswith("+"):
        root = selector[:-1]
        return model.name == root or root in model.ancestors
    return model.name == selector


def check_selector(selector: str) -> str:
    """The selector, stripped, if `matches` understands it; ValueError naming it otherwise."""
    text = selector.strip()
    kind, _, rest = text.partition(":")
    ok = (bool(rest.strip("/")) if kind in ("tag", "path") and rest else
          bool(text) and ":" not in text and text.rstrip("+") != "" and " " not in text)
    if not ok:
        raise ValueError(f"{selector!r} is not a selector: use tag:NAME, path:DIR, a model name, or NAME+ "
                         "(the model and everything downstream)")
    return text


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SelectorMode(_Strict):
    select: str = Field(description="dbt selector: tag:, path:, name or name+.")
    mode: Mode


class FreezeWindow(_Strict):
    start: datetime
    end: datetime
    reason: str = "freeze window"

    def covers(self, now: datetime) -> bool:
        return self.start <= now < self.end

    @field_validator("start", "end")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("give a time zone, e.g. 2026-12-24T00:00:00Z")
        return value


class DeployChecks(_Strict):
    """Measuring each deploy's own effect on the contracts it reaches: one sandbox build per deploy."""

    enabled: bool = Field(True, description="Build each deploy's previous version on a clone and compare.")
    skip: list[str] = Field(default_factory=list, description="Selectors whose contracts are not deploy-checked "
                                                              "(e.g. models too costly to rebuild per deploy).")


class Policy(_Strict):
    """policies/default.yml, or the file cairn.yml's `policy` names."""

    mode: Mode = Field(Mode.assisted, description="Org-wide default mode.")
    selectors: list[SelectorMode] = Field(default_factory=list, description="Per-selector modes; the strictest match wins.")
    autonomous_allowlist: list[str] = Field(default_factory=list, description="Selectors whose reverts may auto-merge.")
    fix_allowlist: list[str] = Field(default_factory=list, description=(
        "Selectors whose verified non-revert fixes (Cairn's own code, e.g. a renamed source column mapped) may "
        "auto-merge in autonomous mode. Empty: a fix PR always waits for a human."))
    protected: list[str] = Field(default_factory=list, description="Selectors Cairn never reverts on its own: escalate.")
    freeze_windows: list[FreezeWindow] = Field(default_factory=list, description="No PRs or merges inside these.")
    min_confidence: float = Field(0.5, ge=0, le=1, description="Below this attribution confidence, escalate.")
    max_blast_radius: int = Field(25, ge=1, description="Most models a revert may rebuild before escalating.")
    deploy_checks: DeployChecks = Field(default_factory=DeployChecks,
                                        description="Deploy checks (docs/detection.md): on by default.")


class PolicyError(ValueError):
    """The policy file is invalid; the message names the file and the field."""


def load_policy(path: Path | None = None) -> Policy:
    path = path or BUNDLED
    try:
        text = path.read_text()
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read the policy: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise PolicyError(f"{path}: expected a mapping of policy settings, got {type(data).__name__}")
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}"
                             for e in exc.errors())
        raise PolicyError(f"{path}: {problems}") from None
