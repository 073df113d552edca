"""A production dbt run as Cairn records it: the invocation, the deployed SHA, each node's result."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

FAILED = frozenset({"error", "fail", "runtime error"})  # a warn is reported, never a failure
GREEN = frozenset({"success", "pass", "warn"})  # the node built, or its test held
STALE = FAILED | {"skipped"}  # production's relation was not rebuilt by the run
BUILD, FRESHNESS = "build", "freshness"  # a node's result from run_results.json, or from sources.json


@dataclass(frozen=True)
class NodeRun:
    """One node's result in a run, as dbt reported it."""

    unique_id: str
    status: str  # dbt's own word: success, pass, warn, fail, error, skipped, runtime error …
    phase: str = BUILD
    resource_type: str | None = None  # model, test, seed, snapshot, source …
    message: str | None = None
    failures: int | None = None  # a test's failing rows
    execution_time: float | None = None  # seconds
    started_at: datetime | None = None
    completed_at: datetime | None = None
    relation_name: str | None = None
    path: str | None = None  # the file that declares it, from the manifest
    compiled_code: str | None = None  # the SQL dbt ran (a test's returns its failing rows)
    details: dict[str, Any] = field(default_factory=dict)  # freshness: max_loaded_at, age, criteria

    @property
    def failed(self) -> bool:
        return self.status in FAILED


@dataclass(frozen=True)
class Run:
    """One finished dbt invocation in production, identified by dbt's invocation ID."""

    invocation_id: str
    generated_at: datetime  # when dbt wrote run_results.json
    source: str  # "artifacts" (a target directory) or "dbt_cloud"
    command: str | None = None  # build, run, test …
    dbt_version: str | None = None
    project: str | None = None
    started_at: datetime | None = None
    elapsed: float | None = None  # seconds
    sha: str | None = None
    sha_source: str | None = None  # how the SHA was found (docs/runs.md)
    cloud_run_id: int | None = None
    nodes: tuple[NodeRun, ...] = ()
    ingested_at: datetime | None = None
    id: int | None = None

    @property
    def failures(self) -> list[NodeRun]:
        return [node for node in self.nodes if node.failed]

    @property
    def status(self) -> str:
        return "failed" if self.failures else "success"

    def counts(self, phase: str = BUILD) -> dict[str, int]:
        """How many nodes of `phase` ended in each status."""
        counts: dict[str, int] = {}
        for node in self.nodes:
            if node.phase == phase:
                counts[node.status] = counts.get(node.status, 0) + 1
        return counts


class FailureKind(str, Enum):
    """Why a node of a run failed (jobs.detect.classify)."""

    compilation = "compilation"  # Jinja, a ref or macro that does not resolve, a dependency error
    runtime_sql = "runtime_sql"  # the warehouse refused the SQL, and no drift explains it
    schema_drift = "schema_drift"  # a column the project declares upstream is gone from the warehouse
    test_failure = "test_failure"  # a data test returned failing rows
    source_freshness = "source_freshness"  # a source's newest row is older than its error_after


# Each class as people read it: cards, threads, PR titles and bodies.
FAILURE_WORDS = {FailureKind.compilation.value: "compilation error", FailureKind.runtime_sql.value: "runtime SQL error",
                 FailureKind.schema_drift.value: "schema drift", FailureKind.test_failure.value: "test failure",
                 FailureKind.source_freshness.value: "stale source"}


@dataclass(frozen=True)
class Classification:
    """One failing node's class, a sentence saying why, and the facts behind it."""

    unique_id: str
    kind: FailureKind
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)
