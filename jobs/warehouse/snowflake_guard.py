"""Layer (a) on Snowflake: every statement Cairn, or dbt in a sandbox build, sends is parsed first.

A statement leaves the process only if each object it writes lies in the one schema it may write
(the incident's sandbox, `DATABASE.SCHEMA`), or, with no sandbox, if it writes nothing at all.
Names are compared as Snowflake resolves them: unquoted identifiers upper-cased, quoted ones as
written. A write must name its target fully (`db.schema.table`; `db.schema` for a schema): a
shorter name would resolve against the session's current database and schema, which a model's
SQL can change. The guard fails closed: statements it cannot read (CALL, EXECUTE IMMEDIATE,
scripting blocks, PUT/GET, anything sqlglot falls back to a generic command for) are refused,
except SHOW, DESCRIBE and EXPLAIN, which only read metadata. USE is refused but for USE WAREHOUSE
(dbt's `snowflake_warehouse` config): another role could carry write grants Cairn's own lacks.
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from jobs.warehouse.statement_guard import (
    WRITES,
    Dataset,
    ProductionWriteRefused,
    Target,
    quiet_parser,
    refuse_outside,
    statement_kind,
)

DIALECT = "snowflake"
_READ_COMMANDS = ("SHOW", "DESCRIBE", "DESC", "EXPLAIN")
_SCHEMA_KINDS = {"SCHEMA", "DATABASE"}


def check(sql: str, *, sandbox: Dataset | None) -> list[Target]:
    """Refuse `sql` unless everything it writes is inside `sandbox` (None: refuse every write)."""
    return refuse_outside(written_targets(sql), lambda t: _inside(t, sandbox), sandbox, "schema")


def written_targets(sql: str) -> list[Target]:
    """Every object `sql` would write, with its database and schema as Snowflake resolves them."""
    try:
        with quiet_parser():
            statements = [s for s in sqlglot.parse(sql, read=DIALECT) if s is not None]
    except (ParseError, TokenError) as error:
        raise ProductionWriteRefused(
            f"refused before sending: the statement is not Snowflake SQL Cairn can read "
            f"({str(error).splitlines()[0]}); nothing was sent.") from None
    targets: list[Target] = []
    for statement in statements:
        if _reads(statement):
            continue
        if isinstance(statement, exp.Grant):
            targets.append(_target(statement, statement.args.get("securable"), "GRANT"))
            continue
        if not isinstance(statement, (*WRITES, exp.Comment)) or _session(statement):
            raise ProductionWriteRefused(
                f"refused before sending: Cairn does not send {_verb(statement)} statements "
                f"({statement.sql(DIALECT)[:80]!r}) to Snowflake: it sends queries, metadata reads, "
                "session settings and DDL/DML whose targets it can check. Nothing was sent.")
        if isinstance(statement, exp.Drop):
            nodes = statement.args.get("tables") or [statement.this]
        else:
            nodes = statement.expressions if isinstance(statement, exp.TruncateTable) else [statement.this]
        targets += [_target(statement, node, statement_kind(statement)) for node in nodes]
    return targets


def _reads(statement: exp.Expression) -> bool:
    """Queries, metadata reads, transaction control, session settings and USE WAREHOUSE."""
    if isinstance(statement, exp.Query):
        return not _system_calls(statement)
    if isinstance(statement, (exp.Show, exp.Describe, exp.Transaction, exp.Commit, exp.Rollback, exp.Semicolon)):
        return True
    if isinstance(statement, exp.Use):
        return str(statement.args.get("kind") or "").upper() == "WAREHOUSE"
    if isinstance(statement, exp.Command):
        return str(statement.this).upper() in _READ_COMMANDS
    return _session(statement)


def _session(statement: exp.Expression) -> bool:
    """ALTER SESSION SET/UNSET: the session's own parameters (query tag, timeouts), no object."""
    return isinstance(statement, exp.Alter) and str(statement.args.get("kind") or "").upper() == "SESSION"


def _system_calls(query: exp.Expression) -> list[str]:
    """SYSTEM$ functions in a query: some act (cancel queries, abort sessions, change objects)."""
    names = [f.name for f in query.find_all(exp.Anonymous)]
    return [n for n in names if n.upper().startswith("SYSTEM$")]


def _verb(statement: exp.Expression) -> str:
    if isinstance(statement, exp.Command):
        return str(statement.this).upper()
    if isinstance(statement, exp.Query) and (calls := _system_calls(statement)):
        return f"SELECT {calls[0].upper()}(…)"
    return type(statement).__name__.upper()


def _target(statement: exp.Expression, node: exp.Expression | None, kind: str) -> Target:
    while isinstance(node, (exp.Schema, exp.UserDefinedFunction)):
        node = node.this
    if not isinstance(node, exp.Table):
        raise ProductionWriteRefused(f"refused before sending: cannot tell what {kind} writes.")
    parts = [_name(p) for p in (node.args.get("catalog"), node.args.get("db"), node.args.get("this")) if p]
    if kind.split()[-1] in _SCHEMA_KINDS:
        if kind.endswith("DATABASE") and len(parts) == 1:
            return Target(parts[0], "", None, kind)
        if len(parts) == 2:
            return Target(parts[0], parts[1], None, kind)
    elif len(parts) == 3:
        return Target(parts[0], parts[1], parts[2], kind)
    raise ProductionWriteRefused(
        f"refused before sending: {kind} {'.'.join(parts) or '?'} is not a fully qualified name; Cairn "
        "writes only `database.schema.object` names inside its sandbox schema.")


def _name(part: exp.Expression) -> str:
    """An identifier as Snowflake stores it: unquoted upper-cased, quoted exactly as written."""
    if isinstance(part, exp.Identifier):
        return part.this if part.quoted else part.this.upper()
    return part.name.upper()


def _inside(target: Target, sandbox: Dataset | None) -> bool:
    if sandbox is None:
        return False
    return (target.project, target.dataset) == (sandbox.project.upper(), sandbox.dataset.upper())
