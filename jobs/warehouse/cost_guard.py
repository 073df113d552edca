"""The cost guard: a dry run of every model a verification would build, summed against the budget."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.core.formatting import fmt_bytes
from jobs.warehouse.sandboxes import SandboxRefused

GIB = 1024**3


@dataclass(frozen=True)
class Estimate:
    """Bytes the dry runs say a build would process, in total and per node."""

    total: int
    nodes: dict[str, int] = field(default_factory=dict)

    def largest(self, n: int = 3) -> list[tuple[str, int]]:
        return sorted(self.nodes.items(), key=lambda kv: -kv[1])[:n]


class CostRefused(SandboxRefused):
    """The verification would process more than the budget allows; nothing was built."""

    def __init__(self, estimate: Estimate, budget: int, clone_id: str = ""):
        self.estimate, self.budget, self.clone_id = estimate, budget, clone_id
        largest = ", ".join(f"{uid} {fmt_bytes(b)}" for uid, b in estimate.largest())
        super().__init__(
            f"verification refused: the dry run estimates {fmt_bytes(estimate.total)} "
            f"({estimate.total} bytes), over the budget of {fmt_bytes(budget)} (bigquery.budget_bytes "
            f"in cairn.yml). Largest: {largest or 'none'}. Raise the budget or verify by hand.")

    def audit_data(self) -> dict[str, Any]:
        """What the escalation records: the estimate, the budget and where the bytes would go."""
        return {"estimated_bytes": self.estimate.total, "budget_bytes": self.budget,
                "nodes": self.estimate.nodes, "clone_id": self.clone_id}


def estimate(dry_run: Any, manifest: Mapping[str, Any], nodes: Iterable[str]) -> Estimate:
    """Dry-run the compiled SELECT of each model in `nodes` (`dry_run(sql) -> bytes`)."""
    found = {}
    for uid in sorted(nodes):
        node = manifest["nodes"].get(uid, {})
        sql = node.get("compiled_code")
        if node.get("resource_type") == "model" and sql:
            found[uid] = dry_run(sql)
    return Estimate(sum(found.values()), found)


def check_budget(estimate: Estimate, budget: int, clone_id: str = "") -> None:
    if estimate.total > budget:
        raise CostRefused(estimate, budget, clone_id)


def billed_by_dbt(target_path: Path) -> int:
    """Bytes billed to the dbt invocation whose run_results.json is in `target_path`."""
    import json

    path = Path(target_path) / "run_results.json"
    if not path.is_file():
        return 0
    results = json.loads(path.read_text()).get("results", [])
    return sum(int((r.get("adapter_response") or {}).get("bytes_billed") or 0) for r in results)
