"""Contract fields written in SQL (`where`, `expr`, …), parsed and checked before a warehouse sees them."""

from __future__ import annotations

from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import TokenType

from jobs.contracts.spec import Contract
from jobs.core.errors import ContractError

# Anything that is a statement, or reads rows of its own, has no place inside a contract fragment.
_STATEMENTS = (
    exp.Query, exp.Subquery, exp.DDL, exp.DML, exp.Drop, exp.Command, exp.Create, exp.Alter,
    exp.Set, exp.Use, exp.Transaction, exp.Commit, exp.Rollback, exp.Pragma,
)
_CONDITION = "a comparison, IN, LIKE, IS, BETWEEN, a boolean column, or AND/OR/NOT of those"


def _reject(contract: Contract, field: str, why: str) -> ContractError:
    return ContractError(f"contract {contract.id!r}: {field} {getattr(contract, field)!r} {why}")


def _parse(contract: Contract, field: str, dialect: str) -> exp.Expression:
    """One SQL expression: no statements, subqueries, window functions or parameters."""
    text = getattr(contract, field)
    sql = Dialect.get_or_raise(dialect)
    try:
        tokens = sql.tokenize(text)
        statements = sql.parse(text)
    except (ParseError, TokenError) as error:
        reason = str(error).splitlines()[0]
        raise _reject(contract, field, f"is not valid {dialect} SQL: {reason}") from None
    # sqlglot drops a trailing ';' silently: look at the tokens, not only at the statements.
    if len(statements) != 1 or any(t.token_type is TokenType.SEMICOLON for t in tokens):
        raise _reject(contract, field, "must be a single expression, without ';'")
    node = statements[0]
    if node is None:
        raise _reject(contract, field, "is empty")
    if isinstance(node, _STATEMENTS) or node.find(*_STATEMENTS):
        raise _reject(contract, field, "must not contain a statement or subquery")
    if node.find(exp.Window):
        raise _reject(contract, field, "must not contain a window function (OVER)")
    if node.find(exp.Placeholder, exp.Parameter):
        raise _reject(contract, field, "must not contain parameters")
    for column in node.find_all(exp.Column):
        if column.table:
            raise _reject(contract, field, f"names {column.sql(dialect)}: drop the table prefix")
    return node


def _is_condition(node: exp.Expression) -> bool:
    if isinstance(node, exp.Paren):
        return _is_condition(node.this)
    if isinstance(node, (exp.And, exp.Or)):
        return _is_condition(node.left) and _is_condition(node.right)
    if isinstance(node, exp.Not):
        return _is_condition(node.this)
    return isinstance(node, (exp.Predicate, exp.Column, exp.Boolean))


def row_condition(contract: Contract, dialect: str) -> exp.Expression | None:
    """The contract's `where`: one boolean expression over a row, or None."""
    if not contract.where:
        return None
    node = _parse(contract, "where", dialect)
    if node.find(exp.AggFunc):
        raise _reject(contract, "where", "filters rows: it must not aggregate")
    if not _is_condition(node):
        raise _reject(contract, "where", f"must be a condition ({_CONDITION})")
    return node


def aggregate(contract: Contract, field: str, dialect: str) -> exp.Expression:
    """An aggregate expression (`sum(amount)`, `count(*)`): every column sits inside an aggregate."""
    node = _parse(contract, field, dialect)
    aggregates = list(node.find_all(exp.AggFunc))
    if not aggregates:
        raise _reject(contract, field, "must aggregate rows, e.g. sum(amount) or count(*)")
    if any(agg.find_ancestor(exp.AggFunc, exp.Where) for agg in aggregates):
        raise _reject(contract, field, "nests an aggregate inside another aggregate or a FILTER")
    for column in node.find_all(exp.Column):
        if not column.find_ancestor(exp.AggFunc, exp.Filter):
            raise _reject(
                contract, field,
                f"uses column {column.name!r} outside an aggregate Cairn recognises; "
                f"wrap it, e.g. sum({column.name})",
            )
    return node
