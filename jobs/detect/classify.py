"""Why each failing node of a run failed, from the recorded run, its manifest and the warehouse (read only).

- a freshness `error` is a **source freshness** breach: the newest row against `error_after`;
- a `fail` is a **test failure**: which test, on which model and column, how many failing rows, and
  a few of them read from the warehouse by the test's own SQL, PII columns masked as in row deltas;
- an `error` whose message is dbt's `Compilation Error`, `Dependency Error` or `Parsing Error` is a
  **compilation** error: the SQL never reached the warehouse;
- any other `error` is a **runtime SQL** error, unless the column the warehouse says is missing is one
  an upstream node had (the project declares it there in YAML `columns:`, or the failing model's own
  relation, as its last good build left it, has a column of that name) and that node's relation no
  longer has: that is **schema drift**, with the relation's current columns and those the project does
  not declare (a renamed column shows up there).

Skipped nodes and warnings are not failures and get no class.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from jobs.core.errors import WarehouseError
from jobs.core.runs import FRESHNESS, Classification, FailureKind, NodeRun, Run
from jobs.warehouse.row_deltas import MASK, pii_columns

# What each warehouse says when a query names a column its input does not have.
MISSING_COLUMN = (
    re.compile(r'Referenced column "([^"]+)" not found'),  # DuckDB
    re.compile(r'column ("?[\w$."]+"?) does not exist'),  # PostgreSQL, Redshift
    re.compile(r"Unrecognized name: (`?[\w$]+`?)"),  # BigQuery
    re.compile(r"invalid identifier '([^']+)'"),  # Snowflake
)
COMPILATION = ("Compilation Error", "Dependency Error", "Parsing Error")

SAMPLE_ROWS = 5

Columns = Callable[[str], "Mapping[str, str] | None"]  # a relation's current columns (lower case) and types; None if absent
Query = Callable[[str], list[dict[str, Any]]]  # one read-only statement against production


def classify(run: Run, manifest: Mapping[str, Any], columns: Columns, query: Query | None = None) -> list[Classification]:
    """A class for every failing node of `run`, in the run's order; `query` reads failing tests' sample rows."""
    nodes = {**manifest.get("sources", {}), **manifest.get("nodes", {})}
    return [classify_node(node, nodes, columns, query) for node in run.failures]


def classify_node(node: NodeRun, nodes: Mapping[str, Any], columns: Columns, query: Query | None = None
                  ) -> Classification:
    if node.phase == FRESHNESS:
        return _freshness(node)
    if node.status == "fail":
        test = nodes.get(node.unique_id, {})
        return _test_failure(node, test, _sample(node, test, nodes, query))
    message = node.message or ""
    if any(marker in message for marker in COMPILATION):
        return Classification(node.unique_id, FailureKind.compilation,
                              f"{_name(node)} did not compile: {_first_line(message)}",
                              {"message": message})
    missing = missing_column(message)
    if missing is not None:
        drift = _drift(missing, nodes.get(node.unique_id, {}), nodes, columns)
        if drift is not None:
            return Classification(node.unique_id, FailureKind.schema_drift,
                                  f"{_name(node)} reads {missing}, which {drift['upstream']} declares but "
                                  f"{drift['relation']} no longer has", {"message": message, **drift})
    evidence = {"message": message} | ({"missing_column": missing} if missing else {})
    return Classification(node.unique_id, FailureKind.runtime_sql,
                          f"the warehouse refused {_name(node)}: {_first_line(message)}", evidence)


def missing_column(message: str) -> str | None:
    """The column a warehouse error says does not exist, lower-cased; None if it says no such thing."""
    for pattern in MISSING_COLUMN:
        found = pattern.search(message)
        if found:  # a qualified name (alias.column) or a quoted one: the column's own name
            return found.group(1).split(".")[-1].strip('"`').lower()
    return None


def _drift(missing: str, declared: Mapping[str, Any], nodes: Mapping[str, Any], columns: Columns) -> dict | None:
    """The upstream node whose relation lacks `missing` now though it had it, with that relation's columns.

    It had it when the project declares it there (YAML `columns:`), or when the failing model's own relation,
    as its last good build left it, still has a column of that name: the model read it from upstream then."""
    built = columns(declared["relation_name"]) if declared.get("relation_name") else None
    for parent_id in declared.get("depends_on", {}).get("nodes", []):
        parent = nodes.get(parent_id, {})
        expected = {name.lower() for name in parent.get("columns", {})}
        relation = parent.get("relation_name")
        if not relation or (missing not in expected and (built is None or missing not in built)):
            continue
        current = columns(relation)
        if current is None or missing in current:
            continue
        return {"missing_column": missing, "upstream": parent_id, "relation": relation,
                "current_columns": sorted(current), "undeclared_columns": sorted(set(current) - expected)}
    return None


def _sample(node: NodeRun, test: Mapping[str, Any], nodes: Mapping[str, Any], query: Query | None) -> dict:
    """A few failing rows, by the SQL the test ran; columns that are PII on the tested models are masked."""
    if query is None or not node.compiled_code or not node.failures:
        return {}
    tested = {test.get("attached_node"), *test.get("depends_on", {}).get("nodes", [])} - {None}
    pii = {name.lower() for uid in tested for name in pii_columns(nodes.get(uid, {}))}
    try:
        rows = query(f"select * from (\n{node.compiled_code.strip().rstrip(';')}\n) as failing limit {SAMPLE_ROWS}")
    except WarehouseError as error:  # the sample is evidence, not the verdict: say why it is missing
        return {"sample_error": str(error)}
    return {"sample": [{column: MASK if column.lower() in pii and value is not None else _plain(value)
                        for column, value in row.items()} for row in rows],
            "masked_columns": sorted(pii & {column.lower() for row in rows for column in row})}


def _plain(value: Any) -> Any:
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def _test_failure(node: NodeRun, test: Mapping[str, Any], sample: dict) -> Classification:
    metadata = test.get("test_metadata") or {}
    attached, column = test.get("attached_node"), test.get("column_name")
    rows = node.failures if node.failures is not None else 0
    where = f" on {attached.rsplit('.', 1)[-1]}{'.' + column if column else ''}" if attached else ""
    return Classification(node.unique_id, FailureKind.test_failure,
                          f"test {metadata.get('name') or _name(node)}{where} failed: {rows} failing rows",
                          {"failing_rows": rows, "test": metadata.get("name"), "attached_node": attached,
                           "column": column, "message": node.message, **sample})


def _freshness(node: NodeRun) -> Classification:
    details = node.details
    loaded, age = details.get("max_loaded_at"), details.get("max_loaded_at_time_ago_in_s")
    limit = (details.get("criteria") or {}).get("error_after") or {}
    summary = (f"{_name(node)} is stale: newest row loaded {loaded}"
               + (f", {age / 3600:.1f}h before the check" if age is not None else "")
               + (f" (error after {limit.get('count')} {limit.get('period')}s)" if limit.get("count") else "")
               if loaded else f"{_name(node)}: freshness could not be checked: {_first_line(node.message or '')}")
    return Classification(node.unique_id, FailureKind.source_freshness, summary,
                          {"max_loaded_at": loaded, "age_seconds": age, "error_after": limit or None,
                           "message": node.message})


def _name(node: NodeRun) -> str:
    return node.unique_id.split(".", 2)[-1] if node.unique_id.count(".") >= 2 else node.unique_id


def _first_line(message: str) -> str:
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return " — ".join(lines[:2]) if lines else "(no message)"
