"""The records the loop passes between stages: frozen values, no behaviour beyond derivations."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from policies.decide import Decision


@dataclass(frozen=True)
class Observation:
    """One evaluation of one contract: the value, when, over which window, at which deployed SHA."""

    contract_id: str
    observed_at: datetime  # tz-aware UTC
    value: float | None  # None: nothing to measure (e.g. an empty window for a ratio)
    window_start: datetime | None = None
    window_end: datetime | None = None
    sha: str | None = None
    profile: dict[str, Any] | None = None  # distribution: {"categories": {...}} or {"quantiles": {...}}
    backfilled: bool = False
    anomalous: bool = False
    id: int | None = None
    # The sample behind the value: rows in the window, or a rate's denominator (count-aware noise).
    count: int | None = None
    # The band this observation was judged against, as the baseline saw it then (for the chart).
    expected: float | None = None
    lower: float | None = None
    upper: float | None = None


@dataclass(frozen=True)
class BaselineStats:
    """Where the baseline expects a value, and the band around it (jobs.detect.band)."""

    expected: float
    lower: float
    upper: float
    n: int
    seasonal: bool = False  # weekday effects are in the model
    trend: float = 0.0  # per day: relative growth (amounts, counts) or absolute change (rates)

    def contains(self, value: float) -> bool:
        return self.lower <= value <= self.upper

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "BaselineStats":
        """From its stored JSON, including the median-and-MAD shape stored before forecasts."""
        if "median" in data:
            data = {"expected": data["median"], "lower": data["lower"], "upper": data["upper"], "n": data["n"],
                    "seasonal": data.get("seasonal", False)}
        return cls(**data)


class AssessmentStatus(str, Enum):
    healthy = "healthy"
    anomalous = "anomalous"
    learning = "learning"  # too few baseline points to judge


@dataclass(frozen=True)
class Assessment:
    """Detection's verdict on one observation against its baseline."""

    contract_id: str
    status: AssessmentStatus
    reason: str
    value: float | None  # the scored value (distribution: the divergence)
    baseline: BaselineStats | None = None
    change_pct: float | None = None  # (value - median) / |median| * 100
    z: float | None = None


class IncidentStatus(str, Enum):
    detected = "detected"
    attributing = "attributing"
    verifying = "verifying"
    verified = "verified"
    not_verified = "not_verified"
    pr_opened = "pr_opened"
    merged = "merged"
    recovered = "recovered"
    escalated = "escalated"
    rejected = "rejected"
    errored = "errored"
    resolved = "resolved"

    @property
    def is_open(self) -> bool:
        return self not in (IncidentStatus.recovered, IncidentStatus.resolved, IncidentStatus.rejected)


@dataclass(frozen=True)
class Incident:
    """One regression of one contract, from the first bad observation until it recovers."""

    id: int
    contract_id: str
    status: IncidentStatus
    severity: str
    detected_at: datetime
    updated_at: datetime
    first_bad_at: datetime
    first_bad_sha: str | None
    last_good_at: datetime | None
    last_good_sha: str | None
    value: float | None
    baseline: BaselineStats | None
    change_pct: float | None
    reason: str
    first_bad_observation_id: int | None = None
    last_good_observation_id: int | None = None
    resolved_at: datetime | None = None
    details: IncidentDetails = field(default_factory=lambda: IncidentDetails())  # what later stages found
    follows_id: int | None = None  # the open incident a later deploy made worse (jobs.detect.observe)
    group_id: int | None = None  # the leader of the incidents one culprit caused


@dataclass(frozen=True)
class AuditEvent:
    """Something that happened, who did it and when; the audit log is append-only."""

    name: str
    at: datetime
    actor: str
    incident_id: int | None = None
    data: dict[str, Any] = field(default_factory=dict)
    id: int | None = None


# --- attribution, verification, proposal ----------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A commit in the suspect range that touches the metric's upstream files, with its evidence."""

    sha: str
    author: str
    authored_at: datetime
    message: str
    files: tuple[str, ...]  # repo-relative paths the commit touches that matter to the lineage
    models: tuple[str, ...]  # dbt unique_ids whose definition the commit changes
    distance: int | None  # fewest lineage hops from a touched model to the metric's model
    touches_metric_columns: bool | None  # None: column lineage did not resolve
    diff: str = ""
    compiled_diff: str = ""
    docs_only: bool = False
    intentional: bool = False  # the commit message marks the change as intended

    @property
    def short_sha(self) -> str:
        return self.sha[:7]


@dataclass(frozen=True)
class RowDelta:
    """How a model's rows differ with and without a commit, matched on the model's key."""

    model: str
    key: tuple[str, ...]
    added: int
    removed: int
    changed: int
    unchanged: int
    column_changes: dict[str, int] = field(default_factory=dict)
    concentration: str | None = None  # "97% of changed rows have payment_method = 'coupon'"
    samples: tuple[dict[str, Any], ...] = ()

    @property
    def match_score(self) -> float:
        total = self.added + self.removed + self.changed + self.unchanged
        return self.unchanged / total if total else 1.0


@dataclass(frozen=True)
class RankedCause:
    sha: str
    confidence: float  # 0..1
    rationale: str


@dataclass(frozen=True)
class Ranking:
    """Top cause first; `ranker` says who ordered them, `note` why the LLM was not used, if not."""

    causes: tuple[RankedCause, ...]
    ranker: str  # "scorer" or "llm"
    note: str = ""

    @property
    def top(self) -> RankedCause | None:
        return self.causes[0] if self.causes else None


class Verdict(str, Enum):
    verified = "verified"
    not_recovered = "not_recovered"
    conflict = "conflict"
    build_failed = "build_failed"
    no_code_cause = "no_code_cause"
    intentional = "intentional"
    refused = "refused"  # a warehouse guard refused the build (over budget, or a write outside the sandbox)


@dataclass(frozen=True)
class MemberResult:
    """One grouped incident's contract, measured on the build its group's revert made."""

    incident_id: int
    contract_id: str
    verdict: Verdict
    before: float | None
    after: float | None
    detail: str = ""


@dataclass(frozen=True)
class Verification:
    """One revert built on a clone and the contract re-measured there (a group's: every member's)."""

    sha: str
    verdict: Verdict
    clone_id: str
    dbt_command: str
    before: float | None
    after: float | None
    tests: dict[str, int] = field(default_factory=dict)  # {"pass": n, "fail": n, "error": n, "skip": n}
    durations: dict[str, float] = field(default_factory=dict)  # seconds per phase
    detail: str = ""
    reverted: tuple[str, ...] = ()  # SHAs reverted together (bisection reverts a range)
    deltas: tuple[RowDelta, ...] = ()  # sample-row deltas: production vs the reverted build
    built: tuple[str, ...] = ()  # unique_ids of the models, seeds and snapshots the build rebuilt
    # What the warehouse charged (BigQuery; None on DuckDB): the dry-run estimate, the bytes billed.
    estimated_bytes: int | None = None
    billed_bytes: int | None = None
    # A group's build: each member's contract measured on it, the incident that runs the loop first.
    # The verdict above is the group's: verified only when every member is.
    members: tuple[MemberResult, ...] = ()
    packages: str | None = None  # how the worktree got its dbt packages (None: the project declares none)
    clones: tuple[dict[str, Any], ...] = ()  # what the sandbox cloned, where the adapter clones per table
    isolation: str = ""  # how dbt ran the revert's code: "built isolated (bwrap)…" or why not (jobs.project.isolation)
    # Later commits reverted with `sha` because they change its lines (jobs.project.followers), newest first.
    followers: tuple[str, ...] = ()
    # Cairn's own fix commits applied in place of a revert (`sha` is the last): a failure no commit explains.
    applied: tuple[str, ...] = ()


@dataclass(frozen=True)
class PullRequest:
    incident_id: int
    number: int
    branch: str
    title: str
    state: str  # open, merged, closed
    head_sha: str
    url: str | None = None


# --- what the stages recorded on an incident (the store's `details` column) -------------------


class Detail(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class AttributionDetail(Detail):
    """The suspects and their ranking (an incident's own, or its group's over every member's)."""

    candidates: tuple[Candidate, ...] = ()
    ranking: Ranking
    lineage_path: dict[str, list[str]] = Field(default_factory=dict)  # by SHA: the models from the change to the metric
    lineage_nodes: int | None = None


class VerificationDetail(Detail):
    attempts: tuple[Verification, ...] = ()
    builds: int = 0
    fix: Verification | None = None  # the attempt that recovered the metric
    refused: dict[str, Any] | None = None  # a sandbox guard's reason and figures, when it refused to build


class TriageDetail(Detail):
    kind: str = Field(alias="class")  # code_change, data_change, intentional, unknown
    evidence: tuple[str, ...] = ()
    stage: str
    upstream: tuple[dict[str, Any], ...] = ()  # how each source under the metric moved


class DeployDetail(Detail):
    """A deploy check's measurement: the contract with the deploy and without it, on the same data."""

    from_sha: str
    to_sha: str
    with_deploy: float | None = Field(alias="with")
    without: float | None
    change_pct: float | None
    commits: tuple[str, ...] = ()
    clone_id: str
    dbt_command: str
    reverted: tuple[str, ...] = ()


class FollowsDetail(Detail):
    """The open incident a later deploy made worse, at the level it had before that deploy."""

    incident: int
    level: float | None
    sha: str | None
    at: datetime | None


RUN_TRIGGER = "run:"  # a run incident's contract_id: "run:" and the failing node's unique_id


def run_subject(node: str) -> str:
    """The contract_id of the incidents a failing node of production runs opens (one open at a time)."""
    return RUN_TRIGGER + node


class RunDetail(Detail):
    """A failed production run's node: why it failed, in which run, and what the run left stale."""

    node: str  # unique_id of the failing model, test, seed, snapshot or source
    kind: str  # jobs.core.runs.FailureKind
    summary: str
    error: str = ""  # dbt's message, cut to its first lines
    invocation_id: str  # the run that opened the incident
    last_invocation_id: str  # the latest run it failed in
    last_failed_at: datetime  # when dbt finished that run: only a later green run resolves the incident
    failures: int = 1  # runs it failed in while the incident was open
    last_green_invocation_id: str | None = None  # the run the suspect range starts from
    failing_rows: int | None = None  # a test's failing rows in the run
    stale: tuple[str, ...] = ()  # unique_ids the run errored, failed or skipped: production is stale there
    evidence: dict[str, Any] = Field(default_factory=dict)


class FixDraft(Detail):
    """A fix Cairn drafted for a failed run no commit explains (jobs.attribute.drift_fix): a renamed upstream
    column mapped in the model that reads it. Verified on a clone before it becomes a PR."""

    node: str  # the failing model
    path: str  # its SQL file, relative to the dbt project
    missing: str  # the column it reads that the upstream relation no longer has
    replacement: str  # the column it reads instead
    missing_type: str | None = None
    replacement_type: str | None = None
    upstream: str  # the parent whose relation changed
    relation: str
    drafted_by: str  # "rule" or "llm"
    reason: str  # why this column
    diff: str  # unified diff of the model's SQL
    sql: str  # the model's SQL with the fix
    candidates: tuple[str, ...] = ()  # the columns Cairn considered
    commit: str | None = None  # the fix commit (refs/cairn/fixes/<incident>), once made


class GroupDetail(Detail):
    leader: int
    members: tuple[int, ...]


class LeftGroupDetail(Detail):
    group: int | None
    why: str
    fix: str | None = None  # the group's revert, when the member left because it did not recover it


class MergeDetail(Detail):
    by: str
    head_sha: str


class MergeBlockedDetail(Detail):
    by: str
    reason: str
    head_sha: str | None = None


class RejectionDetail(Detail):
    by: str
    reason: str
    blamed_sha: str | None = None
    verdict: Verdict | None = None


class ErrorDetail(Detail):
    stage: str
    reason: str
    error_id: str
    status_before: str


class HeldDetail(Detail):
    """The kill switch stopped the loop before a stage: what it would have done; resumed on release."""

    stage: str
    would: str
    by: str
    reason: str
    selectors: tuple[str, ...] = ()


class IncidentDetails(BaseModel):
    """Everything the loop's stages found about an incident, each part set by the stage that owns it.

    Stored as JSON (`to_json`); a part written by a newer Cairn than this one is kept as it is.
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    run: RunDetail | None = None  # set on an incident a failed production run opened (jobs.detect.run_incidents)
    fix_draft: FixDraft | None = None  # a non-revert fix for a failure no commit explains
    follows: FollowsDetail | None = None
    followed_by: int | None = None  # the incident a later deploy opened on top of this one
    deploy: DeployDetail | None = None
    group: GroupDetail | None = None
    left_group: LeftGroupDetail | None = None
    attribution: AttributionDetail | None = None
    group_attribution: AttributionDetail | None = None  # the leader's: every member's suspects, one ranking
    triage: TriageDetail | None = None
    verdict: Verdict | None = None
    verification: VerificationDetail | None = None
    decision: Decision | None = None
    ranking: Ranking | None = None  # the ranking the decision used (after the LLM, if one re-ranked)
    pr: PullRequest | None = None
    merge: MergeDetail | None = None
    merge_blocked: MergeBlockedDetail | None = None
    rejection: RejectionDetail | None = None
    error: ErrorDetail | None = None
    held: HeldDetail | None = None

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in self.model_dump(mode="json", by_alias=True).items() if value is not None}

    def merged(self, changes: Mapping[str, Any]) -> IncidentDetails:
        """These details with `changes` applied part by part (a part given None is removed), validated."""
        unknown = set(changes) - set(type(self).model_fields)
        if unknown:
            raise ValueError(f"incident details have no part named {', '.join(sorted(unknown))}")
        data: dict[str, Any] = self.to_json()
        for key, value in changes.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        return type(self).model_validate(data)

    @property
    def suspects(self) -> AttributionDetail | None:
        """The attribution the loop works from: its group's, when it leads one, else its own."""
        return self.group_attribution or self.attribution
