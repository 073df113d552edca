"""The child side of `jobs.project.isolation.Child`: one dbt invocation, its result written as JSON.

`python -m jobs.project.dbt_child RESULT [--guard WAREHOUSE:SANDBOX] -- DBT_ARGS...`
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import nullcontext
from pathlib import Path

os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")


def main(argv: list[str]) -> int:
    split = argv.index("--")
    own, args = argv[:split], argv[split + 1:]
    result_path = Path(own[0])
    guard = own[own.index("--guard") + 1] if "--guard" in own else None
    from dbt.cli.main import dbtRunner

    with _guard(guard):
        outcome = dbtRunner().invoke(args)
    nodes = [[r.node.unique_id, str(getattr(r.status, "value", r.status)), r.message]
             for r in (getattr(outcome.result, "results", None) or [])]
    result_path.write_text(json.dumps({
        "success": bool(outcome.success), "nodes": nodes,
        "exception": None if outcome.exception is None else str(outcome.exception)}))
    return 0


def _guard(spec: str | None):
    """The warehouse's write guard, in the process that sends dbt's requests (`Sandbox.guard`):
    `bigquery:PROJECT.DATASET` checks every API request (`jobs.warehouse.request_guard`);
    `snowflake:DATABASE.SCHEMA:SECONDS` every statement, and gives each session the statement timeout."""
    if spec is None:
        return nullcontext()
    from jobs.warehouse.statement_guard import Dataset

    warehouse, _, where = spec.partition(":")
    if warehouse == "bigquery":
        from jobs.warehouse.request_guard import guarded

        project, name = where.split(".", 1)
        return guarded(Dataset(project, name))
    if warehouse == "snowflake":
        from jobs.warehouse.snowflake_sandbox import guarded as statements_guarded

        schema, _, seconds = where.rpartition(":")
        database, name = schema.split(".", 1)
        return statements_guarded(Dataset(database, name), int(seconds))
    raise SystemExit(f"dbt_child: unknown guard {spec!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
