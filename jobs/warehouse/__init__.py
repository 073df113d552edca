"""The warehouse as the measuring path sees it: read-only queries and dbt relation names."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from sqlglot import exp


@runtime_checkable
class Warehouse(Protocol):
    """A read-only connection to the warehouse dbt builds into."""

    dialect: str  # a sqlglot dialect name: 'duckdb', 'bigquery', 'snowflake'

    def query(self, sql: str) -> list[dict[str, Any]]:
        """Run one read-only statement; rows as dicts keyed by column name."""
        ...

    def relation_name(self, node: dict[str, Any]) -> str:
        """The fully qualified, quoted name of a dbt manifest node or source."""
        ...

    def columns(self, relation: str) -> dict[str, str] | None:
        """`relation`'s current columns, lower-cased, and their types as the warehouse names them; None when the
        relation does not exist (what a failed run's schema drift is read from, jobs.detect.classify)."""
        ...

    def column_types(self, relation: str) -> dict[str, exp.DataType]:
        """Lower-cased column name -> type of `relation`, where contract SQL must match the time
        column's type; empty where the warehouse compares dates and timestamps by itself."""
        ...

    def close(self) -> None: ...


def identifier(node: dict[str, Any]) -> str:
    """The table name dbt materializes a node under: a source's identifier, a model's alias."""
    return node.get("identifier") or node.get("alias") or node["name"]


def qualified_name(database: str | None, schema: str, table: str, dialect: str) -> str:
    """`"db"."schema"."table"` (or `` `project`.`dataset`.`table` ``), every part quoted."""
    return exp.table_(table, db=schema, catalog=database, quoted=True).sql(dialect=dialect)
