"""Where verification builds: the sandbox protocol every warehouse adapter implements.

`jobs.verify.verification.verify_revert` is the one verification algorithm; an adapter supplies the warehouse's
sandbox, and nothing else differs between warehouses:

- `Sandboxes.sandbox(label, project_dir, profile, production)`: a clone of production (a copied DuckDB file,
  a BigQuery dataset of zero-copy clones) with a generated dbt profile, removed on exit.
- `Sandbox.plan(dbt)`: the sandbox's manifest before the build when the adapter must place or check
  writes first (BigQuery redirects every write into its dataset), else None.
- `Sandbox.prepare(production, expected)`: with that manifest's selection, clone the stateful
  tables the build reads and check that every write lands in the sandbox (a refusal raises).
- `Sandbox.admit(dbt, select, extra, expected)`: the admission check before any build (BigQuery's
  dry-run cost estimate against the budget); raises a `SandboxRefused`.
- `Sandbox.guarded()`: wraps the build (BigQuery checks every API request dbt makes).
- `Sandbox.after_build()`: the write guard's verdict (DuckDB fingerprints production).
- `Sandbox.warehouse()`, `Sandbox.deltas(...)`: measure the contracts and sample-row deltas there.
- `Sandbox.spend()`: estimated and billed bytes and what was cloned, for the evidence.
- `Sandboxes.gc(older_than, now)`: remove what crashed workers left.

Refusals (over budget, a write outside the sandbox) share `SandboxRefused`: the stage escalates
them to a person instead of erroring.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from jobs.core.errors import CairnError


class SandboxRefused(CairnError):
    """A sandbox guard refused the build before it ran; a person decides what to do."""

    def audit_data(self) -> dict[str, Any]:
        return {}


class Sandbox(Protocol):
    clone_id: str
    profiles_dir: Path
    target: str
    target_path: Path
    notes: str  # what the evidence must add (e.g. a clone that holds the current state, not the point asked)

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
    name: str  # 'duckdb', 'bigquery'
    checks_deploys: bool  # whether deploy checks (jobs.detect.deploy_check) build here

    def sandbox(self, label: str, project_dir: Path, profile: str,
                production: Mapping[str, Any]) -> AbstractContextManager[Sandbox]: ...

    def gc(self, older_than: timedelta, now: datetime) -> list[str]: ...
