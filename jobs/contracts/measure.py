"""Contracts compiled to one aggregate query per relation; its one row read back as observations."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from jobs.contracts.fragments import aggregate, row_condition
from jobs.contracts.relations import resolve
from jobs.contracts.spec import Contract, Kind, window_bounds
from jobs.core.clock import utc
from jobs.core.errors import ContractError, WarehouseError
from jobs.core.records import Observation
from jobs.warehouse import Warehouse

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


@dataclass(frozen=True)
class Profiler:
    """How one warehouse dialect writes a UTC instant and measures a column's distribution."""

    timestamp: str  # the sqlglot type whose literal is a UTC instant in this warehouse
    categories: Callable[[exp.Expression], exp.Expression]
    quantiles: Callable[[exp.Expression], exp.Expression]
    quantile_positions: tuple[int, ...]  # where each of QUANTILES sits in the returned array
    # Quote column and table names: false where cairn.yml's names are case-insensitive identifiers
    # that a quote would make case-sensitive (Snowflake stores dbt's unquoted names upper-cased).
    identify: bool = True


def profiler(dialect: str) -> Profiler:
    """The dialect-specific parts of a measuring query; DuckDB is exact, BigQuery approximates."""
    if dialect == "duckdb":
        fractions = exp.Array(expressions=[exp.Literal.number(q) for q in QUANTILES])
        return Profiler(
            timestamp="TIMESTAMP",  # TIMESTAMPTZ columns compare in the session zone: pinned UTC
            categories=lambda col: exp.func("histogram", col, dialect="duckdb"),
            quantiles=lambda col: exp.func("quantile_cont", col, fractions.copy(), dialect="duckdb"),
            quantile_positions=tuple(range(len(QUANTILES))),
        )
    if dialect == "bigquery":
        return Profiler(
            # sqlglot's TIMESTAMP is BigQuery's DATETIME; BigQuery's TIMESTAMP is sqlglot's TIMESTAMPTZ.
            timestamp="TIMESTAMPTZ",
            categories=lambda col: exp.func("approx_top_count", col, exp.Literal.number(1000), dialect="bigquery"),
            quantiles=lambda col: exp.func("approx_quantiles", col, exp.Literal.number(100), dialect="bigquery"),
            quantile_positions=tuple(round(q * 100) for q in QUANTILES),
        )
    if dialect == "snowflake":
        def unsupported(col: exp.Expression) -> exp.Expression:
            raise ContractError("distribution contracts are not measured on Snowflake yet.")

        return Profiler(timestamp="TIMESTAMPTZ",  # the session runs in UTC (jobs.warehouse.snowflake)
                        categories=unsupported, quantiles=unsupported, quantile_positions=(), identify=False)
    raise ContractError(f"Cairn measures contracts on duckdb, bigquery or snowflake, not {dialect!r}.")


# ---------------------------------------------------------------- building the query


def _and(*conditions: exp.Expression | None) -> exp.Expression | None:
    present = [c.copy() for c in conditions if c is not None]
    return exp.and_(*present) if present else None


def _filter(node: exp.Expression, condition: exp.Expression | None) -> exp.Expression:
    """`node` as an aggregate FILTER (WHERE condition) (BigQuery gets IF(condition, x, NULL))."""
    return node if condition is None else exp.Filter(this=node, expression=exp.Where(this=condition.copy()))


def _filter_each(node: exp.Expression, condition: exp.Expression | None) -> exp.Expression:
    """Every aggregate inside `node` filtered by `condition`, merged with a FILTER it already has."""
    if condition is None:
        return node

    def add(n: exp.Expression) -> exp.Expression:
        if isinstance(n, exp.Filter):
            return _filter(n.this.copy(), _and(n.expression.this, condition))
        if isinstance(n, exp.AggFunc) and not isinstance(n.parent, exp.Filter):
            return _filter(n.copy(), condition)
        return n

    return node.transform(add)


def _column(name: str, parts: Profiler) -> exp.Column:
    return exp.Column(this=exp.to_identifier(name, quoted=parts.identify))


def instant(at: datetime, dialect: Profiler, column_type: exp.DataType | None = None) -> exp.Expression:
    """`at` as a literal of the time column's own type, so the comparison needs no cast of the column.

    BigQuery compares a DATE or DATETIME column with a TIMESTAMP only after a cast, and a cast of
    the column would scan every partition; a DATETIME is read as UTC civil time, like the windows.
    Without a known type the literal is the dialect's UTC instant.
    """
    utc = at.astimezone(timezone.utc).replace(tzinfo=None)
    if column_type is not None and column_type.is_type(exp.DataType.Type.DATE):
        return exp.cast(exp.Literal.string(utc.date().isoformat()), column_type.copy())
    return exp.cast(exp.Literal.string(utc.isoformat(sep=" ")), column_type.copy() if column_type is not None
                    else exp.DataType.build(dialect.timestamp))


def _aggregates(
    contract: Contract, condition: exp.Expression | None, at: datetime, dialect: str,
    column_type: exp.DataType | None = None,
) -> dict[str, exp.Expression]:
    """The named aggregate columns one contract needs, each filtered by `condition`."""
    parts = profiler(dialect)
    rows = _filter(exp.Count(this=exp.Star()), condition)
    if contract.kind is Kind.row_count:
        return {"rows": rows}
    if contract.kind is Kind.volume:
        return {"value": _filter_each(aggregate(contract, "expr", dialect), condition), "rows": rows}
    if contract.kind is Kind.ratio:
        return {
            "num": _filter_each(aggregate(contract, "numerator", dialect), condition),
            "den": _filter_each(aggregate(contract, "denominator", dialect), condition),
            "rows": rows,
        }
    column = _column(contract.column or "", parts)
    if contract.kind is Kind.freshness:
        # Bounded by `at`, so that a replay at a past time sees only the rows that existed then.
        up_to_at = exp.LTE(this=column.copy(), expression=instant(at, parts, column_type))
        return {"latest": _filter(exp.Max(this=column), _and(condition, up_to_at))}
    if contract.kind is Kind.null_rate:
        is_null = exp.Is(this=column, expression=exp.Null())
        return {"rows": rows, "nulls": _filter(exp.Count(this=exp.Star()), _and(condition, is_null))}
    build = parts.quantiles if contract.numeric else parts.categories
    return {"rows": rows, "profile": _filter(build(column), condition)}


@dataclass(frozen=True)
class Measure:
    """Where one contract's aggregates sit in the result row, and the window they cover."""

    contract: Contract
    columns: dict[str, str]  # part -> alias (c0_rows…): contract ids never become identifiers
    window_start: datetime | None
    window_end: datetime | None


@dataclass(frozen=True)
class ModelQuery:
    """One SELECT measuring every contract on one relation in a single scan."""

    relation: str
    sql: str
    dialect: str
    at: datetime
    columns: tuple[str, ...]
    measures: tuple[Measure, ...]

    @property
    def contract_ids(self) -> list[str]:
        return [m.contract.id for m in self.measures]

    def read(self, row: Mapping[str, Any] | Sequence[Any]) -> list[Observation]:
        """One observation per contract, in the order the contracts were compiled."""
        if not isinstance(row, Mapping):
            row = dict(zip(self.columns, row, strict=True))
        parts = profiler(self.dialect)
        observations = []
        for m in self.measures:
            values = {part: row[column] for part, column in m.columns.items()}
            value, profile = _READERS[m.contract.kind](m.contract, values, self.at, parts)
            observations.append(Observation(
                contract_id=m.contract.id, observed_at=self.at, value=value,
                window_start=m.window_start, window_end=m.window_end, profile=profile,
                count=sample_size(m.contract, profile),
            ))
        return observations


def compile_model_query(
    relation: str, contracts: Sequence[Contract], at: datetime, dialect: str,
    column_types: Mapping[str, exp.DataType] | None = None,
) -> ModelQuery:
    """The one SELECT over `relation` measuring every contract as of `at` (aware, UTC).

    `column_types` (lower-cased column name -> type, from the warehouse) types the time literals;
    each contract's time column must then be among them and be a DATE, DATETIME or TIMESTAMP.
    """
    if not contracts:
        raise ValueError("compile_model_query needs at least one contract")
    at, parts = utc(at), profiler(dialect)
    try:
        table = exp.to_table(relation, dialect=dialect)
    except (ParseError, TokenError) as error:
        raise ContractError(f"relation {relation!r} is not a table name: {error}") from None
    measures, selects = [], []
    for i, contract in enumerate(contracts):
        condition = row_condition(contract, dialect)
        start = end = None
        column_type = _time_column_type(contract, relation, column_types, dialect)
        # Freshness asks how old the newest row is: a window would hide exactly that.
        if contract.window and contract.time_column and contract.kind is not Kind.freshness:
            start, end = window_bounds(contract.window, at)
            ts = _column(contract.time_column, parts)
            in_window = exp.and_(
                exp.GTE(this=ts.copy(), expression=instant(start, parts, column_type)),
                exp.LT(this=ts.copy(), expression=instant(end, parts, column_type)),
            )
            condition = _and(condition, in_window)
        aliases = {}
        for part, node in _aggregates(contract, condition, at, dialect, column_type).items():
            aliases[part] = f"c{i}_{part}"
            selects.append(exp.alias_(node, aliases[part], quoted=True))
        measures.append(Measure(contract, aliases, start, end))
    sql = exp.select(*selects).from_(table).sql(dialect=dialect, identify=parts.identify)
    columns = tuple(alias for m in measures for alias in m.columns.values())
    return ModelQuery(relation, sql, dialect, at, columns, tuple(measures))


_T = exp.DataType.Type
_TIME_TYPES = (_T.DATE, _T.DATETIME, _T.TIMESTAMP, _T.TIMESTAMPTZ, _T.TIMESTAMPLTZ, _T.TIMESTAMPNTZ)


def time_column(contract: Contract) -> str | None:
    """The column a contract's window (or, for freshness, its lag) is measured on."""
    if contract.kind is Kind.freshness:
        return contract.column
    return contract.time_column if contract.window else None


def _time_column_type(contract: Contract, relation: str, column_types: Mapping[str, exp.DataType] | None,
                      dialect: str) -> exp.DataType | None:
    name = time_column(contract)
    if not column_types or not name:
        return None
    column_type = column_types.get(name.lower())
    field = "column" if contract.kind is Kind.freshness else "time_column"
    if column_type is None:
        raise ContractError(f"contract {contract.id!r}: {field} {name!r} is not a column of {relation} "
                            f"(it has {', '.join(sorted(column_types))}).")
    if not column_type.is_type(*_TIME_TYPES):
        raise ContractError(f"contract {contract.id!r}: {field} {name!r} of {relation} is "
                            f"{column_type.sql(dialect=dialect)}; windows and lags are measured on DATE, DATETIME or "
                            "TIMESTAMP columns.")
    if column_type.is_type(_T.DATE) and contract.window is not None \
            and contract.window.delta < timedelta(days=1):
        raise ContractError(f"contract {contract.id!r}: time_column {name!r} of {relation} is a DATE; "
                            f"an {contract.window.value} window needs a DATETIME or TIMESTAMP column.")
    return column_type


# ---------------------------------------------------------------- reading the row

Reading = tuple[float | None, dict[str, Any] | None]


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _read_rows(contract: Contract, values: dict, at: datetime, parts: Profiler) -> Reading:
    return float(values["rows"]), {"rows": int(values["rows"])}


def _read_volume(contract: Contract, values: dict, at: datetime, parts: Profiler) -> Reading:
    rows, value = int(values["rows"]), _number(values["value"])
    if value is None and rows == 0:
        value = 0.0  # nothing happened in the window: a drop to zero must stay visible
    return value, {"rows": rows}


def _read_ratio(contract: Contract, values: dict, at: datetime, parts: Profiler) -> Reading:
    num, den = _number(values["num"]), _number(values["den"])
    value = None if num is None or not den else num / den
    return value, {"rows": int(values["rows"]), "numerator": num, "denominator": den}


def _read_null_rate(contract: Contract, values: dict, at: datetime, parts: Profiler) -> Reading:
    rows, nulls = int(values["rows"]), int(values["nulls"])
    return (nulls / rows if rows else None), {"rows": rows, "nulls": nulls}


def _as_utc(value: datetime | date) -> datetime:
    if not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    # A naive warehouse timestamp is UTC by Cairn's convention (and the pinned DuckDB session).
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _read_freshness(contract: Contract, values: dict, at: datetime, parts: Profiler) -> Reading:
    if values["latest"] is None:
        return None, {"empty": True}
    latest = _as_utc(values["latest"])
    return (at - latest).total_seconds(), {"latest": latest.isoformat()}


def _categories(measured: Any) -> dict[str, int]:
    """DuckDB returns a MAP (a dict); BigQuery an array of {value, count} structs."""
    pairs = measured.items() if isinstance(measured, Mapping) else ((s["value"], s["count"]) for s in measured)
    # BigQuery's APPROX_TOP_COUNT counts NULLs, and the rows IF(filter…) blanked; DuckDB skips NULLs.
    return {str(k): int(n) for k, n in pairs if k is not None}


def _read_distribution(contract: Contract, values: dict, at: datetime, parts: Profiler) -> Reading:
    rows, measured = int(values["rows"]), values["profile"]
    profile: dict[str, Any] = {"rows": rows, **({"empty": True} if rows == 0 else {})}
    if contract.numeric:
        positions = zip(QUANTILES, parts.quantile_positions)
        profile["quantiles"] = {} if measured is None else {str(q): _number(measured[p]) for q, p in positions}
    else:
        profile["categories"] = {} if measured is None else _categories(measured)
    return None, profile  # detection turns the profile into a divergence against the baseline


def sample_size(contract: Contract, profile: Mapping[str, Any] | None) -> int | None:
    """The count behind a value, for count-aware noise: the window's rows, or a ratio's denominator.

    A ratio counts only when it is a share of counts (integral numerator at most its integral
    denominator): a ratio of sums has no binomial sampling noise to speak of.
    """
    if not profile or contract.kind in (Kind.freshness, Kind.distribution):
        return None
    if contract.kind is Kind.ratio:
        num, den = profile.get("numerator"), profile.get("denominator")
        shares = num is not None and den is not None and float(num).is_integer() and float(den).is_integer()
        return int(den) if shares and 0 <= num <= den else None
    return int(profile["rows"])


_READERS: dict[Kind, Callable[[Contract, dict, datetime, Profiler], Reading]] = {
    Kind.row_count: _read_rows,
    Kind.volume: _read_volume,
    Kind.ratio: _read_ratio,
    Kind.null_rate: _read_null_rate,
    Kind.freshness: _read_freshness,
    Kind.distribution: _read_distribution,
}


# ---------------------------------------------------------------- evaluation


def _column_types(warehouse: Warehouse, relation: str, contracts: Sequence[Contract]) -> dict[str, exp.DataType]:
    """The relation's column types, looked up only when one of its contracts compares times."""
    if not any(time_column(c) for c in contracts):
        return {}
    try:
        return warehouse.column_types(relation)
    except WarehouseError as error:
        ids = ", ".join(c.id for c in contracts)
        raise WarehouseError(f"reading the columns of {relation} for {ids} failed: {error}") from error


def evaluate(
    warehouse: Warehouse, manifest: Mapping[str, Any], contracts: Sequence[Contract], at: datetime
) -> list[Observation]:
    """Measure `contracts` as of `at`: one query per relation, observations in contract order."""
    groups: dict[str, list[int]] = {}
    for i, contract in enumerate(contracts):
        groups.setdefault(warehouse.relation_name(resolve(contract, manifest)), []).append(i)
    # Compile everything first: one bad contract fails the run before any query reaches the warehouse.
    queries = [
        (indexes, compile_model_query(relation, [contracts[i] for i in indexes], at, warehouse.dialect,
                                      _column_types(warehouse, relation, [contracts[i] for i in indexes])))
        for relation, indexes in groups.items()
    ]
    observations: list[Observation] = [None] * len(contracts)  # type: ignore[list-item]
    for indexes, query in queries:
        try:
            [row] = warehouse.query(query.sql)
        except WarehouseError as error:
            raise WarehouseError(
                f"measuring {query.relation} for {', '.join(query.contract_ids)} failed: {error}"
            ) from error
        for i, observation in zip(indexes, query.read(row), strict=True):
            observations[i] = observation
    return observations
