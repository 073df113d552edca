"""Lineage: the metric model's upstream subgraph from the dbt manifest, its files and columns."""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.lineage import to_node
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, build_scope
from sqlglot.schema import MappingSchema

from jobs.core.errors import ContractError
from jobs.project.packages import PACKAGE_FILES
from policies.model import ModelRef

PROJECT_FILE = "dbt_project.yml"
# dbt's own macros and its adapters' ship with dbt, not with the project's packages.
_ADAPTERS = frozenset({"duckdb", "postgres", "bigquery", "snowflake", "redshift", "spark", "databricks",
                       "trino", "athena", "fabric", "sqlserver", "synapse", "clickhouse"})
# Project overrides of these macros shape every node without appearing in any `depends_on`.
_IMPLICIT_MACROS = ("generate_schema_name", "generate_alias_name", "generate_database_name")
_ROW_CLAUSES = ("where", "joins", "group", "having", "qualify")


@dataclass(frozen=True)
class Lineage:
    """The upstream subgraph of one model: distances, edges, defining files, feeding columns."""

    root: str  # unique_id of the metric's model (or source)
    names: dict[str, str]  # unique_id -> node name ('raw.payments' for a source)
    distances: dict[str, int]  # unique_id -> fewest hops down to `root`
    edges: tuple[tuple[str, str], ...]  # (upstream unique_id, downstream unique_id)
    node_files: dict[str, frozenset[str]]  # unique_id -> project-relative files defining it
    defined_in: dict[str, str] = field(default_factory=dict)  # unique_id -> its own SQL/YAML/CSV file
    node_columns: dict[str, frozenset[str] | None] = field(default_factory=dict)
    unresolved: dict[str, str] = field(default_factory=dict)  # unique_id -> why no columns

    @property
    def files(self) -> frozenset[str]:
        return frozenset().union(*self.node_files.values())

    def nodes_for_file(self, path: str) -> set[str]:
        return {uid for uid, files in self.node_files.items() if path in files}

    def distance(self, unique_id: str) -> int:
        return self.distances[unique_id]

    def columns(self, unique_id: str) -> set[str] | None:
        """Columns of the node that feed the metric's columns; None: resolve at model level."""
        cols = self.node_columns.get(unique_id)
        return None if cols is None else set(cols)

    def path_to(self, unique_id: str) -> list[str]:
        """Node names along a shortest chain from `unique_id` down to the metric's model."""
        downstream: dict[str, list[str]] = {}
        for up, down in self.edges:
            downstream.setdefault(up, []).append(down)
        chain = [unique_id]
        while chain[-1] != self.root:
            nxt = [d for d in downstream.get(chain[-1], []) if self.distances[d] == self.distances[chain[-1]] - 1]
            chain.append(sorted(nxt)[0])
        return [self.names[uid] for uid in chain]


def metric_columns(contract: Any, dialect: str | None = None) -> set[str]:
    """Column names a contract's expressions read; empty (no narrowing) when one does not parse."""
    found: set[str] = set()
    for attr in ("expr", "numerator", "denominator", "column", "where", "time_column"):
        text = getattr(contract, attr, None)
        if text:
            try:
                found |= {c.name for c in sqlglot.parse_one(text, read=dialect).find_all(exp.Column)}
            except SqlglotError:
                return set()  # a partial set would narrow away what the unparsed part reads
    return found


def _find_root(manifest: Mapping[str, Any], model: str) -> str:
    nodes, sources = manifest.get("nodes", {}), manifest.get("sources", {})
    if model in nodes or model in sources:
        return model
    for uid, src in sources.items():
        if f"{src['source_name']}.{src['name']}" == model:
            return uid
    matches = [n for n in nodes.values() if n.get("resource_type") == "model" and n["name"] == model]
    if len(matches) > 1:  # versioned model: the name means the latest version, as ref() does
        matches = [n for n in matches if n.get("version") == n.get("latest_version")]
    if len(matches) != 1:
        raise ContractError(f"model {model!r} is not (or not uniquely) in the dbt manifest; check its name")
    return matches[0]["unique_id"]


def _macro_files(manifest: Mapping[str, Any], macro_ids: Iterable[str], project: str) -> set[str]:
    macros, files, seen = manifest.get("macros", {}), set(), set()
    todo = list(macro_ids)
    while todo:
        uid = todo.pop()
        macro = macros.get(uid)
        if uid in seen or macro is None:
            continue
        seen.add(uid)
        package = macro.get("package_name")
        if package != project:
            # An installed package's macros change when the project pins another version of it
            # (PACKAGE_FILES: where a project pins its packages).
            if package != "dbt" and not (package.startswith("dbt_") and package[4:] in _ADAPTERS):
                files |= set(PACKAGE_FILES)
            continue
        files |= {macro["original_file_path"], *_patch(macro)}
        todo += macro.get("depends_on", {}).get("macros", [])
    return files


def _patch(node: Mapping[str, Any]) -> set[str]:
    path = node.get("patch_path")  # 'project_name://models/_marts.yml'
    return {path.split("://", 1)[-1]} if path else set()


def _implicit_macros(manifest: Mapping[str, Any], node: Mapping[str, Any], project: str) -> list[str]:
    wanted = set(_IMPLICIT_MACROS)
    materialized = node.get("config", {}).get("materialized")
    if materialized:
        wanted |= {f"materialization_{materialized}_{a}" for a in ("default", manifest["metadata"].get("adapter_type"))}
    return [uid for uid, m in manifest.get("macros", {}).items()
            if m.get("package_name") == project and m["name"] in wanted]


def _files(manifest: Mapping[str, Any], node: Mapping[str, Any], project: str) -> frozenset[str]:
    files = {PROJECT_FILE, node["original_file_path"], *_patch(node)}
    macros = [*node.get("depends_on", {}).get("macros", []), *_implicit_macros(manifest, node, project)]
    return frozenset(files | _macro_files(manifest, macros, project))


def _name(node: Mapping[str, Any]) -> str:
    return f"{node['source_name']}.{node['name']}" if node["resource_type"] == "source" else node["name"]


def upstream(manifest: Mapping[str, Any], model: str, columns: Iterable[str] | None = None,
             schema: Mapping[str, Any] | None = None, dialect: str | None = None) -> Lineage:
    """Walk from `model` up to its sources; narrow to columns when compiled SQL allows it."""
    project = manifest["metadata"]["project_name"]
    every = {**manifest.get("sources", {}), **manifest.get("nodes", {})}
    root = _find_root(manifest, model)
    distances, edges, queue = {root: 0}, set(), deque([root])
    while queue:  # breadth first, so the first visit is the fewest hops
        uid = queue.popleft()
        for parent in every[uid].get("depends_on", {}).get("nodes", []):
            if parent not in every:
                continue
            edges.add((parent, uid))
            if parent not in distances:
                distances[parent] = distances[uid] + 1
                queue.append(parent)
    lineage = Lineage(
        root=root,
        names={uid: _name(every[uid]) for uid in distances},
        distances=distances,
        edges=tuple(sorted(edges)),
        node_files={uid: _files(manifest, every[uid], project) for uid in distances},
        defined_in={uid: every[uid]["original_file_path"] for uid in distances},
        node_columns=dict.fromkeys(distances),
    )
    cols = set(columns or ())
    if not cols:
        return lineage
    _narrow(lineage, every, cols, _schema(every.values(), schema),
            dialect or manifest["metadata"].get("adapter_type"))
    return lineage


def _schema(nodes: Iterable[Mapping[str, Any]], extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """{database: {schema: {table: {column: type}}}} from documented columns, overlaid by `extra`."""
    tree: dict[str, Any] = {}
    for node in nodes:
        if node.get("columns") and node.get("resource_type") in ("model", "seed", "snapshot", "source"):
            table = tree.setdefault(node.get("database") or "", {}).setdefault(node["schema"], {})
            table[_identifier(node)] = {c: col.get("data_type") or "unknown" for c, col in node["columns"].items()}
    for db, schemas in (extra or {}).items():
        for sch, tables in schemas.items():
            tree.setdefault(db, {}).setdefault(sch, {}).update(tables)
    return tree


def _identifier(node: Mapping[str, Any]) -> str:
    return node.get("identifier") or node.get("alias") or node["name"]


def _key(database: str | None, schema: str | None, table: str) -> tuple[str, str, str]:
    return ((database or "").lower(), (schema or "").lower(), table.lower())


def _narrow(lineage: Lineage, every: Mapping[str, Any], metric_cols: set[str],
            schema: dict[str, Any], dialect: str | None) -> None:
    """Fill node_columns consumers-first; any unresolved consumer leaves its inputs unresolved."""
    tables = {_key(n.get("database"), n.get("schema"), _identifier(n)): uid for uid, n in every.items()
              if uid in lineage.distances}
    consumers: dict[str, set[str]] = {uid: set() for uid in lineage.distances}
    inputs: dict[str, list[str]] = {uid: [] for uid in lineage.distances}
    for up, down in lineage.edges:
        consumers[up].add(down)
        inputs[down].append(up)
    wanted: dict[str, set[str]] = {uid: set() for uid in lineage.distances}
    wanted[lineage.root] = set(metric_cols)
    blocked: dict[str, str] = {}
    mapping = MappingSchema(schema, dialect=dialect)
    done: set[str] = set()
    while len(done) < len(lineage.distances):
        ready = sorted(u for u in lineage.distances if u not in done and consumers[u] <= done)
        if not ready:
            break  # a cycle: dbt refuses those, but never loop forever on a hand-made manifest
        for uid in ready:
            done.add(uid)
            node = every[uid]
            parents = inputs[uid]
            if node.get("config", {}).get("materialized") == "ephemeral":
                blocked.setdefault(uid, "ephemeral: inlined into its consumers' SQL")
            if uid in blocked:
                lineage.unresolved[uid] = blocked[uid]
                for parent in parents:  # an input of an unresolved node may feed anything
                    blocked.setdefault(parent, f"{node['name']} is unresolved")
                continue
            lineage.node_columns[uid] = frozenset(wanted[uid])
            if not parents or not wanted[uid]:
                continue
            try:
                leaves = _trace(node.get("compiled_code"), wanted[uid], mapping, dialect)
            except (SqlglotError, ValueError, KeyError, RecursionError) as exc:
                for parent in parents:
                    blocked.setdefault(parent, f"column lineage of {node['name']} failed: {_plain(exc)}")
                continue
            for (db, sch, table), column in leaves:
                parent = tables.get(_key(db, sch, table))
                if parent in wanted:
                    wanted[parent].add(column)


def _plain(exc: Exception) -> str:
    """An error's first line without the terminal underlining sqlglot adds."""
    return re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()[0][:200] if str(exc) else type(exc).__name__


def _unquote(name: str) -> str:
    return name.strip('"`')


def _trace(sql: str | None, columns: set[str], schema: MappingSchema,
           dialect: str | None) -> set[tuple[tuple[str, str, str], str]]:
    """(table, column) pairs the given output columns read, including rows' filters and join keys."""
    if not sql:
        raise ValueError("no compiled SQL (a parse-only manifest): run `dbt compile` first")
    expression = qualify(sqlglot.parse_one(sql, read=dialect), schema=schema, dialect=dialect,
                         validate_qualify_columns=False)
    root = build_scope(expression)
    if root is None:
        raise ValueError("compiled SQL is not a query")
    scopes = {id(s.expression): s for s in root.traverse()}
    for scope in scopes.values():
        if isinstance(scope.expression, exp.Select) and scope.expression.is_star:
            tables = ", ".join(sorted(t.sql(dialect=dialect) for t in scope.tables)) or "a subquery"
            raise ValueError(f"cannot expand `select *` over {tables}: its columns are neither "
                             "documented in the manifest nor given in schema=")
    leaves: set[tuple[tuple[str, str, str], str]] = set()
    todo, seen = [(c, root) for c in sorted(columns)], set()
    filtered: set[int] = set()
    while todo:
        column, scope = todo.pop()
        if (column, id(scope)) in seen:
            continue
        seen.add((column, id(scope)))
        if column not in scope.expression.named_selects:
            raise ValueError(f"column {column!r} is not an output of {scope.expression.sql(dialect=dialect)[:120]}")
        for step in to_node(column, scope, dialect, schema=schema, trim_selects=False).walk():
            if isinstance(step.source, exp.Table):
                table = _key(step.source.catalog, step.source.db, step.source.name)
                leaves.add((table, _unquote(step.name.split(".")[-1])))
                continue
            inner = scopes.get(id(step.source))
            if inner is None or id(inner) in filtered:
                continue
            filtered.add(id(inner))
            # Rows a scope keeps or matches change every column it passes on: follow those columns too.
            for clause in _ROW_CLAUSES:
                value = inner.expression.args.get(clause) or []
                for part in value if isinstance(value, list) else [value]:
                    for col in part.find_all(exp.Column):
                        source = inner.sources.get(col.table)
                        if isinstance(source, exp.Table):
                            leaves.add((_key(source.catalog, source.db, source.name), col.name))
                        elif isinstance(source, Scope):
                            todo.append((col.name, source))
    return leaves


def model_refs(manifest: Mapping[str, Any], unique_ids: Sequence[str]) -> list[ModelRef]:
    """What policy selectors see of the models a revert touches."""
    nodes = manifest.get("nodes", {})
    parents = {uid: node.get("depends_on", {}).get("nodes", []) for uid, node in nodes.items()}
    refs = []
    for uid in unique_ids:
        node = nodes.get(uid)
        if node is None:
            continue
        ancestors, stack = set(), list(parents.get(uid, []))
        while stack:
            parent = stack.pop()
            if parent in nodes and nodes[parent]["name"] not in ancestors:
                ancestors.add(nodes[parent]["name"])
                stack.extend(parents.get(parent, []))
        refs.append(ModelRef(node["name"], node.get("original_file_path", ""),
                             frozenset(node.get("tags", [])), frozenset(ancestors)))
    return refs


def model_uid(manifest: Mapping[str, Any], name: str) -> str | None:
    """The unique ID of the model called `name`, if the manifest has one (a source has none)."""
    return next((uid for uid, node in manifest.get("nodes", {}).items()
                 if node.get("resource_type") == "model" and node.get("name") == name), None)
