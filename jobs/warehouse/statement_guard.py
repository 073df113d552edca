"""Layer (a) of read-only production: every statement Cairn sends to BigQuery is parsed first.

A statement leaves the process only if each table or dataset it writes lies inside the one
dataset it may write (the incident's sandbox), or, with no sandbox, if it writes nothing at all.
The guard fails closed: a statement it cannot read (EXECUTE IMMEDIATE, CALL, IF/LOOP/BEGIN…END
blocks, EXPORT DATA, anything sqlglot falls back to a generic command for) is refused, and so is
a script holding one. The exception is the one form sqlglot cannot parse and Cairn needs,
`CREATE TABLE … CLONE … FOR SYSTEM_TIME AS OF …`, whose time-travel clause is cut off and the rest
parsed and checked like any other statement.

A script (dbt-bigquery sends each `insert_overwrite` incremental build as one) passes only if
every statement in it does. Besides queries and checkable DDL/DML, a script may hold statements
that write no dataset: DECLARE, SET of script variables (never of `@@` system variables:
`@@dataset_id` would redirect unqualified names), and temp tables, which BigQuery keeps in the
script's own anonymous dataset. `CREATE TEMP TABLE` takes a one-part name; a one-part `DROP TABLE`
names that temp table only while it exists, so it passes only after the same script created the
name as a temp table and has not dropped it yet. Any other one-part name is refused: it would
resolve against a default dataset Cairn never sets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import TokenType

from jobs.core.errors import CairnError

_NO_WRITES = (exp.Query, exp.Semicolon)  # a Semicolon is an empty statement: a comment before `;`
WRITES = (exp.Create, exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.TruncateTable, exp.Drop,
           exp.Alter, exp.LoadData)
_DATASET_KINDS = {"SCHEMA", "DATABASE"}


class ProductionWriteRefused(CairnError):
    """A statement would write outside the incident's sandbox; it was never sent."""


@dataclass(frozen=True)
class Dataset:
    """A BigQuery dataset: `project.dataset`."""

    project: str
    dataset: str

    def __str__(self) -> str:
        return f"{self.project}.{self.dataset}"


@dataclass(frozen=True)
class Target:
    """One thing a statement writes: a table (`name` set) or a whole dataset (`name` None)."""

    project: str
    dataset: str
    name: str | None
    statement: str  # the statement's kind, for messages: 'CREATE TABLE', 'DELETE', …

    def __str__(self) -> str:
        return ".".join(p for p in (self.project, self.dataset, self.name) if p)


def check(sql: str, *, default_project: str, sandbox: Dataset | None) -> list[Target]:
    """Refuse `sql` unless every target is inside `sandbox` (None: refuse every write)."""
    return refuse_outside(written_targets(sql, default_project), lambda t: _inside(t, sandbox), sandbox, "dataset")


def refuse_outside(targets: list[Target], inside: Callable[[Target], bool], sandbox: object | None,
                   place: str) -> list[Target]:
    """`targets`, unless one is not `inside` the sandbox (a `place`: 'dataset', 'schema'): then refuse."""
    outside = [t for t in targets if not inside(t)]
    if outside:
        where = f"sandbox {place} {sandbox}" if sandbox else f"no {place} (this connection only reads)"
        names = ", ".join(f"{t.statement} {t}" for t in outside)
        raise ProductionWriteRefused(
            f"refused before sending: {names} writes outside {where}. Cairn writes only inside "
            f"an incident's sandbox {place}; production is read-only.")
    return targets


def written_targets(sql: str, default_project: str) -> list[Target]:
    """Every table or dataset `sql` (one statement or a script) would write, fully qualified."""
    try:
        with quiet_parser():
            statements = [s for s in sqlglot.parse(sql, read="bigquery") if s is not None]
    except (ParseError, TokenError) as error:
        raise ProductionWriteRefused(
            f"refused before sending: the statement is not BigQuery SQL Cairn can read "
            f"({str(error).splitlines()[0]}); nothing was sent.") from None
    targets: list[Target] = []
    temp_tables: set[str] = set()  # this script's temp tables so far: the only droppable bare names
    for statement in statements:
        if isinstance(statement, exp.Command):
            statement = _clone_at(statement)
        if isinstance(statement, _NO_WRITES) or _sets_variables(statement):
            continue
        if not isinstance(statement, WRITES):
            raise ProductionWriteRefused(
                f"refused before sending: Cairn does not send {_verb(statement)} statements "
                f"({statement.sql('bigquery')[:80]!r}), alone or in a script: it sends queries, DDL/DML "
                "whose targets it can check, and DECLARE or SET of script variables. Nothing in this "
                "request was sent.")
        found = _targets(statement, default_project, temp_tables)
        _track_temp_tables(found, temp_tables)
        targets += found
    return targets


def _sets_variables(statement: exp.Expression) -> bool:
    """DECLARE, or SET of script variables only: neither writes a table."""
    if isinstance(statement, exp.Declare):
        return True
    if not isinstance(statement, exp.Set) or statement.args.get("unset") or statement.args.get("tag"):
        return False
    return all(_assigns_script_variables(item) for item in statement.expressions)


def _assigns_script_variables(item: exp.Expression) -> bool:
    """`x = …` or `(x, y) = …`; not `@@dataset_id = …`, which would redirect unqualified names."""
    assignment = item.this if isinstance(item, exp.SetItem) and not item.args.get("kind") else None
    if not isinstance(assignment, exp.EQ):
        return False
    left = assignment.this.unnest()  # dbt-bigquery writes `SET (one_variable) = (SELECT AS STRUCT …)`
    names = left.expressions if isinstance(left, exp.Tuple) else [left]
    return all(isinstance(name, exp.Column) and not name.table for name in names)


def _verb(statement: exp.Expression) -> str:
    """What a refusal calls the statement."""
    if isinstance(statement, exp.Command):
        return str(statement.this).upper()  # EXECUTE, CALL, BEGIN, IF, LOOP, …
    return type(statement).__name__.upper()


def _track_temp_tables(found: list[Target], temp_tables: set[str]) -> None:
    """Remember the temp tables a script creates and forget those it drops, in statement order."""
    for target in found:
        if target.project or target.dataset:
            continue
        if target.statement == "CREATE TABLE":
            temp_tables.add(target.name)
        elif target.statement == "DROP TABLE":
            temp_tables.discard(target.name)


def _inside(target: Target, sandbox: Dataset | None) -> bool:
    if target.project == "" and target.dataset == "":
        return True  # a TEMP table or function: scoped to the script's session, no dataset
    if sandbox is None:
        return False
    return target.project.lower() == sandbox.project.lower() and target.dataset == sandbox.dataset


def _targets(statement: exp.Expression, default_project: str, temp_tables: set[str]) -> list[Target]:
    if isinstance(statement, exp.Drop):
        nodes = statement.args.get("tables") or [statement.this]
    elif isinstance(statement, exp.TruncateTable):
        nodes = statement.expressions
    else:
        nodes = [statement.this]
    return [_target(statement, node, default_project, temp_tables) for node in nodes]


def _target(statement: exp.Expression, node: exp.Expression | None, default_project: str,
            temp_tables: set[str]) -> Target:
    kind = statement_kind(statement)
    while isinstance(node, (exp.Schema, exp.UserDefinedFunction)):
        node = node.this
    if not isinstance(node, exp.Table):
        raise ProductionWriteRefused(f"refused before sending: cannot tell what {kind} writes.")
    parts = [p for part in (node.catalog, node.db, node.name) if part for p in part.split(".")]
    if kind.split()[-1] in _DATASET_KINDS:
        if len(parts) == 1:
            return Target(default_project, parts[0], None, kind)
        if len(parts) == 2:
            return Target(parts[0], parts[1], None, kind)
    elif len(parts) == 3:
        return Target(parts[0], parts[1], parts[2], kind)
    elif len(parts) == 2:
        return Target(default_project, parts[0], parts[1], kind)
    elif len(parts) == 1 and _temporary(statement, parts[0], temp_tables):
        return Target("", "", parts[0], kind)
    # An unqualified name resolves against a default dataset Cairn never sets: refuse it.
    raise ProductionWriteRefused(
        f"refused before sending: {kind} {'.'.join(parts) or '?'} is not a dataset-qualified name; "
        "Cairn writes only `project.dataset.table` names inside its sandbox.")


def statement_kind(statement: exp.Expression) -> str:
    verb = {exp.TruncateTable: "TRUNCATE TABLE", exp.LoadData: "LOAD DATA"}.get(type(statement))
    if verb:
        return verb
    name = type(statement).__name__.upper()
    kind = statement.args.get("kind")
    return f"{name} {kind.upper()}" if isinstance(kind, str) else name


def _temporary(statement: exp.Expression, name: str, temp_tables: set[str]) -> bool:
    """A CREATE TEMP …, or a DROP TABLE of a temp table this script created and has not dropped."""
    if isinstance(statement, exp.Drop):
        # Otherwise the bare name resolves against a default dataset, whatever `DROP TEMP` claims.
        return statement.args.get("kind") == "TABLE" and name in temp_tables
    properties = statement.args.get("properties")
    return bool(properties and properties.find(exp.TemporaryProperty))


def _clone_at(command: exp.Command) -> exp.Expression:
    """`CREATE … CLONE src FOR SYSTEM_TIME AS OF ts` parsed without its time-travel clause."""
    text = command.sql("bigquery")
    with quiet_parser():
        tokens = sqlglot.Dialect.get_or_raise("bigquery").tokenize(text)
    words = [t.text.upper() for t in tokens]
    for i, token in enumerate(tokens):
        if words[i:i + 4] == ["FOR", "SYSTEM_TIME", "AS", "OF"] and "CLONE" in words[:i]:
            if any(t.token_type is TokenType.SEMICOLON for t in tokens[i:]):
                break
            try:
                with quiet_parser():
                    head = sqlglot.parse_one(text[:token.start], read="bigquery")
            except (ParseError, TokenError):
                break
            if isinstance(head, exp.Create) and head.args.get("clone") is not None:
                return head
            break
    return command


@contextmanager
def quiet_parser() -> Iterator[None]:
    """sqlglot logs a warning for every fallback to a command; the guard reports its own."""
    logger = logging.getLogger("sqlglot")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
