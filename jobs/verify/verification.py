"""Verification: revert candidate commits in a worktree, build them in a sandbox, re-measure.

One algorithm for every warehouse: the sandbox is the adapter's (`jobs.warehouse.sandboxes`: a
DuckDB file copy, a BigQuery dataset of zero-copy clones). Verified iff the build and its tests
pass and the contract's value returns into its recovery band. A group's build (one culprit,
several broken contracts) runs through every member's metric model and measures each on the same
sandbox: verified only when every member is back in its own band. Distribution contracts are never
verified here: their value is a divergence from the baseline profiles, which this stage does not
hold, so they come back `not_recovered` with the measured profile's reason in `detail`.

A failed production run's incident has no metric (`RunGoal`): the build rebuilds every node the run
left stale (errored, failed, skipped), and the judgement is the build's node statuses: verified iff
the failing nodes now succeed, their tests pass and their children build and pass.

Every dbt invocation on the reverted worktree runs the revert's code, so it runs in a child process
(`jobs.project.isolation`), jailed where the machine can; where it cannot, a selection holding
Python models is refused (`Unisolated`) instead of built. The evidence says which.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from jobs.contracts.measure import evaluate
from jobs.contracts.spec import Contract, Kind
from jobs.core.errors import CairnError, DbtError, WarehouseError
from jobs.core.formatting import fmt_number
from jobs.core.records import BaselineStats, MemberResult, Verdict, Verification
from jobs.project.dbt import Dbt, InvocationResult, NodeResult
from jobs.project.isolation import Child, DbtServers, Isolation
from jobs.project.packages import provide
from jobs.project.worktree import Worktree
from jobs.verify.run_goal import RunGoal, judge_run
from jobs.verify.scope import narrow
from jobs.warehouse.sandbox import ProductionModified
from jobs.warehouse.sandboxes import Sandbox, Sandboxes, Unisolated

BUILT = ("model", "seed", "snapshot")  # node types a selector must have run when expected
TEST_STATUSES = {"pass": "pass", "fail": "fail", "warn": "warn", "error": "error",
                 "runtime error": "error", "skipped": "skip"}


class VerifyError(CairnError):
    """Verification could not be attempted; the message says which input to fix."""


@dataclass(frozen=True)
class Target:
    """Another grouped incident's contract that the same build must bring back into its own band."""

    incident_id: int
    contract: Contract
    band: BaselineStats
    before: float | None


def verify_revert(*, sandboxes: Sandboxes, repo: Path, project_subdir: str, deployed_sha: str,
                  shas: Sequence[str], models: Sequence[str], contract: Contract | None, metric_model: str | None,
                  prod_state: Path, band: BaselineStats | None, before: float | None, at: datetime, incident_id: int,
                  sandboxes_root: Path, also: Sequence[Target] = (), label: str | None = None,
                  deltas: bool = True, followers: Sequence[str] = (), servers: DbtServers | None = None,
                  run: RunGoal | None = None, fix: bool = False) -> Verification:
    """Revert `shas` at `deployed_sha`, build reverted models through `metric_model` (and the metric
    models of `also`, the incident's group) in a sandbox of `sandboxes` (the warehouse's adapter,
    `jobs.warehouse.sandboxes`), and measure there. `label` names the worktree and sandbox (default:
    the incident ID; a deploy check has no incident); `deltas` takes sample-row deltas. `followers`: later
    commits reverted with the culprit `shas[0]` because they change its lines (`jobs.project.followers`).
    `servers`: the warm dbt servers the verification's builds share (`jobs.project.isolation.DbtServers`);
    without them, its invocations share servers of their own. `run`: a failed run's incident, judged by the
    build's node statuses (no contract, metric model or band). `fix`: `shas` are Cairn's own fix commits, applied
    in place of reverted (a failure no commit explains)."""
    check_inputs(shas, models, contract, metric_model, run)
    phases: dict[str, float] = {}
    isolation = sandboxes.isolation  # refused before anything is read or made
    if isolation.refuses_all:
        raise Unisolated(f"refused to build: verification.isolation is bwrap, but {isolation.reason}. Install "
                         "bubblewrap where Cairn's workers run (or set verification.isolation to auto).", isolation)
    production = production_manifest(prod_state)
    if run is None:
        targets, metrics = group_targets(incident_id, contract, band, before, metric_model, also)
        select = selector(models, *metrics)
        roots = [_unique_id(production, m) for m in (*models, *metrics)]
    else:
        targets, metrics, select = [], [], run.select(production, models)
        roots = [*(_unique_id(production, m) for m in models), *run.roots()]

    def expect(manifest: Mapping[str, Any]) -> tuple[list[set[str]], set[str]]:
        return reached(manifest, models, metrics) if run is None else run.reached(manifest)

    extra = ("--defer", "--state", str(prod_state), "--favor-state")
    record = dict(sha=shas[0], clone_id="", dbt_command=f"dbt build --select {select} {' '.join(extra)}",
                  before=before, after=None, durations=phases, reverted=() if fix else (*followers, *shas),
                  isolation=isolation.describe(), followers=tuple(followers), applied=tuple(shas) if fix else ())
    name = label or str(incident_id)
    with ExitStack() as cleanup:  # unwinds worktree and sandbox even when an exception escapes
        if servers is None:  # this verification's own: its deps, plan, estimate and build share one dbt
            servers = cleanup.enter_context(DbtServers(isolation, sandboxes_root, sandboxes.protected))
        with timed(phases, "worktree"):
            tree = cleanup.enter_context(Worktree.create(repo, deployed_sha, sandboxes_root, label=name))
        with timed(phases, "revert"):
            reverted = tree.apply(shas) if fix else tree.revert([*followers, *shas])
        if not reverted:
            action = "applying Cairn's fix" if fix else "reverting"
            return Verification(verdict=Verdict.conflict, **record, detail=(
                f"{action} {tree.conflict[:7]} at {deployed_sha[:7]} conflicts in "
                f"{', '.join(tree.conflict_files)}; a later commit changed the same lines."))
        project_dir = tree.path / project_subdir
        if not (project_dir / "dbt_project.yml").is_file():  # e.g. the revert of the commit that created the project
            return Verification(verdict=Verdict.build_failed, **record,
                                detail=f"the revert removes {Path(project_subdir) / 'dbt_project.yml'}: nothing to build")
        with timed(phases, "packages"):
            try:
                record["packages"] = worktree_packages(tree, Path(repo), project_subdir, Child(
                    isolation, writable=(tree.path,), readonly=sandboxes.protected, network=True,
                    servers=servers))
            except DbtError as exc:
                return Verification(verdict=Verdict.build_failed, **record, detail=str(exc))
        with timed(phases, "scope"):  # parse only what the build needs (jobs.verify.scope)
            narrowed = narrow(project_dir, production, roots)

        def done(verdict: Verdict, detail: str) -> Verification:
            return Verification(verdict=verdict, **record, **sandbox.spend(), detail=detail + sandbox.notes)

        with timed(phases, "clone"):
            sandbox = cleanup.enter_context(sandboxes.sandbox(name, project_dir, profile_name(project_dir),
                                                              production))
            record["clone_id"] = sandbox.clone_id
            child = Child(isolation, writable=(sandbox.profiles_dir,), readonly=sandboxes.protected,
                          network=sandbox.network, guard=sandbox.guard, servers=servers)
            dbt = Dbt(project_dir, sandbox.profiles_dir, target=sandbox.target, target_path=sandbox.target_path,
                      child=child)
            try:
                planned = narrowed.fallback(lambda: sandbox.plan(dbt))
                if not isolation.isolated:
                    refuse_python(planned if planned is not None else dbt.parse(), models, metrics, isolation)
            except DbtError as exc:  # e.g. the reverted project no longer parses
                return done(Verdict.build_failed, str(exc))
            if planned is not None:  # the adapter places and checks writes before building
                reach, expected = expect(planned)
                if not expected:
                    return done(Verdict.not_recovered, unreached(models, metrics))
                sandbox.prepare(production, expected)
                record["clone_id"] = sandbox.clone_id
        if planned is not None:
            with timed(phases, "estimate"):
                try:
                    sandbox.admit(dbt, select, extra, expected)
                except DbtError as exc:
                    return done(Verdict.build_failed, str(exc))
        with timed(phases, "build"):
            try:
                with sandbox.guarded():
                    result: InvocationResult | None = narrowed.fallback(lambda: dbt.build(select=select, extra=extra))
                error = None
            except DbtError as exc:  # e.g. the reverted project no longer parses
                result, error = None, str(exc)
            finally:
                _after_build(sandbox, record)
        if result is None:
            return done(Verdict.build_failed, error or "")
        record.update(dbt_command=result.command, tests=test_counts(result.nodes),
                      built=tuple(n.unique_id for n in result.nodes if n.unique_id.startswith(BUILT)))
        manifest = json.loads((sandbox.target_path / "manifest.json").read_text())
        if planned is None:
            reach, expected = expect(manifest)
            if not expected:
                return done(Verdict.not_recovered, unreached(models, metrics))
        problems = build_problems(result, expected)
        if problems:
            return done(Verdict.build_failed, problems)
        if run is not None:
            verdict, detail = judge_run(run, manifest, result.nodes, test_counts(result.nodes), record,
                                        "Cairn's fix" if fix else "the revert")
        else:
            with timed(phases, "measure"), sandbox.warehouse() as warehouse:
                verdict, detail = judge(warehouse, manifest, targets, reach, at, record)
        if deltas:
            with timed(phases, "evidence"):
                try:
                    record["deltas"] = tuple(sandbox.deltas(manifest, production, models))
                except WarehouseError as error:  # evidence, not the verdict: e.g. production's view is broken
                    detail += f" Sample-row deltas not taken: {error}"
        return done(verdict, detail)
    raise AssertionError("unreachable")  # pragma: no cover


def check_inputs(shas: Sequence[str], models: Sequence[str], contract: Contract | None, metric_model: str | None,
                 run: RunGoal | None = None) -> None:
    if not shas or not models:
        raise VerifyError("verify_revert needs at least one commit to revert and one model it touches.")
    if run is not None:
        if not run.roots():
            raise VerifyError("a failed run's verification needs at least one failing node that dbt builds.")
        return
    if contract is None or metric_model is None:
        raise VerifyError("verify_revert needs a contract and its metric model, or a failed run's goal.")
    if contract.model and contract.model != model_name(metric_model).split(".")[0]:
        raise VerifyError(f"contract {contract.id!r} reads {contract.model!r}, not {metric_model!r}; "
                          "pass the contract's own model as metric_model.")


def group_targets(incident_id: int, contract: Contract, band: BaselineStats, before: float | None,
                  metric_model: str, also: Sequence[Target]) -> tuple[list[Target], list[str]]:
    """Every contract the build must bring back, the incident's own first, and their metric models."""
    targets = [Target(incident_id, contract, band, before), *also]
    return targets, [metric_model, *(t.contract.relation_name for t in also)]


def worktree_packages(tree: Worktree, repo: Path, project_subdir: str, child: Child | None = None) -> str | None:
    """The reverted worktree's dbt packages, as production has them (`jobs.project.packages`); raises DbtError."""
    return provide(tree.path / project_subdir, repo / project_subdir, tree.changed(), repo, tree.path, child=child)


def refuse_python(manifest: Mapping[str, Any], models: Sequence[str], metrics: Sequence[str],
                  isolation: Isolation) -> None:
    """Unisolated, SQL may build (DuckDB's lockdown holds it) but Python models may not: raise Unisolated."""
    _, expected = reached(manifest, models, metrics)
    python = tuple(sorted(uid for uid in expected if manifest["nodes"][uid].get("language") == "python"))
    if python:
        raise Unisolated(
            f"refused to build: {', '.join(python)} {'is a Python model' if len(python) == 1 else 'are Python models'}"
            f", which run inside dbt's process, and sandbox builds here are not isolated ({isolation.reason}). "
            "Install bubblewrap where Cairn's workers run (verification.isolation: auto or bwrap), or verify this "
            "revert by hand.", isolation, python)


def reached(manifest: Mapping[str, Any], models: Sequence[str],
            metrics: Sequence[str]) -> tuple[list[set[str]], set[str]]:
    """The nodes the build must run for each metric model, and all of them."""
    reach = [expected_nodes(manifest, models, metric) for metric in metrics]
    return reach, set().union(*reach)


def unreached(models: Sequence[str], metrics: Sequence[str]) -> str:
    return (f"none of {', '.join(models)} feeds {', '.join(metrics)} at the reverted SHA: the revert "
            "cannot change the metric, and dbt built nothing.")


def judge(warehouse, manifest: Mapping[str, Any], targets: Sequence[Target], reach: Sequence[set[str]],
          at: datetime, record: dict[str, Any]) -> tuple[Verdict, str]:
    """Measure each target on the sandbox and judge it against its own band; the verdict of them all.

    A target whose model the revert does not reach is not measured (on BigQuery its model is not
    even in the sandbox): the revert cannot have changed it. Sets `after` (the first target's) and,
    for a group, `members` in `record`.
    """
    measured = [t for t, nodes in zip(targets, reach) if nodes]
    observations = dict(zip((t.incident_id for t in measured),
                            evaluate(warehouse, manifest, [t.contract for t in measured], at) if measured else ()))
    results = []
    for target in targets:
        observation = observations.get(target.incident_id)
        if observation is None:
            verdict, detail = Verdict.not_recovered, (f"the revert does not reach {target.contract.relation_name}: "
                                                      f"it cannot change {target.contract.id}.")
        else:
            verdict, detail = recovery_verdict(target.contract, observation, target.band)
        results.append(MemberResult(target.incident_id, target.contract.id, verdict, target.before,
                                    observation.value if observation else None, detail))
    own = results[0]
    record["after"] = own.after
    if len(results) == 1:
        return own.verdict, own.detail
    record["members"] = tuple(results)
    recovered = sum(r.verdict is Verdict.verified for r in results)
    if recovered == len(results):
        return Verdict.verified, own.detail
    tally = f" {recovered} of the group's {len(results)} contracts recovered."
    return (Verdict.not_recovered if own.verdict is Verdict.verified else own.verdict), own.detail + tally


def recovery_verdict(contract: Contract, observation, band: BaselineStats) -> tuple[Verdict, str]:
    """Whether the metric measured on the clone is back where it belongs, and the sentence that says so."""
    after = observation.value
    if contract.kind is Kind.distribution:
        return Verdict.not_recovered, ("distribution contracts are not verified on a clone yet: review the "
                                       f"rebuilt profile by hand ({observation.profile}).")
    if after is not None and band.contains(after):
        return Verdict.verified, f"{contract.id} = {fmt_number(after)} with the revert, {band_phrase(band)}."
    shown = "nothing to measure" if after is None else fmt_number(after)
    return Verdict.not_recovered, f"{contract.id} = {shown} with the revert, not {band_phrase(band)}."


def band_phrase(band: BaselineStats) -> str:
    """'inside [9,100, 10,800]'; a one-sided band (drop- or rise-only contracts) reads as one bound."""
    if math.isinf(band.upper) and not math.isinf(band.lower):
        return f"at or above {fmt_number(band.lower)}"
    if math.isinf(band.lower) and not math.isinf(band.upper):
        return f"at or below {fmt_number(band.upper)}"
    return f"inside [{fmt_number(band.lower)}, {fmt_number(band.upper)}]"


def selector(models: Sequence[str], *metric_models: str) -> str:
    """Each reverted model through to each metric's model: `m1+,+metric m2+,+metric` (a union)."""
    return " ".join(f"{model_name(m)}+,+{model_name(metric)}" for metric in dict.fromkeys(metric_models)
                    for m in dict.fromkeys(models))


def expected_nodes(manifest: Mapping[str, Any], models: Sequence[str], metric_model: str) -> set[str]:
    """unique_ids the selector must build: descendants of the reverted models that feed the metric."""
    metric = _unique_id(manifest, metric_model)
    if metric is None:
        raise VerifyError(f"model {metric_model!r} is not in the reverted project's manifest; "
                          "check the contract's model and the deployed SHA.")
    upstream = _reach(manifest["parent_map"], {metric})
    starts = {uid for m in models if (uid := _unique_id(manifest, m)) is not None}
    nodes = manifest["nodes"]
    return {uid for uid in _reach(manifest["child_map"], starts) & upstream
            if nodes.get(uid, {}).get("resource_type") in BUILT}


def build_problems(result: InvocationResult, expected: set[str]) -> str:
    """Why a build does not count: failing nodes with dbt's messages, or expected nodes not run."""
    lines = [f"{n.unique_id}: {n.status}: {(n.message or '').strip()}" for n in result.failures]
    lines += [f"{n.unique_id}: skipped" for n in result.nodes if n.status == "skipped"]
    missing = expected - {n.unique_id for n in result.nodes}
    lines += [f"{uid}: expected in the selection but dbt did not run it" for uid in sorted(missing)]
    if not result.success and not lines:
        lines.append("dbt reported failure without a failing node; see its log in the sandbox")
    return "\n".join(lines)


def test_counts(nodes: Sequence[NodeResult]) -> dict[str, int]:
    counts = {"pass": 0, "fail": 0, "error": 0, "skip": 0}
    for node in nodes:
        if node.unique_id.startswith(("test.", "unit_test.")):
            key = TEST_STATUSES.get(node.status, node.status)
            counts[key] = counts.get(key, 0) + 1
    return counts


def _after_build(sandbox: Sandbox, record: dict[str, Any]) -> None:
    """The write guard's verdict; a production that changed fails the verification loudly."""
    try:
        sandbox.after_build()
    except ProductionModified as error:
        failed = Verification(verdict=Verdict.build_failed, **record, detail=str(error))
        raise ProductionModified(str(error), verification=failed) from error


def model_name(model: str) -> str:
    """A selector for a model name or unique_id (`model.pkg.name[.v2]` -> `name[.v2]`)."""
    return ".".join(model.split(".")[2:]) if model.startswith("model.") else model


def _unique_id(manifest: Mapping[str, Any], model: str) -> str | None:
    if model in manifest["nodes"]:
        return model
    for uid, node in manifest["nodes"].items():
        if node.get("resource_type") == "model" and model in (node["name"], model_name(uid)):
            return uid
    return None


def _reach(edges: Mapping[str, Sequence[str]], starts: set[str]) -> set[str]:
    seen, todo = set(starts), list(starts)
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def production_manifest(prod_state: Path) -> dict[str, Any]:
    path = Path(prod_state) / "manifest.json"
    if not path.is_file():
        raise VerifyError(f"{path}: no production manifest; pass the directory of the deployed "
                          "build's manifest.json as prod_state.")
    return json.loads(path.read_text())


def profile_name(project_dir: Path) -> str:
    path = project_dir / "dbt_project.yml"
    if not path.is_file():
        raise VerifyError(f"{path}: no dbt project at the deployed SHA; check project_subdir.")
    return yaml.safe_load(path.read_text())["profile"]


@contextmanager
def timed(phases: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        phases[name] = round(time.perf_counter() - start, 3)
