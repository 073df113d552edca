"""The cost guard on Snowflake: warehouse time, estimated from EXPLAIN before a verification builds.

Snowflake bills the seconds a warehouse runs, not the bytes a query reads, and nothing predicts a
query's duration before it runs. EXPLAIN does tell what the compiled plan would scan after
pruning (GlobalStats.bytesAssigned, free: nothing runs), so the estimate is the scan of every
model the build selects divided by the rate this warehouse scans at (`scan_bytes_per_second`,
measured from QUERY_HISTORY). It ignores joins, spills and queueing, and counts a view's SELECT
although creating a view scans nothing; the statement timeout (the same budget, per statement)
bounds what a wrong estimate can cost.
"""

from __future__ import annotations

import math
from typing import Any

from jobs.core.formatting import fmt_bytes
from jobs.warehouse.cost_guard import Estimate
from jobs.warehouse.sandboxes import SandboxRefused


def warehouse_seconds(estimate: Estimate, scan_bytes_per_second: int) -> int:
    """The estimate's scan at the warehouse's rate, in whole seconds."""
    return math.ceil(estimate.total / scan_bytes_per_second)


class WarehouseTimeRefused(SandboxRefused):
    """The verification would run the warehouse longer than the budget allows; nothing was built."""

    def __init__(self, estimate: Estimate, seconds: int, budget: int, rate: int, clone_id: str = ""):
        self.estimate, self.seconds, self.budget, self.rate, self.clone_id = estimate, seconds, budget, rate, clone_id
        largest = ", ".join(f"{uid} {fmt_bytes(b)}" for uid, b in estimate.largest())
        super().__init__(
            f"verification refused: EXPLAIN says the build would scan {fmt_bytes(estimate.total)}, about "
            f"{seconds:,} warehouse-seconds at {fmt_bytes(rate)}/s (snowflake.scan_bytes_per_second), over the "
            f"budget of {budget:,} (snowflake.budget_seconds in cairn.yml). Largest: {largest or 'none'}. "
            "Raise the budget, size the scan rate to the warehouse, or verify by hand.")

    def audit_data(self) -> dict[str, Any]:
        """What the escalation records: the scan, the seconds it means, the budget, where it goes."""
        return {"scanned_bytes": self.estimate.total, "estimated_seconds": self.seconds,
                "budget_seconds": self.budget, "scan_bytes_per_second": self.rate,
                "nodes": self.estimate.nodes, "clone_id": self.clone_id}


def check_budget(estimate: Estimate, budget_seconds: int, scan_bytes_per_second: int, clone_id: str = "") -> int:
    """The estimate in warehouse-seconds; raises WarehouseTimeRefused above the budget."""
    seconds = warehouse_seconds(estimate, scan_bytes_per_second)
    if seconds > budget_seconds:
        raise WarehouseTimeRefused(estimate, seconds, budget_seconds, scan_bytes_per_second, clone_id)
    return seconds
