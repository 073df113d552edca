"""Upstream facts for triage: how the sources under a metric moved, each against its own history.

When no code change explains an incident, the owner of a source needs to hear what moved: how
many rows each source in the metric's lineage loaded in the incident's window against its own
forecast (the same band rule as contracts, on the source's `loaded_at_field`), and how stale it
is against its own dbt freshness thresholds. One read-only query per source; sources without a
`loaded_at_field` are named as unmeasured rather than guessed at.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

from sqlglot import exp

from jobs.contracts.measure import instant, profiler
from jobs.contracts.spec import Kind, ThresholdSpec
from jobs.core.errors import WarehouseError
from jobs.core.formatting import fmt_duration, fmt_number
from jobs.detect import band as bands
from jobs.warehouse import Warehouse

HISTORY_DAYS = 28
Z = ThresholdSpec().z  # the contracts' default band


@dataclass(frozen=True)
class SourceFact:
    """One source's rows in the incident's window and its freshness, with what they are usually."""

    source: str  # 'raw.payments'
    rows: int | None = None  # loaded in the window (None: not measured)
    expected: float | None = None
    lower: float | None = None
    upper: float | None = None
    lag_seconds: float | None = None  # the window's end minus the newest row loaded by then
    stale: str | None = None  # 'warn' or 'error' past the source's own freshness thresholds
    note: str = ""  # why it was not measured

    @property
    def moved(self) -> bool:
        """Its rows left their band, or it is stale past its error threshold."""
        outside = self.rows is not None and self.lower is not None and not self.lower <= self.rows <= self.upper
        return outside or self.stale == "error"

    def sentence(self) -> str:
        """'raw.payments loaded 2,130 rows, 48% below the 4,100 expected (band 3,500–4,800); newest row 2h old'."""
        if self.rows is None:
            return f"{self.source}: {self.note}"
        text = f"{self.source} loaded {fmt_number(self.rows)} rows"
        if self.expected is not None and self.lower is not None and self.upper is not None:
            change = (self.rows - self.expected) / self.expected * 100 if self.expected else 0.0
            where = ("within" if self.lower <= self.rows <= self.upper
                     else f"{abs(change):.0f}% {'below' if change < 0 else 'above'}")
            text += (f", {where} the {fmt_number(self.expected)} expected (band {fmt_number(self.lower)}–"
                     f"{fmt_number(self.upper)})")
        if self.lag_seconds is not None:
            text += f"; newest row {fmt_duration(self.lag_seconds)} old" + (f" ({self.stale})" if self.stale else "")
        return text

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def upstream_facts(warehouse: Warehouse, manifest: Mapping[str, Any], sources: Sequence[str],
                   window: tuple[datetime, datetime]) -> list[SourceFact]:
    """Facts about each source (unique_ids) over `window`, oldest history first; never raises for one source."""
    facts = []
    for unique_id in sources:
        node = manifest.get("sources", {}).get(unique_id)
        if node is None:
            continue
        try:
            facts.append(_fact(warehouse, node, window))
        except WarehouseError as error:
            facts.append(SourceFact(_name(node), note=f"could not be measured: {error}"))
    return facts


def _name(node: Mapping[str, Any]) -> str:
    return f"{node['source_name']}.{node['name']}"


def _fact(warehouse: Warehouse, node: Mapping[str, Any], window: tuple[datetime, datetime]) -> SourceFact:
    column = node.get("loaded_at_field") or (node.get("config") or {}).get("loaded_at_field")
    if not column:
        return SourceFact(_name(node), note="no loaded_at_field in its dbt source config, so its loads are unmeasured")
    start, end = window
    by_day, latest = _daily_rows(warehouse, node, column, start - timedelta(days=HISTORY_DAYS), end)
    rows = sum(n for day, n in by_day.items() if start.date() <= day < end.date()) if start.date() < end.date() \
        else by_day.get(start.date(), 0)
    history = [bands.Point(datetime.combine(day, datetime.min.time(), timezone.utc), float(n), n)
               for day, n in sorted(by_day.items()) if day < start.date()]
    lag = (end - latest).total_seconds() if latest else None
    fact = SourceFact(_name(node), rows=rows, lag_seconds=lag, stale=_staleness(node, lag))
    if len(history) < 7:
        return fact
    today = bands.Point(datetime.combine(start.date(), datetime.min.time(), timezone.utc), float(rows), rows)
    found = bands.judge(Kind.row_count, history, today, counted=True, seasonality="auto", z=Z)
    return SourceFact(fact.source, rows, found.expected, found.lower, found.upper, lag, fact.stale)


def _daily_rows(warehouse: Warehouse, node: Mapping[str, Any], column: str, start: datetime,
                end: datetime) -> tuple[dict[date, int], datetime | None]:
    """Rows loaded per UTC day in [start, end), and the newest load time before `end`."""
    parts = profiler(warehouse.dialect)
    loaded = exp.column(column, quoted=True)
    relation = exp.to_table(warehouse.relation_name(dict(node)), dialect=warehouse.dialect)
    in_range = exp.and_(exp.GTE(this=loaded.copy(), expression=instant(start, parts)),
                        exp.LT(this=loaded.copy(), expression=instant(end, parts)))
    day = exp.cast(loaded.copy(), exp.DataType.build("DATE"))
    sql = (exp.select(exp.alias_(day, "day", quoted=True), exp.alias_(exp.Count(this=exp.Star()), "n", quoted=True),
                      exp.alias_(exp.Max(this=loaded.copy()), "latest", quoted=True))
           .from_(relation).where(in_range).group_by(day.copy()).sql(dialect=warehouse.dialect, identify=True))
    rows = warehouse.query(sql)
    by_day = {(r["day"] if isinstance(r["day"], date) else date.fromisoformat(str(r["day"]))): int(r["n"])
              for r in rows}
    latest = max((_utc(r["latest"]) for r in rows if r["latest"] is not None), default=None)
    return by_day, latest


def _utc(value: Any) -> datetime:
    if not isinstance(value, datetime):
        value = datetime.fromisoformat(str(value))
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


_PERIODS = {"minute": 60, "hour": 3600, "day": 86400}


def _staleness(node: Mapping[str, Any], lag: float | None) -> str | None:
    """'error' or 'warn' when the newest row is older than the source's own dbt freshness thresholds."""
    freshness = node.get("freshness") or (node.get("config") or {}).get("freshness") or {}
    if lag is None:
        return "error" if freshness else None
    for level in ("error", "warn"):
        after = freshness.get(f"{level}_after") or {}
        if after.get("count") and lag > after["count"] * _PERIODS.get(after.get("period", "hour"), 3600):
            return level
    return None
