"""Verification on BigQuery: revert in a worktree, build on a sandbox of zero-copy clones, re-measure.

The same steps as `jobs.verify.verify_revert` on DuckDB, with BigQuery's sandbox: a labelled,
expiring dataset; the selected incremental models and snapshots cloned at `snapshot_at`; the
nodes' writes redirected into the dataset and checked (layer b); a dry run against the budget;
`dbt build --defer --state --favor-state` with maximum_bytes_billed, every API request it makes
checked (layer a); the contract (a group's: every member's) measured there.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from jobs.config import BigQuerySettings
from jobs.contracts import Contract
from jobs.dbt import Dbt, InvocationResult
from jobs.errors import DbtError
from jobs.records import BaselineStats, Verdict, Verification
from jobs.verify import (BUILT, Target, build_problems, check_inputs, expected_nodes, group_targets, judge,
                         production_manifest, profile_name, selector, test_counts, timed, unreached,
                         worktree_packages)
from jobs.warehouse.bigquery import credentials_setting
from jobs.warehouse.bigquery_sandbox import (BigQuerySandbox, check_relations, redirect_macros,
                                             stateful_sources)
from jobs.warehouse.cost_guard import Estimate, billed_by_dbt, check_budget, estimate
from jobs.warehouse.request_guard import guarded
from jobs.worktree import Worktree


@dataclass(frozen=True)
class Cost:
    """What one verification cost: the dry-run estimate and the bytes BigQuery billed."""

    estimated_bytes: int = 0
    billed_bytes: int = 0  # dbt's jobs and Cairn's own (clones, the re-measure)
    clones: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    def audit_data(self) -> dict[str, Any]:
        return {"estimated_bytes": self.estimated_bytes, "billed_bytes": self.billed_bytes,
                "clones": list(self.clones)}


@dataclass(frozen=True)
class BigQueryVerification:
    verification: Verification
    cost: Cost


def verify_revert_bigquery(*, repo: Path, project_subdir: str, deployed_sha: str, shas: Sequence[str],
                           models: Sequence[str], contract: Contract, metric_model: str, prod_state: Path,
                           band: BaselineStats, before: float | None, at: datetime, incident_id: int,
                           sandboxes_root: Path, client: Any, settings: BigQuerySettings,
                           snapshot_at: datetime | None, now: datetime,
                           config_root: Path | None = None, also: Sequence[Target] = ()) -> BigQueryVerification:
    """Revert `shas` at `deployed_sha` and build through `metric_model` in a BigQuery sandbox.

    `client` runs jobs in the sandbox project; `snapshot_at` is the production state the clones
    hold (the incident's last-good time, so incremental models rebuild what the bad code wrote);
    `config_root` (cairn.yml's directory) resolves a relative key-file path for dbt's profile;
    `also` are the other contracts of the incident's group, built and measured in the same sandbox.
    Raises CostRefused (over budget) and RelationOutsideSandbox (layer b) before dbt builds.
    """
    check_inputs(shas, models, contract, metric_model)
    phases: dict[str, float] = {}
    targets, metrics = group_targets(incident_id, contract, band, before, metric_model, also)
    select = selector(models, *metrics)
    extra = ("--defer", "--state", str(prod_state), "--favor-state")
    record = dict(sha=shas[0], clone_id="", dbt_command=f"dbt build --select {select} {' '.join(extra)}",
                  before=before, after=None, durations=phases, reverted=tuple(shas))
    spent: dict[str, Any] = {"estimated_bytes": 0, "billed_bytes": 0, "clones": ()}

    def done(verdict: Verdict, detail: str) -> BigQueryVerification:
        verification = Verification(verdict=verdict, **record, detail=detail,
                                    estimated_bytes=spent["estimated_bytes"], billed_bytes=spent["billed_bytes"])
        return BigQueryVerification(verification, Cost(**spent))

    with ExitStack() as cleanup:
        with timed(phases, "worktree"):
            tree = cleanup.enter_context(Worktree.create(repo, deployed_sha, sandboxes_root, label=str(incident_id)))
        with timed(phases, "revert"):
            reverted = tree.revert(shas)
        if not reverted:
            return done(Verdict.conflict, (
                f"reverting {tree.conflict[:7]} at {deployed_sha[:7]} conflicts in "
                f"{', '.join(tree.conflict_files)}; a later commit changed the same lines."))
        project_dir = tree.path / project_subdir
        with timed(phases, "packages"):
            try:
                record["packages"] = worktree_packages(tree, Path(repo), project_subdir)
            except DbtError as exc:
                return done(Verdict.build_failed, str(exc))
        production = production_manifest(prod_state)
        work = Path(tempfile.mkdtemp(prefix=f"incident-{incident_id}-", dir=sandboxes_root))
        cleanup.callback(shutil.rmtree, work, ignore_errors=True)
        with timed(phases, "clone"):
            sandbox = cleanup.enter_context(BigQuerySandbox.create(
                client, incident_id=incident_id, location=settings.location, org=settings.org,
                expiration=settings.sandbox_expiration))
            warehouse = sandbox.warehouse(settings.budget_bytes)
            sandbox.write_profile(work, profile_name(project_dir), production_project=settings.project,
                                  credentials=credentials_setting(settings, config_root),
                                  maximum_bytes_billed=settings.budget_bytes,
                                  api_endpoint=settings.api_endpoint)
            dbt = Dbt(project_dir, work, target=sandbox.target, target_path=work / "target")
            record["clone_id"] = sandbox.clone_id
            try:
                if redirect_macros(project_dir, dbt.parse(), sandbox.dataset):
                    dbt.parse()  # again, with Cairn's schema/database macros in place
                manifest = dbt.manifest()
            except DbtError as exc:  # e.g. the reverted project no longer parses
                return done(Verdict.build_failed, str(exc))
            reach = [expected_nodes(manifest, models, metric) for metric in metrics]
            expected = set().union(*reach)
            if not expected:
                return done(Verdict.not_recovered, unreached(models, metrics))
            check_relations(manifest, expected, sandbox.dataset)  # layer (b): raises before any build
            clones = sandbox.clone(warehouse, stateful_sources(production, expected, settings.project),
                                   at=snapshot_at, now=now, time_travel=settings.time_travel)
            record["clone_id"] = sandbox.clone_id
            spent["clones"] = tuple({"source": c.source, "target": c.target, "statement": c.statement,
                                     "snapshot": c.snapshot.isoformat() if c.snapshot else None,
                                     **({"note": c.note} if c.note else {})} for c in clones)
        with timed(phases, "estimate"):
            with guarded(sandbox.dataset):
                compiled = _compile(dbt, select, extra)
            if compiled is None:
                return done(Verdict.build_failed, "dbt compile failed in the sandbox; see its log")
            guess: Estimate = estimate(warehouse.dry_run, compiled, expected)
            spent["estimated_bytes"] = guess.total
            check_budget(guess, settings.budget_bytes, sandbox.clone_id)
        with timed(phases, "build"):
            try:
                with guarded(sandbox.dataset):  # dbt's own requests: layer (a) for hooks and macros too
                    result: InvocationResult | None = dbt.build(select=select, extra=extra)
                error = None
            except DbtError as exc:
                result, error = None, str(exc)
            spent["billed_bytes"] = billed_by_dbt(work / "target") + warehouse.spend.billed
        if result is None:
            return done(Verdict.build_failed, error or "")
        record.update(dbt_command=result.command, tests=test_counts(result.nodes),
                      built=tuple(n.unique_id for n in result.nodes if n.unique_id.startswith(BUILT)))
        manifest = json.loads((work / "target" / "manifest.json").read_text())
        problems = build_problems(result, expected)
        if problems:
            return done(Verdict.build_failed, problems)
        with timed(phases, "measure"):
            verdict, detail = judge(warehouse, manifest, targets, reach, at, record)
        spent["billed_bytes"] = billed_by_dbt(work / "target") + warehouse.spend.billed
        notes = "".join(f" {c.target}: {c.note}." for c in clones if c.note)
        return done(verdict, detail + notes)
    raise AssertionError("unreachable")  # pragma: no cover


def _compile(dbt: Dbt, select: str, extra: tuple[str, ...]) -> dict[str, Any] | None:
    """`dbt compile` of the selection in the sandbox: the manifest with each model's compiled SQL."""
    try:
        result = dbt.invoke("compile", select=select, extra=(*extra, "--log-level", "none"))
    except DbtError:
        return None
    return dbt.manifest() if result.success else None
