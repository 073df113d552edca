"""Snowflake as a warehouse, through snowflake-connector-python: every statement passes the guard first."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from sqlglot import exp

from jobs.core.errors import ConfigError, WarehouseError
from jobs.warehouse import identifier
from jobs.warehouse.snowflake_guard import check
from jobs.warehouse.statement_guard import Dataset

log = logging.getLogger(__name__)


def session_parameters(query_tag: str, timeout_seconds: int) -> dict[str, Any]:
    """What every Cairn session carries: its query tag, a statement timeout, and UTC for time literals."""
    return {"QUERY_TAG": query_tag, "STATEMENT_TIMEOUT_IN_SECONDS": int(timeout_seconds), "TIMEZONE": "UTC",
            "CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False}


def connect(settings: Any, *, password: str | None, passphrase: str | None = None, query_tag: str,
            root: Path | None = None):
    """A connector connection as Cairn's user, role and warehouse; errors never show a secret."""
    import snowflake.connector

    options: dict[str, Any] = {
        "account": settings.account, "user": settings.user, "role": settings.role,
        "warehouse": settings.warehouse, "protocol": settings.protocol, "application": "cairn",
        "session_parameters": session_parameters(query_tag, settings.budget_seconds), "login_timeout": 60,
    }
    if settings.host:
        options.update(host=settings.host, port=settings.port or 443)
    key = private_key_path(settings, root)
    if key is not None:
        options["private_key"] = _private_key(key, passphrase)
    elif password:
        options["password"] = password
    else:
        raise ConfigError("snowflake: no credentials: set env SNOWFLAKE_PASSWORD, or snowflake.private_key_file "
                          "in cairn.yml for key-pair authentication (docs/snowflake.md).")
    try:
        return snowflake.connector.connect(**options)
    except snowflake.connector.errors.Error as error:
        raise WarehouseError(f"cannot connect to Snowflake account {settings.account} as {settings.user} "
                             f"(role {settings.role}, warehouse {settings.warehouse}): {reason(error)}") from None


def private_key_path(settings: Any, root: Path | None) -> Path | None:
    """snowflake.private_key_file, relative to cairn.yml's directory."""
    if settings.private_key_file is None:
        return None
    path = Path(settings.private_key_file).expanduser()
    return path if path.is_absolute() or root is None else root / path


def _private_key(path: Path, passphrase: str | None) -> bytes:
    """The key as DER bytes; errors name the file, never its contents."""
    from cryptography.hazmat.primitives import serialization

    source = "cairn.yml: snowflake.private_key_file"
    if not path.is_file():
        raise ConfigError(f"{source}: {str(path)!r} is not a file; give the path of a PKCS#8 private key.")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), passphrase.encode() if passphrase else None)
    except (ValueError, TypeError):  # their messages may quote the key: never shown
        raise ConfigError(f"{source}: {str(path)!r} is not a PEM private key this passphrase opens "
                          "(env SNOWFLAKE_PRIVATE_KEY_PASSPHRASE for an encrypted key).") from None
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def reason(error: Exception) -> str:
    """Snowflake's own message (code and text), on one line."""
    message = getattr(error, "msg", None) or str(error)
    return " ".join(str(message).split())


class SnowflakeWarehouse:
    """A Snowflake session that reads anywhere and writes only inside `sandbox` (if one is given)."""

    dialect = "snowflake"

    def __init__(self, connection: Any, *, database: str, sandbox: Dataset | None = None):
        self.connection, self.database, self.sandbox = connection, database, sandbox
        self.statements = 0

    def _cursor(self, sql: str):
        import snowflake.connector

        check(sql, sandbox=self.sandbox)  # raises before sending
        cursor = self.connection.cursor()
        try:
            cursor.execute(sql)
        except snowflake.connector.errors.Error as error:
            raise WarehouseError(f"Snowflake refused the query: {reason(error)}") from None
        self.statements += 1
        return cursor

    def query(self, sql: str) -> list[dict[str, Any]]:
        """Run one statement (a write only inside the sandbox); rows as dicts keyed by column name."""
        cursor = self._cursor(sql)
        names = [column[0] for column in cursor.description or ()]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def execute(self, sql: str) -> None:
        """Run DDL/DML (the guard allows only the sandbox as its target)."""
        self._cursor(sql).close()

    def explain(self, sql: str) -> int:
        """Bytes the compiled plan of `sql` assigns to scan after pruning (EXPLAIN: nothing runs)."""
        [row] = self.query(f"EXPLAIN USING JSON {sql}")
        plan = json.loads(next(iter(row.values())))
        return int((plan.get("GlobalStats") or {}).get("bytesAssigned") or 0)

    def relation_name(self, node: dict[str, Any]) -> str:
        """Unquoted, as dbt-snowflake writes them (its default quoting): Snowflake upper-cases them."""
        table = exp.table_(identifier(node), db=node["schema"], catalog=node.get("database") or self.database)
        return table.sql(dialect=self.dialect)

    def columns(self, relation: str) -> dict[str, str] | None:
        """The relation's columns, lower-cased, and their Snowflake types (information_schema: metadata, no
        warehouse credits); None when it does not exist."""
        table = exp.to_table(relation, dialect=self.dialect)
        catalog = table.catalog or self.database
        rows = self.query(f"select column_name, data_type from {catalog}.information_schema.columns "
                          f"where table_schema = '{table.db.upper()}' and table_name = '{table.name.upper()}'")
        return {str(row["COLUMN_NAME"]).lower(): str(row["DATA_TYPE"]) for row in rows} or None

    def column_types(self, relation: str) -> dict:
        return {}  # Snowflake compares DATE and TIMESTAMP columns with a timestamp literal by itself

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> "SnowflakeWarehouse":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
