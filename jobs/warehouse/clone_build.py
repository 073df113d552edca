"""What a sandbox of zero-copy clones does alike on every warehouse that has them (BigQuery, Snowflake).

A sandbox is one dataset or schema (`Dataset`): Cairn's macros redirect every write of the build
there (`redirect_macros`), `check_relations` proves it before dbt runs, the stateful tables the
build reads are cloned at the snapshot time, and the contracts and row deltas are measured
through the sandbox's own guarded connection. An adapter supplies the clone statement, the
admission check and the guard around dbt.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import yaml

from jobs.core.errors import DbtError
from jobs.warehouse import identifier
from jobs.warehouse.sandboxes import SandboxRefused
from jobs.warehouse.statement_guard import Dataset

TARGET = "cairn_sandbox"
MACROS_FILE = "_cairn_sandbox.sql"
# A snapshot this close to the edge of the time-travel window may expire before the clone runs.
TIME_TRAVEL_MARGIN = timedelta(hours=1)
STATEFUL = ("incremental", "snapshot")  # materializations whose build reads their own last state


@contextmanager
def work_directory(root: Path, label: str) -> Iterator[Path]:
    """The sandbox's local directory under the sandboxes root (profile, target, logs), removed on exit."""
    import shutil
    import tempfile

    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"incident-{label}-", dir=root))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_profiles_yml(directory: Path, profile: str, output: dict[str, Any]) -> Path:
    """profiles.yml with the one target `cairn_sandbox`, readable only by Cairn."""
    import os

    import yaml

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "profiles.yml"
    path.write_text(yaml.safe_dump({profile: {"target": TARGET, "outputs": {TARGET: output}}}, sort_keys=False))
    os.chmod(path, 0o600)
    return path


class ClonedSandbox:
    """The clones a sandbox holds, and the identity the evidence records for it."""

    kind = ""  # the warehouse: 'bigquery', 'snowflake'
    dataset: Any  # statement_guard.Dataset: the one place this sandbox writes
    clones: list[Any]  # bigquery_sandbox.Clone

    @property
    def snapshot(self) -> datetime | None:
        """The point in time the clones hold (the earliest, when they differ)."""
        times = [c.snapshot for c in self.clones if c.snapshot is not None]
        return min(times) if times else None

    @property
    def clone_id(self) -> str:
        """What the evidence records: the dataset or schema, and the snapshot time its clones hold."""
        at = self.snapshot
        state = at.astimezone(timezone.utc).isoformat() if at else ("current" if self.clones else "none")
        return f"{self.kind}:{self.dataset}@{state}"


class CloneBuild:
    """One verification's sandbox of clones, as the sandbox protocol (`jobs.warehouse.sandboxes`) sees it."""

    connection: Any  # the sandbox's guarded Warehouse

    def __init__(self, sandbox: ClonedSandbox, work: Path, project_dir: Path, settings: Any,
                 snapshot_at: datetime | None, now: datetime):
        self.sandbox, self.project_dir, self.settings = sandbox, project_dir, settings
        self.snapshot_at, self.now = snapshot_at, now
        self.profiles_dir, self.target, self.target_path = work, sandbox.target, work / "target"

    @property
    def clone_id(self) -> str:
        return self.sandbox.clone_id

    @property
    def notes(self) -> str:
        return "".join(f" {c.target}: {c.note}." for c in self.sandbox.clones if c.note)

    def plan(self, dbt: Any) -> Mapping[str, Any]:
        """Parse with every write redirected into the sandbox (Cairn's macros, unless the project has its own)."""
        if redirect_macros(self.project_dir, dbt.parse(), self.sandbox.dataset):
            dbt.parse()  # again, with Cairn's schema/database macros in place
        return dbt.manifest()

    def prepare(self, production: Mapping[str, Any], expected: set[str]) -> None:
        """Layer (b) on the planned manifest, then clones of the stateful tables the build reads."""
        check_relations(dbt_manifest(self.target_path), expected, self.sandbox.dataset)
        self.clone(stateful_sources(production, expected, self.production_database))

    def admit(self, dbt: Any, select: str, extra: tuple[str, ...], expected: set[str]) -> None:
        """The estimate of every model the build runs (`scan`: compiled SQL -> bytes) against the budget."""
        from jobs.warehouse.cost_guard import estimate

        guess = estimate(self.scan, self.compiled(dbt, select, extra), expected)
        self.estimated = guess.total
        self.check_budget(guess)

    # -- what each warehouse supplies ----------------------------------------------------------

    production_database = ""  # where unqualified production names live (project, database)

    def clone(self, sources: list[tuple[str, str, str]]) -> None:
        raise NotImplementedError

    def scan(self, sql: str) -> int:
        raise NotImplementedError

    def check_budget(self, estimate: Any) -> None:
        raise NotImplementedError

    def guarded(self):
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------

    def compiled(self, dbt: Any, select: str, extra: tuple[str, ...]) -> Mapping[str, Any]:
        """The selection compiled in the sandbox, under the guard (compiling runs introspective queries)."""
        with self.guarded():
            try:
                result = dbt.invoke("compile", select=select, extra=(*extra, "--log-level", "none"))
                compiled = dbt.manifest() if result.success else None
            except DbtError:
                compiled = None
        if compiled is None:
            raise DbtError("dbt compile failed in the sandbox; see its log")
        return compiled

    def after_build(self) -> None:
        return None  # the guard and check_relations refused any write outside the sandbox before it was sent

    @contextmanager
    def warehouse(self) -> Iterator[Any]:
        yield self.connection  # closed with the sandbox: its spend is the verification's

    def deltas(self, manifest: Mapping[str, Any], production: Mapping[str, Any], models: Sequence[str]) -> list:
        from jobs.warehouse.row_deltas import relation_deltas

        return relation_deltas(self.connection, manifest, production, models)

    def clones(self) -> tuple[dict[str, Any], ...]:
        """What was cloned, from where, at which time, by which statement: for the evidence."""
        return tuple({"source": c.source, "target": c.target, "statement": c.statement,
                      "snapshot": c.snapshot.isoformat() if c.snapshot else None,
                      **({"note": c.note} if c.note else {})} for c in self.sandbox.clones)


# -- what every clone build checks and writes before dbt runs -------------------------------------


class RelationOutsideSandbox(SandboxRefused):
    """A node the build would write lies outside the sandbox dataset; dbt was not run."""


@dataclass(frozen=True)
class Clone:
    """One production table cloned into the sandbox, and the state it was cloned at."""

    source: str  # project.dataset.table
    target: str
    snapshot: datetime | None  # None: the table's current state
    statement: str
    note: str = ""


def stateful_sources(production: Mapping[str, Any], selected: Iterable[str], default_project: str
                     ) -> list[tuple[str, str, str]]:
    """Production relations of the selected incremental models and snapshots: they need clones."""
    nodes = production.get("nodes", {})
    found = []
    for uid in sorted(selected):
        node = nodes.get(uid)
        if node and (node.get("config") or {}).get("materialized") in STATEFUL:
            found.append((node.get("database") or default_project, node["schema"], identifier(node)))
    return found


def selected_writes(manifest: Mapping[str, Any], built: Iterable[str]) -> dict[str, tuple[str, str, str]]:
    """Every relation a build of `built` writes: the nodes, and tests storing failures on them."""
    nodes = manifest.get("nodes", {})
    writes = {uid: nodes[uid] for uid in built if uid in nodes}
    built = set(writes)
    for uid, node in nodes.items():
        if node.get("resource_type") == "test" and (node.get("config") or {}).get("store_failures"):
            if built & set((node.get("depends_on") or {}).get("nodes", ())):
                writes[uid] = node
    return {uid: (n.get("database") or "", n["schema"], identifier(n)) for uid, n in writes.items()}


def check_relations(manifest: Mapping[str, Any], built: Iterable[str], sandbox: Dataset) -> None:
    """Layer (b): refuse the build unless every relation it writes is in `sandbox`, and distinct."""
    writes = selected_writes(manifest, built)
    outside = [f"{uid} -> {'.'.join(r)}" for uid, r in sorted(writes.items())
               if (r[0].lower(), r[1]) != (sandbox.project.lower(), sandbox.dataset)]
    if outside:
        raise RelationOutsideSandbox(
            "refused to build: these nodes would write outside sandbox dataset "
            f"{sandbox}: {'; '.join(outside)}. Their `database`/`schema` config or the project's "
            "generate_schema_name/generate_database_name macros place them elsewhere; make those macros "
            f"return target.schema and target.database when target.name == '{TARGET}' (docs/bigquery.md, "
            "docs/snowflake.md).")
    seen: dict[tuple[str, str, str], str] = {}
    for uid, relation in sorted(writes.items()):
        if relation in seen:
            raise RelationOutsideSandbox(
                f"refused to build: {seen[relation]} and {uid} would both write {'.'.join(relation)} in "
                "the sandbox; give one of them a distinct alias.")
        seen[relation] = uid


def redirect_macros(project_dir: Path, manifest: Mapping[str, Any], sandbox: Dataset) -> list[str]:
    """Write schema/database macros placing every node in the sandbox, unless the project has its own.

    The file goes into the Cairn-owned worktree only. Returns the macros written.
    """
    project = yaml.safe_load((project_dir / "dbt_project.yml").read_text())
    name = project["name"]
    own = {m["name"] for m in manifest.get("macros", {}).values() if m.get("package_name") == name}
    bodies = {
        "generate_schema_name": "{%% macro generate_schema_name(custom_schema_name=none, node=none) -%%}"
                                "%s{%%- endmacro %%}" % sandbox.dataset,
        "generate_database_name": "{%% macro generate_database_name(custom_database_name=none, node=none) -%%}"
                                  "%s{%%- endmacro %%}" % sandbox.project,
    }
    written = [macro for macro in bodies if macro not in own]
    if written:
        paths = project.get("macro-paths") or ["macros"]
        directory = project_dir / paths[0]
        directory.mkdir(parents=True, exist_ok=True)
        (directory / MACROS_FILE).write_text(
            "{# Written by Cairn into its own worktree: every sandbox build writes the sandbox dataset. #}\n"
            + "\n".join(bodies[m] for m in written) + "\n")
    return written


def snapshot_point(at: datetime | None, now: datetime, time_travel: timedelta) -> tuple[datetime | None, str]:
    """The point a clone is taken at, or None (the current state) with the note saying why."""
    if at is None:
        return None, "cloned at its current state"
    at = min(at, now)
    if now - at > time_travel - TIME_TRAVEL_MARGIN:
        return None, (f"{at.isoformat()} is outside the {time_travel.days}-day time-travel window: "
                      "cloned at its current state instead")
    return at, ""


def dbt_manifest(target_path: Path) -> dict[str, Any]:
    import json

    return json.loads((Path(target_path) / "manifest.json").read_text())
