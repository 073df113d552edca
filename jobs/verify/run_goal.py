"""A failed production run's incident, verified by the build's node statuses: there is no metric to re-measure.

The revert's build rebuilds every node the run left stale (errored, failed, skipped) with its children;
verified iff the failing nodes now succeed, their tests pass and their children build and pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jobs.core.records import MemberResult, Verdict

TESTS = ("test.", "unit_test.")
BUILDS = ("model.", "seed.", "snapshot.", *TESTS)  # what `dbt build` runs


@dataclass(frozen=True)
class RunMember:
    """One grouped run incident: its failing node, which the same build must bring back too."""

    incident_id: int
    subject: str  # its contract_id (run:<node>)
    node: str
    failing_rows: int | None = None


@dataclass(frozen=True)
class RunGoal:
    """What a failed run's incident asks of the revert's build, instead of a metric back in its band."""

    failing: tuple[str, ...]  # unique_ids that failed in the run: each must now succeed
    stale: tuple[str, ...]  # every node the run errored, failed or skipped: production is stale there
    failing_rows: int | None = None  # a failing test's rows in the run
    members: tuple[RunMember, ...] = ()  # a group's other incidents (same run, same suspect range)

    def roots(self) -> tuple[str, ...]:
        """The nodes a build must run (sources have freshness, exposures nothing to build)."""
        return tuple(uid for uid in dict.fromkeys((*self.failing, *self.stale)) if uid.startswith(BUILDS))

    def select(self, manifest: Mapping[str, Any], models: Sequence[str]) -> str:
        """Each reverted model, the failing node and each stale model, with their children: `m+ failing+
        skipped+` (the stale tests come with their models; `reached` still expects each to run)."""
        nodes = manifest["nodes"]
        wanted = [*models, *(uid for uid in self.roots() if uid in self.failing or not uid.startswith(TESTS))]
        names = [nodes[uid]["name"] if uid in nodes else uid for uid in wanted]
        return " ".join(f"{name}+" for name in dict.fromkeys(names))

    def reached(self, manifest: Mapping[str, Any]) -> tuple[list[set[str]], set[str]]:
        """The nodes the build must run, as `reached` gives them for metrics (one set: no metric)."""
        expected = {uid for uid in self.roots() if uid in manifest["nodes"]}
        return [expected], expected

    def gone(self, manifest: Mapping[str, Any]) -> list[str]:
        """Failing nodes the reverted project no longer has: removing a node does not make it pass."""
        return [uid for uid in self.failing if uid.startswith(BUILDS) and uid not in manifest["nodes"]]


def judge_run(run: RunGoal, manifest: Mapping[str, Any], nodes: Sequence[Any], tests: Mapping[str, int],
              record: dict[str, Any], change: str = "the revert") -> tuple[Verdict, str]:
    """A failed run's nodes on the reverted build (which `build_problems` found free of failures): verified
    unless the revert removed a failing node. Sets `after` (a failing test's rows now: none). `change`: what was
    built, as the sentence names it ("the revert", "Cairn's fix")."""
    gone = run.gone(manifest)
    if gone:
        return Verdict.not_recovered, (f"{change} removes {', '.join(gone)}: a failing node that no longer exists "
                                       "has not been fixed.")
    statuses = {n.unique_id: n.status for n in nodes}
    record["after"] = 0.0 if run.failing_rows is not None else None
    if run.members:  # a group's build: each member's node passed on it (build_problems saw no failure)
        record["members"] = tuple(
            MemberResult(m.incident_id, m.subject, Verdict.verified, m.failing_rows,
                         0.0 if m.failing_rows is not None else None, f"{m.node} {statuses.get(m.node, 'not run')}")
            for m in run.members)
    now = ", ".join(f"{uid.split('.', 2)[-1]} {statuses.get(uid, 'not run')}" for uid in run.roots()
                    if uid in run.failing)
    rebuilt = sum(1 for uid in run.roots() if uid not in run.failing)
    return Verdict.verified, (f"with {change}: {now}; {rebuilt} node{'s' * (rebuilt != 1)} the failed run left "
                              f"stale rebuilt and passing; tests {tests.get('pass', 0)} passed, none failed.")
