"""`cairn doctor` on Snowflake: can Cairn's role read production, make sandboxes, and not write production?

Grants are layer (c), the last boundary. SHOW GRANTS TO ROLE lists what Cairn's role holds,
followed through every role granted to it: any privilege on the production database or an object
in it beyond reading (USAGE, SELECT, REFERENCES, MONITOR, READ) means the role could change
production. Reading is shown by a query returning no rows per production schema; the sandbox
database by creating and dropping an empty sandbox schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from jobs.core.errors import CairnError
from jobs.warehouse.bigquery_doctor import Finding, production_tables
from jobs.warehouse.snowflake import SnowflakeWarehouse
from jobs.warehouse.snowflake_sandbox import SnowflakeSandbox

READS = {"USAGE", "SELECT", "REFERENCES", "MONITOR", "READ"}


def doctor(warehouse: SnowflakeWarehouse, settings: Any, manifest: Mapping[str, Any], now: datetime) -> list[Finding]:
    """Every check, each a Finding; `warehouse` is a Cairn session with no sandbox."""
    findings = [_sandbox_writable(warehouse, settings, now)]
    warehouse.sandbox = None
    database = settings.database.upper()
    tables = [(d.upper(), s.upper(), t.upper()) for d, s, t in production_tables(manifest, settings.database)]
    if not tables:
        findings.append(Finding(False, "production tables", f"no built model in database {settings.database!r} in "
                                "the dbt manifest: check snowflake.database against the production target."))
    read: set[str] = set()
    for db, schema, table in tables:
        if schema in read:
            continue
        read.add(schema)
        name = f"{db}.{schema}.{table}"
        try:
            warehouse.query(f"SELECT * FROM {name} LIMIT 0")
            findings.append(Finding(True, f"read {db}.{schema}", f"selected from {name}"))
        except CairnError as error:
            findings.append(Finding(False, f"read {db}.{schema}", f"{error}: GRANT USAGE ON DATABASE {db}, USAGE ON "
                                    f"SCHEMA {db}.{schema} and SELECT ON ALL TABLES/VIEWS IN SCHEMA {db}.{schema} "
                                    f"(and FUTURE ones) TO ROLE {settings.role}"))
    findings.append(_production_not_writable(warehouse, settings.role.upper(), database))
    return findings


def _sandbox_writable(warehouse: SnowflakeWarehouse, settings: Any, now: datetime) -> Finding:
    database = settings.sandbox_database_name.upper()
    check = f"create sandboxes in {database}"
    try:
        with SnowflakeSandbox.create(warehouse, database=database, label="doctor", org=settings.org,
                                     now=now) as sandbox:
            name = sandbox.dataset
    except CairnError as error:
        return Finding(False, check, f"{error}: GRANT USAGE, CREATE SCHEMA ON DATABASE {database} TO ROLE "
                                     f"{settings.role}")
    return Finding(True, check, f"created and dropped {name}")


def role_grants(warehouse: SnowflakeWarehouse, role: str) -> list[dict[str, Any]]:
    """The role's grants and those of every role granted to it, each row naming the role that holds it."""
    found, seen, todo = [], set(), [role]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for row in warehouse.query(f"SHOW GRANTS TO ROLE {current}"):
            found.append({**row, "held_by": current})
            if str(row.get("granted_on")).upper() == "ROLE" and str(row.get("privilege")).upper() == "USAGE":
                todo.append(str(row["name"]).upper())
    return found


def _production_not_writable(warehouse: SnowflakeWarehouse, role: str, database: str) -> Finding:
    check = f"no write to {database}"
    try:
        grants = role_grants(warehouse, role)
    except CairnError as error:
        return Finding(False, check, f"cannot list the grants of role {role}: {error}")
    writes = sorted({f"{g['privilege']} on {g['granted_on']} {g['name']} (via {g['held_by']})" for g in grants
                     if _in_database(str(g.get("name") or ""), str(g.get("granted_on") or ""), database)
                     and str(g.get("privilege")).upper() not in READS})
    if writes:
        return Finding(False, check, (f"PRODUCTION IS WRITABLE by role {role}: {'; '.join(writes)}. Revoke these; "
                                      "Cairn needs only USAGE and SELECT on production (docs/snowflake.md)."))
    return Finding(True, check, f"role {role} holds only {', '.join(sorted(READS))} there")


def _in_database(name: str, kind: str, database: str) -> bool:
    name = name.upper().replace('"', "")
    if kind.upper() == "DATABASE":
        return name == database
    return name.startswith(database + ".")
