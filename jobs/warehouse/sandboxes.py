"""Where verification builds: the sandbox protocol every warehouse adapter implements.

`jobs.verify.verification.verify_revert` is the one verification algorithm; an adapter supplies the warehouse's
sandbox, and nothing else differs between warehouses:

- `Sandboxes.sandbox(label, project_dir, profile, production)`: a clone of production (a copied DuckDB file,
  a BigQuery dataset or Snowflake schema of zero-copy clones) with a generated dbt profile, removed on exit.
- `Sandbox.plan(dbt)`: the sandbox's manifest before the build when the adapter must place or check
  writes first (BigQuery and Snowflake redirect every write into their sandbox), else None.
- `Sandbox.prepare(production, expected)`: with that manifest's selection, clone the stateful
  tables the build reads and check that every write lands in the sandbox (a refusal raises).
- `Sandbox.admit(dbt, select, extra, expected)`: the admission check before any build (BigQuery's
  dry-run cost estimate against the budget, Snowflake's EXPLAIN estimate in warehouse-seconds);
  raises a `SandboxRefused`.
- `Sandbox.guarded()`: wraps the build (BigQuery checks every API request dbt makes, Snowflake
  every statement).
- `Sandbox.after_build()`: the write guard's verdict (DuckDB fingerprints production).
- `Sandbox.warehouse()`, `Sandbox.deltas(...)`: measure the contracts and sample-row deltas there.
- `Sandbox.spend()`: estimated and billed bytes and what was cloned, for the evidence.
- `Sandboxes.gc(older_than, now)`: remove what crashed workers left.
- `Sandboxes.isolation` and `.protected`, `Sandbox.network` and `.guard`: how every dbt invocation
  on the revert runs (`jobs.project.isolation`): in a child without Cairn's secrets, jailed by
  bubblewrap where it works, production's files (`protected`) read-only, the network only where
  the warehouse needs it, BigQuery's request guard (`guard`, the dataset) inside the child.

Refusals (over budget, a write outside the sandbox, Python models where nothing isolates them)
share `SandboxRefused`: the stage escalates
them to a person instead of erroring.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from jobs.core.errors import CairnError
from jobs.project.isolation import Isolation


class SandboxRefused(CairnError):
    """A sandbox guard refused the build before it ran; a person decides what to do."""

    def audit_data(self) -> dict[str, Any]:
        return {}


class Unisolated(SandboxRefused):
    """The build would run code no OS isolation confines here (Python models, or any with `isolation: bwrap`)."""

    def __init__(self, message: str, isolation: Isolation, python_models: tuple[str, ...] = ()):
        super().__init__(message)
        self.isolation, self.python_models = isolation, python_models

    def audit_data(self) -> dict[str, Any]:
        return {"isolation": self.isolation.describe(), "python_models": list(self.python_models)}


class Sandbox(Protocol):
    clone_id: str
    profiles_dir: Path
    target: str
    target_path: Path
    notes: str  # what the evidence must add (e.g. a clone that holds the current state, not the point asked)
    network: bool  # whether its dbt reaches the warehouse over the network (BigQuery) or a local file (DuckDB)
    guard: str | None  # the write guard the child that runs dbt installs: `bigquery:P.D` or `snowflake:DB.S:SECONDS`

    def plan(self, dbt: Any) -> Mapping[str, Any] | None: ...

    def prepare(self, production: Mapping[str, Any], expected: set[str]) -> None: ...

    def admit(self, dbt: Any, select: str, extra: tuple[str, ...], expected: set[str]) -> None: ...

    def guarded(self) -> AbstractContextManager[None]: ...

    def after_build(self) -> None: ...

    def warehouse(self) -> AbstractContextManager[Any]: ...

    def deltas(self, manifest: Mapping[str, Any], production: Mapping[str, Any],
               models: Sequence[str]) -> Sequence[Any]: ...

    def spend(self) -> dict[str, Any]: ...


class Sandboxes(Protocol):
    name: str  # 'duckdb', 'bigquery', 'snowflake'
    network: bool  # whether its builds reach the warehouse over the network: the jail its dbt server needs
    checks_deploys: bool  # whether deploy checks (jobs.detect.deploy_check) build here
    isolation: Isolation  # how dbt runs a revert's code here
    protected: tuple[Path, ...]  # production's files: read-only to every build

    def sandbox(self, label: str, project_dir: Path, profile: str,
                production: Mapping[str, Any]) -> AbstractContextManager[Sandbox]: ...

    def gc(self, older_than: timedelta, now: datetime) -> list[str]: ...
