"""DuckDB as a warehouse, opened read-only: the measuring path never writes production."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
from sqlglot import exp

from jobs.core.errors import WarehouseBusy, WarehouseError
from jobs.warehouse import identifier, qualified_name


class DuckDBWarehouse:
    """One DuckDB file; `database` is the name dbt knows it by when that differs from the file's."""

    dialect = "duckdb"

    def __init__(self, path: str | Path, read_only: bool = True, database: str | None = None):
        self.path = Path(path)
        try:
            self._con = duckdb.connect(str(self.path), read_only=read_only)
        except duckdb.Error as error:
            # A lock held by a running dbt build clears when it finishes: worth a retry.
            kind = WarehouseBusy if "lock" in str(error).lower() else WarehouseError
            raise kind(
                f"cannot open DuckDB file {self.path}: {error}. Check the path; if a dbt run holds "
                "the file for writing, measure after it finishes."
            ) from None
        # Naive TIMESTAMP window literals meet TIMESTAMPTZ columns in the session zone: pin UTC.
        self._con.execute("SET TimeZone = 'UTC'")
        # Opened directly, the catalog is the file's stem; dbt-duckdb names its database the same.
        self.catalog: str = self._con.execute("SELECT current_database()").fetchone()[0]
        self.database = database or self.catalog

    def query(self, sql: str) -> list[dict[str, Any]]:
        try:
            cursor = self._con.execute(sql)
            description = cursor.description or ()
            names = [column[0] for column in description]
            maps = [str(column[1]).startswith("MAP(") for column in description]
            return [
                {name: _map(v) if is_map else v for name, is_map, v in zip(names, maps, row)}
                for row in cursor.fetchall()
            ]
        except duckdb.Error as error:
            raise WarehouseError(f"DuckDB refused the query: {error}") from None

    def relation_name(self, node: dict[str, Any]) -> str:
        database = node.get("database") or self.database
        if database != self.database:
            raise WarehouseError(
                f"{node.get('unique_id', node.get('name'))} lives in database {database!r}, but "
                f"{self.path.name} is {self.database!r}. If this file is a copy of {database!r}, "
                f"open it with DuckDBWarehouse(path, database={database!r})."
            )
        return qualified_name(self.catalog, node["schema"], identifier(node), self.dialect)

    def columns(self, relation: str) -> dict[str, str] | None:
        """`relation`'s columns, lower-cased, and their types as DuckDB names them; None when it does not exist."""
        # information_schema, not DESCRIBE: it still lists a view whose input lost a column (DESCRIBE re-binds it
        # and fails), which is what a failed run's drift leaves in production.
        table = exp.to_table(relation, dialect="duckdb")
        rows = self._con.execute(
            "select column_name, data_type from information_schema.columns where table_schema = ? and table_name = ?"
            " and (? = '' or table_catalog = ?) order by ordinal_position",
            [table.db, table.name, table.catalog, table.catalog]).fetchall()
        return {name.lower(): str(kind) for name, kind in rows} or None

    def column_types(self, relation: str) -> dict:
        return {}  # DuckDB compares DATE and TIMESTAMP(TZ) columns with a UTC TIMESTAMP literal as is

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> "DuckDBWarehouse":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _map(value: Any) -> dict | None:
    """duckdb 2.0 returns a MAP as a dict; clients before 1.1 gave {'key': [...], 'value': [...]}."""
    if value is None:
        return None
    if value.keys() == {"key", "value"} and isinstance(value["key"], list):
        return dict(zip(value["key"], value["value"]))
    return dict(value)
