"""Triage: what kind of incident this is (a code change, a data change, an intended change or unknown)
and the evidence that decided it.

Decided twice, each time from the strongest evidence at hand:

- After attribution: a commit in the suspect range that marks the change as intended makes it
  `intentional`; revertable commits that touch the metric's lineage make it a suspected
  `code_change` (to be proven on a clone); with neither, the sources upstream are measured
  (`jobs.attribute.upstream`) and any that loaded out of its band or went stale makes it a `data_change`,
  naming them; otherwise it is `unknown`.
- After verification: a revert that recovers the metric on a clone of the same data proves a
  `code_change`; when no revert does, the sources are measured and the class is `data_change` or
  `unknown` as above, the failed reverts among the evidence.
- A failed run no commit explains (`data_caused`) is a `data_change` escalated to the node's owner with
  the sources that moved and a failing test's rows.

Stored in the incident's details under "triage" as {"class", "evidence", "upstream"}.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from jobs.attribute.upstream import SourceFact
from jobs.core.records import RunDetail, TriageDetail


class TriageClass(str, Enum):
    code_change = "code_change"
    data_change = "data_change"
    intentional = "intentional"
    unknown = "unknown"


@dataclass(frozen=True)
class Triage:
    kind: TriageClass
    evidence: tuple[str, ...]
    upstream: tuple[SourceFact, ...] = ()
    stage: str = "attribution"  # which stage decided it: attribution or verification

    def detail(self) -> TriageDetail:
        """As the incident keeps it."""
        return TriageDetail(kind=self.kind.value, evidence=self.evidence, stage=self.stage,
                            upstream=tuple(fact.to_json() for fact in self.upstream))


def after_attribution(*, intentional: Sequence[str], revertable: Sequence[str],
                      upstream: Sequence[SourceFact]) -> Triage:
    """From attribution's findings: `intentional` and `revertable` are one line per commit."""
    if intentional:
        return Triage(TriageClass.intentional, (f"commit {intentional[0]} marks the change as intended",))
    if revertable:
        return Triage(TriageClass.code_change, (f"suspected: {revertable[0]} touches the metric's lineage "
                                                "(a revert is verified on a clone next)",))
    return _by_data(("no commit in the suspect range touches the metric's lineage",), upstream)


def after_verification(*, verified: str | None, tried: Sequence[str], upstream: Sequence[SourceFact]) -> Triage:
    """From verification: `verified` is the line for the revert that recovered the metric, if one did."""
    if verified:
        return Triage(TriageClass.code_change, (f"proven: {verified}",), stage="verification")
    reverts = f"reverting {', '.join(tried)} did not recover it on a clone" if tried else "nothing could be reverted"
    return _by_data((reverts,), upstream, "verification")


def _by_data(evidence: tuple[str, ...], upstream: Sequence[SourceFact], stage: str = "attribution") -> Triage:
    moved = [fact for fact in upstream if fact.moved]
    if moved:
        return Triage(TriageClass.data_change, (*evidence, *(fact.sentence() for fact in moved)), tuple(upstream),
                      stage)
    measured = [fact for fact in upstream if fact.rows is not None]
    note = (f"the {len(measured)} sources upstream loaded as usual" if measured
            else "no source upstream could be measured")
    return Triage(TriageClass.unknown, (*evidence, note), tuple(upstream), stage)


def data_caused(run: RunDetail, why: str, owner: str | None, upstream: Sequence[SourceFact]) -> Triage:
    """A failed run no code explains: who owns the node, which sources moved, a failing test's rows."""
    rows = []
    if run.failing_rows is not None:
        sample = run.evidence.get("sample") or []
        first = f"; e.g. {', '.join(f'{k}={v}' for k, v in list(sample[0].items())[:6])}" if sample else ""
        rows = [f"{run.failing_rows:,} failing rows in production{first}"]
    return Triage(TriageClass.data_change, (why, *([f"owner of {shown(run.node)}: {owner}"] if owner else []),
                                            *(fact.sentence() for fact in upstream if fact.moved), *rows),
                  tuple(upstream))


def owner_of(manifest: Mapping[str, Any], unique_id: str) -> str | None:
    """Who answers for a node: its `meta.owner` (a source's own or its source's), else its dbt group's owner.
    A test answers to what it tests: its model, or its source."""
    every = {**manifest.get("sources", {}), **manifest.get("nodes", {})}
    node = every.get(unique_id) or {}
    if node.get("resource_type") == "test":
        tested = node.get("attached_node") or next(iter(node.get("depends_on", {}).get("nodes", [])), None)
        node = every.get(tested) or node
    meta = {**(node.get("source_meta") or {}), **(node.get("meta") or {}),
            **((node.get("config") or {}).get("meta") or {})}
    if meta.get("owner"):
        return str(meta["owner"])
    project = manifest.get("metadata", {}).get("project_name")
    group = manifest.get("groups", {}).get(f"group.{project}.{node['group']}") if node.get("group") else None
    owner = (group or {}).get("owner") or {}
    return owner.get("email") or owner.get("name")


def shown(unique_id: str) -> str:
    """A node as people name it: `raw.refunds` for a source, its name for a model or a test."""
    parts = unique_id.split(".")
    return ".".join(parts[2:]) if unique_id.startswith("source.") else parts[2] if len(parts) > 2 else unique_id
