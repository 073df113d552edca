"""What a sandbox of zero-copy clones does alike on every warehouse that has them (BigQuery, Snowflake).

A sandbox is one dataset or schema (`Dataset`): Cairn's macros redirect every write of the build
there (`redirect_macros`), `check_relations` proves it before dbt runs, the stateful tables the
build reads are cloned at the snapshot time, and the contracts and row deltas are measured
through the sandbox's own guarded connection. An adapter supplies the clone statement, the
admission check and the guard around dbt.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jobs.core.errors import DbtError


def write_profiles_yml(directory: Path, profile: str, output: dict[str, Any]) -> Path:
    """profiles.yml with the one target `cairn_sandbox`, readable only by Cairn."""
    import os

    import yaml

    from jobs.warehouse.bigquery_sandbox import TARGET

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
        from jobs.warehouse.bigquery_sandbox import redirect_macros

        if redirect_macros(self.project_dir, dbt.parse(), self.sandbox.dataset):
            dbt.parse()  # again, with Cairn's schema/database macros in place
        return dbt.manifest()

    def prepare(self, production: Mapping[str, Any], expected: set[str]) -> None:
        """Layer (b) on the planned manifest, then clones of the stateful tables the build reads."""
        from jobs.warehouse.bigquery_sandbox import check_relations, dbt_manifest, stateful_sources

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
