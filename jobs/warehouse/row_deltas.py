"""Sample-row deltas: how a model's rows differ between two builds, matched on its key (copy for copy), in SQL."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
from sqlglot import exp

from jobs.core.errors import ConfigError, WarehouseError
from jobs.core.records import RowDelta
from jobs.warehouse import Warehouse

log = logging.getLogger(__name__)

MASK = "•••"
KINDS = ("added", "removed", "changed")
MAX_DISTINCT = 20  # more distinct values among affected rows: not a low-cardinality column
MIN_AFFECTED = 5  # a handful of rows all sharing a value is coincidence, not concentration
MIN_SHARE, MIN_LIFT = 0.8, 0.25  # share among affected rows, and its excess over the share overall
FLOAT_TOLERANCE = 1e-9  # relative: parallel float sums differ in their last bits from build to build
RENDER_LIMIT = 1500

Run = Callable[[str], list[dict[str, Any]]]


# --- the manifest: key and PII columns ------------------------------------------------------


def _meta(item: Mapping[str, Any]) -> dict[str, Any]:
    return {**(item.get("config") or {}).get("meta", {}), **(item.get("meta") or {})}


def pii_columns(node: Mapping[str, Any]) -> set[str]:
    """Columns whose dbt `meta.pii` (or `config.meta.pii`) is set or that are tagged `pii`."""
    found = set()
    for name, column in (node.get("columns") or {}).items():
        tags = [*(column.get("tags") or ()), *(column.get("config") or {}).get("tags", ())]
        if _meta(column).get("pii") or "pii" in tags:
            found.add(column.get("name") or name)
    listed = _meta(node).get("pii")  # a model may list them: `meta: {pii: [email, phone]}`
    if isinstance(listed, str):
        listed = [listed]
    if isinstance(listed, (list, tuple)):
        found.update(str(name) for name in listed)
    return found


def model_key(manifest: Mapping[str, Any], node: Mapping[str, Any] | str) -> tuple[str, ...] | None:
    """The model's key: `meta.cairn.key` if configured, else the columns of a `unique` test."""
    if isinstance(node, str):
        node = manifest.get("nodes", {}).get(node, {"unique_id": node})
    configured = (_meta(node).get("cairn") or {}).get("key")
    if configured:
        return (configured,) if isinstance(configured, str) else tuple(configured)
    uid = node.get("unique_id")
    keys, not_null = [], set()
    for test in manifest.get("nodes", {}).values():
        if test.get("resource_type") != "test":
            continue
        attached = test.get("attached_node") or next(iter((test.get("depends_on") or {}).get("nodes", [])), None)
        if attached != uid:
            continue
        metadata = test.get("test_metadata") or {}
        kwargs = metadata.get("kwargs") or {}
        if metadata.get("name") == "unique" and test.get("column_name"):
            keys.append((test["column_name"],))
        elif metadata.get("name") == "not_null" and test.get("column_name"):
            not_null.add(test["column_name"])
        elif metadata.get("name") == "unique_combination_of_columns" and kwargs.get("combination_of_columns"):
            keys.append(tuple(kwargs["combination_of_columns"]))
    # A unique test may be on an expression (`a || '-' || b`); only plain columns can be joined on.
    keys = [k for k in keys if all(part.replace("_", "").isalnum() for part in k)]
    # Prefer a primary key (unique and not null), then the narrowest, then by name: deterministic.
    keys.sort(key=lambda k: (not set(k) <= not_null, len(k), k))
    return keys[0] if keys else None


# --- the delta ------------------------------------------------------------------------------


def row_delta(
    con_or_warehouse: duckdb.DuckDBPyConnection | Warehouse,
    *,
    model: str,
    before_relation: str,
    after_relation: str,
    key: Sequence[str],
    pii_columns: Collection[str] = (),
    sample_size: int = 5,
) -> RowDelta:
    """Compare `before_relation` (without the commit) with `after_relation` (with it) on `key`."""
    probe, dialect = _runner(con_or_warehouse)
    before, after = _probe(probe, before_relation), _probe(probe, after_relation)

    def run(sql: str) -> list[dict[str, Any]]:  # Cairn's own aliases, which Snowflake upper-cases
        return [{name.lower(): value for name, value in row.items()} for row in probe(sql)]

    key_cols = tuple(_resolve(k, before, before_relation) for k in key)
    for k in key_cols:
        _resolve(k, after, after_relation)
    if not key_cols:
        raise ConfigError(f"{model}: no key to match rows on; set meta.cairn.key or add a unique test.")
    cols = [c for c in before if c in after and c.lower() not in {k.lower() for k in key_cols}]
    floats = {c for c in cols if isinstance(before[c], float) or isinstance(after[c], float)}
    masked = {name.lower() for name in pii_columns}
    sql = _Sql(dialect, before_relation, after_relation, key_cols, cols, floats)

    counts = {kind: 0 for kind in (*KINDS, "unchanged")}
    column_changes: dict[str, int] = {}
    for row in run(sql.counts()):
        counts[row["kind"]] = int(row["n"])
        if row["kind"] == "changed":
            column_changes = {c: int(row[f"c{i}"] or 0) for i, c in enumerate(cols) if row[f"c{i}"]}
    affected = sum(counts[kind] for kind in KINDS)

    concentration = None
    candidates = [i for i, c in enumerate(cols) if c.lower() not in masked]
    if affected >= MIN_AFFECTED and candidates:
        concentration = _concentration(run(sql.concentration(candidates)), cols, counts)
    samples = ()
    if affected and sample_size > 0:
        samples = tuple(_sample(row, key_cols, cols, masked) for row in run(sql.samples(sample_size)))
    return RowDelta(
        model=model, key=key_cols, added=counts["added"], removed=counts["removed"],
        changed=counts["changed"], unchanged=counts["unchanged"],
        column_changes=dict(sorted(column_changes.items(), key=lambda item: (-item[1], item[0]))),
        concentration=concentration, samples=samples,
    )


def _runner(source: duckdb.DuckDBPyConnection | Warehouse) -> tuple[Run, str]:
    if not isinstance(source, duckdb.DuckDBPyConnection):
        return source.query, source.dialect

    def run(sql: str) -> list[dict[str, Any]]:
        try:
            cursor = source.execute(sql)
            names = [column[0] for column in cursor.description or ()]
            return [dict(zip(names, row)) for row in cursor.fetchall()]
        except duckdb.Error as error:
            raise WarehouseError(f"DuckDB refused the row-delta query: {error}") from None

    return run, "duckdb"


def _probe(run: Run, relation: str) -> dict[str, Any]:
    """Column names (with one row's values, to spot floats), even for an empty relation."""
    rows = run("SELECT * FROM (SELECT 1 AS __cairn_probe) AS p "
               f"LEFT JOIN (SELECT * FROM {relation} LIMIT 1) AS r ON TRUE")
    if not rows:
        raise WarehouseError(f"{relation}: the column probe returned no row")
    row = rows[0]
    row.pop(next(name for name in row if name.lower() == "__cairn_probe"))  # Snowflake upper-cases it
    return row


def _resolve(name: str, columns: Mapping[str, Any], relation: str) -> str:
    for column in columns:
        if column.lower() == name.lower():
            return column
    raise ConfigError(f"{relation} has no key column {name!r} (it has {', '.join(columns)}); "
                      "set the model's meta.cairn.key to the columns that identify a row.")


class _Sql:
    """The three queries, all over one FULL OUTER JOIN of the two relations on the key."""

    def __init__(self, dialect: str, before: str, after: str, key: Sequence[str], cols: Sequence[str],
                 floats: Collection[str]):
        def q(name: str) -> str:
            return exp.to_identifier(name, quoted=True).sql(dialect=dialect)

        on = " AND ".join(f"b.{q(k)} = a.{q(k)}" for k in key)
        differs = [_differs(f"b.{q(c)}", f"a.{q(c)}", c in floats) for c in cols]
        kind = ("CASE WHEN b.__cairn_row IS NULL THEN 'added' WHEN a.__cairn_row IS NULL THEN 'removed' "
                f"WHEN {' OR '.join(differs) or 'FALSE'} THEN 'changed' ELSE 'unchanged' END")
        select = [f"{kind} AS kind"] + [f"COALESCE(b.{q(k)}, a.{q(k)}) AS k{i}" for i, k in enumerate(key)]
        for i, (c, d) in enumerate(zip(cols, differs)):
            # The value a row is described by: before the commit when it existed then, else after.
            select += [f"b.{q(c)} AS b{i}", f"a.{q(c)} AS a{i}", f"{d} AS d{i}",
                       f"CASE WHEN b.__cairn_row IS NULL THEN a.{q(c)} ELSE b.{q(c)} END AS v{i}"]
        # Each row is the nth copy of its key, and copies pair one to one (the nth with the nth): a key the
        # commit duplicates (a join fanning out) then shows its extra copies as added, where a join on the key
        # alone matched the one row before with every copy, all "unchanged". The count is exact; which copy
        # pairs with which is not defined (Snowflake wants an ORDER BY; the key's values are all equal).
        keys = ", ".join(q(k) for k in key)
        nth = f"ROW_NUMBER() OVER (PARTITION BY {keys} ORDER BY {keys}) AS __cairn_row"
        self.joined = (f"WITH b AS (SELECT *, {nth} FROM {before}), a AS (SELECT *, {nth} FROM {after}), "
                       f"j AS (SELECT {', '.join(select)} FROM b FULL OUTER JOIN a "
                       f"ON {on} AND b.__cairn_row = a.__cairn_row)")
        self.key, self.cols = key, cols

    def counts(self) -> str:
        sums = "".join(f", SUM(CASE WHEN d{i} THEN 1 ELSE 0 END) AS c{i}" for i in range(len(self.cols)))
        return f"{self.joined} SELECT kind, COUNT(*) AS n{sums} FROM j GROUP BY kind"

    def concentration(self, columns: Sequence[int]) -> str:
        """Per column, the values affected rows take, if they take at most MAX_DISTINCT of them."""
        gid = " ".join(f"WHEN GROUPING(v{i}) = 0 THEN {i}" for i in columns)
        values = ", ".join(f"v{i}" for i in columns)
        sets = ", ".join(f"(v{i})" for i in columns)
        return (f"{self.joined}, g AS (SELECT CASE {gid} END AS gid, {values}, COUNT(*) AS total, "
                "SUM(CASE WHEN kind <> 'unchanged' THEN 1 ELSE 0 END) AS hit "
                f"FROM j GROUP BY GROUPING SETS ({sets})) "
                "SELECT * FROM g WHERE hit > 0 AND gid IN "
                f"(SELECT gid FROM g WHERE hit > 0 GROUP BY gid HAVING COUNT(*) <= {MAX_DISTINCT})")

    def samples(self, size: int) -> str:
        order = ", ".join(f"k{i}" for i in range(len(self.key)))
        return (f"{self.joined} SELECT * FROM j WHERE kind <> 'unchanged' "
                f"QUALIFY ROW_NUMBER() OVER (PARTITION BY kind ORDER BY {order}) <= {int(size)} "
                f"ORDER BY kind, {order}")


def _differs(before: str, after: str, is_float: bool) -> str:
    if not is_float:
        return f"({before} IS DISTINCT FROM {after})"
    return (f"(CASE WHEN {before} IS NULL OR {after} IS NULL THEN {before} IS DISTINCT FROM {after} "
            f"ELSE ABS({before} - {after}) > {FLOAT_TOLERANCE} * GREATEST(ABS({before}), ABS({after}), 1) END)")


def _concentration(rows: list[dict[str, Any]], cols: Sequence[str], counts: Mapping[str, int]) -> str | None:
    affected = sum(counts[kind] for kind in KINDS)
    everything = affected + counts["unchanged"]
    best = None
    for row in rows:
        i = row["gid"]
        share, overall = row["hit"] / affected, row["total"] / everything
        if share >= MIN_SHARE and share - overall >= MIN_LIFT and (best is None or share - overall > best[0]):
            best = (share - overall, cols[i], row[f"v{i}"], share, overall)
    if best is None:
        return None
    _, column, value, share, overall = best
    present = [kind for kind in KINDS if counts[kind]]
    label = present[0] if len(present) == 1 else "affected"
    return f"{_pct(share)} of {label} rows have {column} = {compact(value)} ({_pct(overall)} of all rows)"


def _sample(row: Mapping[str, Any], key: Sequence[str], cols: Sequence[str], masked: Collection[str]) -> dict[str, Any]:
    def show(column: str, value: Any) -> Any:
        return MASK if column.lower() in masked else _plain(value)

    sample: dict[str, Any] = {"kind": row["kind"], "key": {k: show(k, row[f"k{i}"]) for i, k in enumerate(key)}}
    if row["kind"] == "changed":
        changed = [i for i in range(len(cols)) if row[f"d{i}"]]
        sample["before"] = {cols[i]: show(cols[i], row[f"b{i}"]) for i in changed}
        sample["after"] = {cols[i]: show(cols[i], row[f"a{i}"]) for i in changed}
    else:
        side = "a" if row["kind"] == "added" else "b"
        sample["after" if side == "a" else "before"] = {c: show(c, row[f"{side}{i}"]) for i, c in enumerate(cols)}
    return sample


def _plain(value: Any) -> Any:
    """A JSON-safe scalar: samples travel into incident details and PR bodies."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    return str(value)


# --- rendering ------------------------------------------------------------------------------


def compact(value: Any, width: int = 40) -> str:
    """A value as short as a PR line needs: 6 significant digits, strings cut at `width`."""
    if value is None:
        return "NULL"
    if value == MASK:
        return MASK
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (float, Decimal)):
        value = float(value)
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.0f}" if abs(value) >= 1e6 else f"{value:.6g}"
    if isinstance(value, int):
        return str(value)
    text = value.isoformat(sep=" ") if isinstance(value, datetime) else str(value)
    text = text if len(text) <= width else text[: width - 1] + "…"
    return f"'{text}'" if isinstance(value, str) else text


def _pct(fraction: float) -> str:
    pct = round(fraction * 100)
    return f"{min(max(pct, 1 if fraction > 0 else 0), 99 if fraction < 1 else 100)}%"


def sample_line(sample: Mapping[str, Any], limit: int = 6) -> str:
    key = ", ".join(f"{k}={compact(v)}" for k, v in sample["key"].items())
    if sample["kind"] == "changed":
        pairs = [f"{c} {compact(b)} → {compact(sample['after'][c])}" for c, b in sample["before"].items()]
    else:
        pairs = [f"{c}={compact(v)}" for c, v in sample.get("after", sample.get("before", {})).items()]
    more = " …" if len(pairs) > limit else ""
    line = f"- {sample['kind']} {key}: {'; '.join(pairs[:limit])}{more}"
    return line if len(line) <= 240 else line[:239] + "…"


def render_delta(delta: RowDelta) -> str:
    """The delta for a PR body or a Slack thread: Markdown, under 1,500 characters."""
    name, key = delta.model.rsplit(".", 1)[-1], ", ".join(delta.key)
    total = delta.added + delta.removed + delta.changed + delta.unchanged
    if delta.match_score == 1.0:
        return f"**{name}** (key {key}): identical, {total:,} rows match."
    lines = [f"**{name}** (key {key}): {delta.match_score:.1%} of {total:,} rows match",
             f"+{delta.added:,} added · −{delta.removed:,} removed · ~{delta.changed:,} changed · "
             f"{delta.unchanged:,} unchanged"]
    if delta.column_changes:
        shown = list(delta.column_changes.items())[:8]
        more = f" and {len(delta.column_changes) - 8} more" if len(delta.column_changes) > 8 else ""
        lines.append("Changed columns: " + ", ".join(f"{c} ({n:,})" for c, n in shown) + more)
    if delta.concentration:
        lines.append(delta.concentration)
    if delta.samples:
        lines.append("Samples:")
    for i, sample in enumerate(delta.samples):
        line = sample_line(sample)
        rest = f"- … {len(delta.samples) - i} more"
        if sum(len(x) + 1 for x in lines) + len(line) + len(rest) + 2 > RENDER_LIMIT:
            lines.append(rest)
            break
        lines.append(line)
    return "\n".join(lines)


def keyed_models(manifest: Mapping[str, Any], models: Sequence[str]) -> Iterator[tuple[dict[str, Any], tuple[str, ...]]]:
    """The models rows can be compared for: built (not ephemeral) and with a key, each with its key."""
    for uid in models:
        node = manifest.get("nodes", {}).get(uid)
        key = model_key(manifest, node) if node else None
        if node is not None and key and node.get("config", {}).get("materialized") != "ephemeral":
            yield node, key


def relation_deltas(warehouse: Warehouse, manifest: Mapping[str, Any], production: Mapping[str, Any],
                    models: Sequence[str]) -> list[RowDelta]:
    """Each keyed model as the sandbox (`manifest`) rebuilt it vs production (`production`), through one
    connection that reads both; a model whose delta cannot be taken is left out, never the verification."""
    deltas = []
    for node, key in keyed_models(manifest, models):
        prod = production.get("nodes", {}).get(node["unique_id"])
        if prod is None:
            continue
        try:
            deltas.append(row_delta(warehouse, model=node["name"], before_relation=warehouse.relation_name(node),
                                    after_relation=warehouse.relation_name(prod), key=key,
                                    pii_columns=pii_columns(node)))
        except (ConfigError, WarehouseError) as error:
            log.warning("row deltas of %s not taken: %s", node["unique_id"], error)
    return deltas


def clone_deltas(sandbox_db: Path, production_db: Path, manifest: Mapping[str, Any],
                 models: Sequence[str]) -> list[RowDelta]:
    """Each keyed model as the sandbox rebuilt it without the commit vs production with it.

    Production is attached READ_ONLY to Cairn's own read-only connection on the sandbox file:
    no model SQL runs here, so the attach cannot be turned into a write.
    """
    deltas = []
    with duckdb.connect(str(sandbox_db), read_only=True) as con:
        con.execute(f"ATTACH '{production_db}' AS cairn_production (READ_ONLY)")
        for node, key in keyed_models(manifest, models):
            name = node.get("alias") or node["name"]
            before = f'"{node["database"]}"."{node["schema"]}"."{name}"'
            after = f'"cairn_production"."{node["schema"]}"."{name}"'
            deltas.append(row_delta(con, model=node["name"], before_relation=before, after_relation=after,
                                    key=key, pii_columns=pii_columns(node)))
    return deltas
