"""An incident-scoped DuckDB sandbox: a copy of production that dbt may write and nothing else.

Three layers keep production safe, because a read-only ATTACH is no boundary (SQL in a model can
DETACH it and ATTACH the file read-write):

1. Production is never opened for writing: it is opened read-only (which also proves no writer
   holds it, and keeps one from starting) while Python copies the file, and its WAL if any.
2. The copy is opened by dbt with DuckDB locked down at connect time, through the profile's
   `config_options` (passed to `duckdb.connect(config=...)`): external access off, so any
   ATTACH, COPY TO, read_csv or INSTALL of a file path is refused, and the configuration locked,
   so no statement can loosen it. Not `settings:`: dbt-duckdb re-runs those as `SET` on every
   cursor, and the second cursor fails on the lock. `allowed_directories`/`allowed_paths` are
   not used: DuckDB refuses them before the database starts and once external access is off,
   and dbt's tables, views, incrementals and tests need no file access.
3. dbt runs in a child process (`jobs.project.isolation`) where the production file and its WAL are
   bound read-only (bubblewrap), and no secret of Cairn's is in its environment: a Python model,
   which runs Python inside dbt and is not bound by DuckDB's lockdown, cannot write them either.
4. Production is fingerprinted (size, mtime, sha256 of the file and its WAL) before the build and
   checked after it: a change raises ProductionModified.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import yaml

from jobs.core.errors import CairnError
from jobs.project.isolation import Isolation, resolve

log = logging.getLogger(__name__)

TARGET = "cairn_sandbox"
PREFIX = "incident-"
# Connect-time DuckDB configuration for every dbt connection to the copy (verified on duckdb 2.0).
LOCKDOWN: dict[str, Any] = {"enable_external_access": False, "lock_configuration": True}


class SandboxError(CairnError):
    """The sandbox could not be made; production is untouched."""


class ProductionModified(SandboxError):
    """Production's file changed while a sandbox build ran: treat the verification as failed."""

    def __init__(self, message: str, verification: Any = None):
        super().__init__(message)
        self.verification = verification  # the failed jobs.core.records.Verification, when one exists


@dataclass(frozen=True)
class Fingerprint:
    """What a DuckDB file and its write-ahead log look like on disk: (size, mtime_ns, sha256) each."""

    files: tuple[tuple[str, int, int, str], ...]

    @classmethod
    def of(cls, path: Path) -> "Fingerprint":
        files = []
        for file in (path, _wal(path)):
            if file.exists():
                stat = file.stat()
                with file.open("rb") as handle:
                    digest = hashlib.file_digest(handle, "sha256").hexdigest()
                files.append((file.name, stat.st_size, stat.st_mtime_ns, digest))
        return cls(tuple(files))


class DuckDBSandboxes:
    """The DuckDB adapter of `jobs.warehouse.sandboxes`: sandboxes are copies of the production file."""

    name = "duckdb"
    network = False  # its builds open a local file
    checks_deploys = True  # a copy costs a file copy and a scoped local build

    def __init__(self, production: Path, root: Path, isolation: Isolation | None = None):
        self.production, self.root = Path(production), Path(root)
        self.isolation = isolation or resolve()
        self.protected = (self.production, _wal(self.production))

    def sandbox(self, label: str, project_dir: Path, profile: str, production: Mapping[str, Any]) -> "Sandbox":
        _check_database(production, self.production)
        return Sandbox.create(self.production, self.root, label, profile=profile, schema=_target_schema(production))

    def gc(self, older_than: timedelta, now: datetime) -> list[str]:
        return []  # the copies live under the sandboxes root, which `gc_sandboxes` sweeps for every adapter


class Sandbox:
    """A copy of production in its own directory, with a generated dbt profile pointing at it."""

    notes = ""  # a copy holds production as it is: nothing to add to the evidence
    network = False  # dbt-duckdb opens a local file
    guard = None

    def __init__(self, directory: Path, path: Path, production: Path, fingerprint: Fingerprint):
        self.dir, self.path, self.production, self.fingerprint = directory, path, production, fingerprint
        self.clone_id = f"duckdb:{directory.name}"
        self.profiles_dir = directory
        self.target = TARGET
        self.target_path = directory / "target"

    # -- the sandbox protocol (jobs.warehouse.sandboxes) -------------------------------------------

    def plan(self, dbt: Any) -> None:
        return None  # every write lands in the copy: nothing to place before the build

    def prepare(self, production: Mapping[str, Any], expected: set[str]) -> None:
        return None

    def admit(self, dbt: Any, select: str, extra: tuple[str, ...], expected: set[str]) -> None:
        return None  # a local file costs nothing to build on

    def guarded(self) -> AbstractContextManager[None]:
        return nullcontext()  # the lockdown is in the profile (LOCKDOWN)

    def after_build(self) -> None:
        self.check_production()

    def warehouse(self) -> Any:
        from jobs.warehouse.duckdb import DuckDBWarehouse

        return DuckDBWarehouse(self.path)

    def deltas(self, manifest: Mapping[str, Any], production: Mapping[str, Any], models: Sequence[str]) -> list:
        from jobs.warehouse.row_deltas import clone_deltas

        return clone_deltas(self.path, self.production, manifest, models)

    def spend(self) -> dict[str, Any]:
        return {}

    @classmethod
    def create(cls, production: Path, root: Path, incident_id: int | str, profile: str,
               schema: str = "main", threads: int = 1) -> "Sandbox":
        """Copy `production` into `<root>/incident-<id>-<uuid6>/` under the same file name (`incident_id`
        may be a label instead: a deploy check's sandbox belongs to no incident)."""
        production = Path(production).resolve()
        if not production.is_file():
            raise SandboxError(f"{production}: no DuckDB file to copy; check the production path.")
        directory = Path(root).resolve() / f"{PREFIX}{incident_id}-{uuid.uuid4().hex[:6]}"
        directory.mkdir(parents=True)
        try:
            # The same file name keeps dbt-duckdb's database name (the stem), so deferred and
            # fully qualified references resolve inside the copy, not in production.
            path = directory / production.name
            fingerprint = _copy(production, path)
            _write_profile(directory, profile, path, schema, threads)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        log.info("sandbox %s: copied %s (%d bytes)", directory.name, production, path.stat().st_size)
        return cls(directory, path, production, fingerprint)

    def check_production(self) -> None:
        """Raise ProductionModified if production's bytes or metadata differ from when it was copied."""
        now = Fingerprint.of(self.production)
        if now != self.fingerprint:
            log.critical("production DuckDB file %s changed during sandbox %s: %s -> %s",
                         self.production, self.clone_id, self.fingerprint, now)
            raise ProductionModified(
                f"PRODUCTION CHANGED: {self.production} differs (size, mtime or sha256) from when "
                f"sandbox {self.clone_id} copied it. Either a production run wrote it meanwhile or "
                "the sandbox build escaped its lockdown: do not trust this verification, check the "
                "production warehouse and Cairn's sandbox settings before verifying again."
            )

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def gc_sandboxes(root: Path, older_than: timedelta, now: datetime) -> list[Path]:
    """Remove sandbox and worktree directories older than `older_than` at `now` (a crashed worker's).

    A removed worktree stays registered in the repository until `git worktree prune`. A clock
    pinned before the directories were made removes nothing: the safe direction.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    cutoff = (now - older_than).timestamp()
    removed = []
    from jobs.project.worktree import WORKTREE_PREFIX

    for entry in sorted([*root.glob(f"{PREFIX}*"), *root.glob(f"{WORKTREE_PREFIX}*")]):
        if entry.is_dir() and entry.stat().st_mtime < cutoff:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def remove_incident_sandboxes(root: Path, incident_id: int) -> list[Path]:
    """Remove the incident's sandboxes and worktrees: what a killed verification left behind.

    Called when a verification (re)starts; one verification runs per incident at a time (its RQ
    job ID is unique), so nothing removed here is in use.
    """
    return _remove_labelled(root, lambda label: label == str(incident_id))


def remove_orphan_sandboxes(root: Path, busy: set[int]) -> list[Path]:
    """Remove the sandboxes and worktrees of every incident not in `busy` (no live job works on it): what a
    dead worker left. A deploy check's (labelled, not numbered) are left to the age-based `gc_sandboxes`."""
    return _remove_labelled(root, lambda label: label.isdigit() and int(label) not in busy)


def _remove_labelled(root: Path, doomed: Callable[[str], bool]) -> list[Path]:
    """Remove the sandbox and worktree directories whose label (the incident ID) is `doomed`."""
    from jobs.project.worktree import WORKTREE_PREFIX

    root = Path(root)
    if not root.is_dir():
        return []
    removed = []
    for prefix in (PREFIX, WORKTREE_PREFIX):
        for entry in sorted(root.glob(f"{prefix}*")):
            if entry.is_dir() and doomed(entry.name.removeprefix(prefix).split("-", 1)[0]):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


def _target_schema(manifest: Mapping[str, Any]) -> str:
    """Production's target schema: that of a model with no custom schema (DuckDB's default: main)."""
    for node in manifest["nodes"].values():
        if node.get("resource_type") == "model" and not (node.get("config") or {}).get("schema"):
            return node["schema"]
    return "main"


def _check_database(manifest: Mapping[str, Any], prod_db: Path) -> None:
    """Deferred refs name production's database; the copy keeps the file's stem, so they must match."""
    databases = {n.get("database") for n in manifest["nodes"].values() if n.get("resource_type") == "model"}
    if databases - {prod_db.stem}:
        raise SandboxError(
            f"production models live in database(s) {sorted(map(str, databases))}, but a copy of "
            f"{prod_db.name} is {prod_db.stem!r}; point prod_db at the file the production "
            "profile builds into.")


def _wal(path: Path) -> Path:
    return path.with_name(path.name + ".wal")


def _copy(production: Path, destination: Path) -> Fingerprint:
    """Copy the file (and WAL) while a read-only connection keeps writers out; fingerprint it."""
    try:
        reader = duckdb.connect(str(production), read_only=True)
    except duckdb.Error as error:
        raise SandboxError(
            f"cannot open {production} read-only to copy it: {error}. If a production dbt run is "
            "writing it, verify again after that run finishes."
        ) from None
    try:
        fingerprint = Fingerprint.of(production)
        shutil.copyfile(production, destination)
        if _wal(production).exists():  # the copy replays it when dbt opens it read-write
            shutil.copyfile(_wal(production), _wal(destination))
    finally:
        reader.close()
    return fingerprint


def _write_profile(directory: Path, profile: str, path: Path, schema: str, threads: int) -> None:
    output = {"type": "duckdb", "path": str(path), "schema": schema, "threads": threads,
              "config_options": dict(LOCKDOWN)}
    document = {profile: {"target": TARGET, "outputs": {TARGET: output}}}
    (directory / "profiles.yml").write_text(yaml.safe_dump(document, sort_keys=False))
    os.chmod(directory / "profiles.yml", 0o600)
