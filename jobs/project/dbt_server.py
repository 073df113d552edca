"""The jailed side of `jobs.project.isolation.DbtServer`: dbt invocations, one at a time, for as long as asked.

`python -m jobs.project.dbt_server`, started inside the jail. Each request is one JSON line on stdin,
`{"argv": [...], "cwd": ..., "env": {...}, "guard": "bigquery:P.D" | null}`; each answer one JSON line,
`{"success", "nodes", "exception"}`, on the stdout the process started with. Everything dbt and the
project's models print goes to stderr instead, so nothing they write can pass for an answer.

One process serves every build of a verification: dbt's imports, its adapter and the Jinja of its own
macros are paid once, not per build (a cold child spends about 3 s of a 4 s parse of the example on them).
"""

from __future__ import annotations

import gc
import json
import os
import sys
from contextlib import nullcontext
from typing import Any

os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")


def main() -> int:
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # dbt's own output and any print() of a model: stderr, never the answer channel
    sys.stdout = sys.stderr
    from dbt.cli.main import dbtRunner  # before the first request: the import is what a warm server saves

    for line in sys.stdin:
        answers.write(json.dumps(invoke(dbtRunner, json.loads(line))) + "\n")
    # The parent waits for this exit (DbtServer.close) before the stage goes on, and the interpreter's teardown
    # collecting dbt's object graph took 0.6 s of it. Frozen objects are left to the exit instead; atexit handlers
    # still run, and Python never promised finalizers of what is alive at exit.
    gc.freeze()
    return 0


def invoke(runner: Any, request: dict[str, Any]) -> dict[str, Any]:
    from jobs.project.dbt import environment, release_duckdb

    os.chdir(request["cwd"])
    try:
        with environment(request.get("env") or {}), _guard(request.get("guard")):
            try:
                outcome = runner().invoke(request["argv"])
            finally:
                release_duckdb()  # the next build opens another file; Cairn reads this one next
    except Exception as exc:  # a guard refusing, an adapter failing to load: the parent reports it
        return {"success": False, "nodes": [], "exception": f"{type(exc).__name__}: {exc}"}
    nodes = [[r.node.unique_id, str(getattr(r.status, "value", r.status)), r.message]
             for r in (getattr(outcome.result, "results", None) or [])]
    return {"success": bool(outcome.success), "nodes": nodes,
            "exception": None if outcome.exception is None else str(outcome.exception)}


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
    raise ValueError(f"dbt_server: unknown guard {spec!r}")


if __name__ == "__main__":
    sys.exit(main())
