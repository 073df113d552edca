"""An incident-scoped BigQuery sandbox: one labelled, expiring dataset holding zero-copy clones.

Production stays read-only in three layers (docs/bigquery.md):
(a) every statement Cairn sends passes `statement_guard.check` with this dataset as the only target;
(b) before a dbt build, `check_relations` proves every relation the selected nodes would write
    lies in this dataset (`redirect_macros` puts them there when the project lets it);
(c) IAM: Cairn's credentials can write the sandbox project only (`cairn doctor` checks).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import yaml

from jobs.core.errors import DbtError, WarehouseError
from jobs.project.isolation import Isolation, resolve
from jobs.warehouse import identifier
from jobs.warehouse.bigquery import ADC, ANONYMOUS, BigQueryWarehouse, api_reason
from jobs.warehouse.request_guard import guarded
from jobs.warehouse.sandboxes import SandboxRefused
from jobs.warehouse.statement_guard import Dataset

log = logging.getLogger(__name__)

PREFIX = "cairn_sbx_"
TARGET = "cairn_sandbox"
LABEL_INCIDENT, LABEL_ORG = "cairn-incident", "cairn-org"
MACROS_FILE = "_cairn_sandbox.sql"
# A snapshot this close to the edge of the time-travel window may expire before the clone runs.
TIME_TRAVEL_MARGIN = timedelta(hours=1)
STATEFUL = ("incremental", "snapshot")  # materializations whose build reads their own last state


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


class BigQuerySandbox:
    """The dataset `cairn_sbx_<incident>_<short>` in the sandbox project; dropped on exit."""

    def __init__(self, client: Any, dataset: Dataset, incident_id: int, location: str, labels: dict[str, str]):
        self.client, self.dataset, self.incident_id, self.location = client, dataset, incident_id, location
        self.labels = labels
        self.clones: list[Clone] = []
        self.target = TARGET

    @classmethod
    def create(cls, client: Any, *, incident_id: int | str, location: str, org: str,
               expiration: timedelta) -> "BigQuerySandbox":
        """datasets.insert in `client.project` at `location`, labelled and expiring."""
        from google.api_core.exceptions import GoogleAPIError
        from google.cloud import bigquery

        # Dataset IDs take letters, digits and underscores: a deploy check's label has a hyphen.
        dataset = Dataset(client.project, f"{PREFIX}{str(incident_id).replace('-', '_')}_{uuid.uuid4().hex[:6]}")
        labels = {LABEL_INCIDENT: str(incident_id), LABEL_ORG: org}
        resource = bigquery.Dataset(f"{dataset.project}.{dataset.dataset}")
        resource.location = location
        resource.labels = labels
        resource.default_table_expiration_ms = int(expiration.total_seconds() * 1000)
        resource.description = f"Cairn sandbox for incident {incident_id}; dropped when verification ends."
        try:
            client.create_dataset(resource)
        except GoogleAPIError as error:
            raise WarehouseError(f"cannot create sandbox dataset {dataset} in {location}: {api_reason(error)}. "
                                 "Cairn needs bigquery.datasets.create on the sandbox project.") from None
        log.info("sandbox %s created for incident %s", dataset, incident_id)
        return cls(client, dataset, incident_id, location, labels)

    @property
    def snapshot(self) -> datetime | None:
        """The point in time the clones hold (the earliest, when they differ)."""
        times = [c.snapshot for c in self.clones if c.snapshot is not None]
        return min(times) if times else None

    @property
    def clone_id(self) -> str:
        """What the evidence records: the dataset, and the snapshot time its clones hold."""
        at = self.snapshot
        state = at.astimezone(timezone.utc).isoformat() if at else ("current" if self.clones else "none")
        return f"bigquery:{self.dataset}@{state}"

    def warehouse(self, maximum_bytes_billed: int | None) -> BigQueryWarehouse:
        """A connection that may write only this dataset; its jobs carry the incident's labels."""
        return BigQueryWarehouse(self.client, maximum_bytes_billed=maximum_bytes_billed,
                                 sandbox=self.dataset, labels=self.labels)

    def clone(self, warehouse: BigQueryWarehouse, sources: Iterable[tuple[str, str, str]], *,
              at: datetime | None, now: datetime, time_travel: timedelta) -> list[Clone]:
        """`CREATE TABLE sandbox.t CLONE source FOR SYSTEM_TIME AS OF at` for each source.

        Outside the time-travel window (or with `at` None) the current state is cloned, and the
        clone's note says so: the evidence must not claim a point in time it does not hold.
        """
        made = []
        for project, dataset, table in sources:
            snapshot, note = _snapshot(at, now, time_travel)
            source = f"`{project}.{dataset}.{table}`"
            target = f"`{self.dataset.project}.{self.dataset.dataset}.{table}`"
            statement = f"CREATE TABLE {target} CLONE {source}"
            if snapshot is not None:
                statement += f" FOR SYSTEM_TIME AS OF TIMESTAMP '{_timestamp(snapshot)}'"
            warehouse.execute(statement)
            made.append(Clone(f"{project}.{dataset}.{table}", f"{self.dataset}.{table}", snapshot,
                              statement, note))
        self.clones += made
        return made

    def write_profile(self, directory: Path, profile: str, *, production_project: str, credentials: str,
                      maximum_bytes_billed: int, api_endpoint: str | None = None, threads: int = 4) -> Path:
        """profiles.yml with one target: the sandbox dataset, jobs in the sandbox project.

        The target's `project` stays production's, so sources and unredirected names resolve
        exactly as in production; `redirect_macros` and `check_relations` place every write here.
        """
        output: dict[str, Any] = {
            "type": "bigquery", "project": production_project, "execution_project": self.dataset.project,
            "dataset": self.dataset.dataset, "location": self.location, "threads": threads,
            "maximum_bytes_billed": maximum_bytes_billed, "priority": "interactive", "job_retries": 1,
            "job_execution_timeout_seconds": 3600,
        }
        output.update(_auth(credentials))
        if api_endpoint:
            output["api_endpoint"] = api_endpoint
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "profiles.yml"
        path.write_text(yaml.safe_dump({profile: {"target": TARGET, "outputs": {TARGET: output}}}, sort_keys=False))
        os.chmod(path, 0o600)
        return path

    def remove(self) -> None:
        """datasets.delete with deleteContents: the clones and everything dbt built go with it."""
        from google.api_core.exceptions import GoogleAPIError

        try:
            self.client.delete_dataset(f"{self.dataset.project}.{self.dataset.dataset}",
                                       delete_contents=True, not_found_ok=True)
        except GoogleAPIError as error:  # `cairn sandbox gc` removes it once it expires
            log.error("sandbox %s was not dropped (%s); `cairn sandbox gc` removes it after expiry",
                      self.dataset, api_reason(error))

    def __enter__(self) -> "BigQuerySandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


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
            f"return target.schema and target.database when target.name == '{TARGET}' (docs/bigquery.md).")
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


def gc_sandboxes(client: Any, *, org: str, now: datetime, dry_run: bool = False) -> list[str]:
    """Drop this org's sandbox datasets whose default table expiration has passed since creation."""
    from google.api_core.exceptions import GoogleAPIError

    removed = []
    try:
        listed = list(client.list_datasets(filter=f"labels.{LABEL_ORG}:{org}"))
    except GoogleAPIError as error:
        raise WarehouseError(f"cannot list datasets in {client.project}: {api_reason(error)}") from None
    for item in listed:
        if not item.dataset_id.startswith(PREFIX) or (item.labels or {}).get(LABEL_ORG) != org:
            continue
        name = f"{item.project}.{item.dataset_id}"
        try:
            dataset = client.get_dataset(item.reference)
            expiration = timedelta(milliseconds=dataset.default_table_expiration_ms or 0)
            if dataset.created is None or dataset.created + expiration > now:
                continue
            if not dry_run:
                client.delete_dataset(item.reference, delete_contents=True, not_found_ok=True)
        except GoogleAPIError as error:
            raise WarehouseError(f"cannot drop expired sandbox {name}: {api_reason(error)}") from None
        removed.append(name)
    return removed


def _snapshot(at: datetime | None, now: datetime, time_travel: timedelta) -> tuple[datetime | None, str]:
    if at is None:
        return None, "cloned at its current state"
    at = min(at, now)
    if now - at > time_travel - TIME_TRAVEL_MARGIN:
        return None, (f"{at.isoformat()} is outside the {time_travel.days}-day time-travel window: "
                      "cloned at its current state instead")
    return at, ""


def _timestamp(at: datetime) -> str:
    return at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f+00")


def _auth(credentials: str) -> dict[str, Any]:
    """dbt-bigquery's auth keys for Cairn's credentials setting (a key file by path, never inline)."""
    if credentials == ADC:
        return {"method": "oauth"}
    if credentials == ANONYMOUS:  # a local test server: any bearer token will do
        return {"method": "oauth-secrets", "token": "anonymous"}
    return {"method": "service-account", "keyfile": str(Path(credentials).expanduser())}


class BigQuerySandboxes:
    """The BigQuery adapter of `jobs.warehouse.sandboxes`: a dataset of zero-copy clones per build.

    `snapshot_at` is the production state the clones hold (an incident's last good time, so an
    incremental model rebuilds what the bad code wrote); `now` decides whether it is still inside
    the time-travel window.
    """

    name = "bigquery"
    checks_deploys = False  # a build per deploy is not under the byte budget's admission check yet

    protected: tuple[Path, ...] = ()  # production is remote: IAM and the guards keep it read-only

    def __init__(self, client: Any, settings: Any, *, root: Path, now: datetime,
                 snapshot_at: datetime | None = None, config_root: Path | None = None,
                 isolation: Isolation | None = None):
        self.client, self.settings, self.root = client, settings, Path(root)
        self.now, self.snapshot_at, self.config_root = now, snapshot_at, config_root
        self.isolation = isolation or resolve()

    @contextmanager
    def sandbox(self, label: str, project_dir: Path, profile: str,
                production: Mapping[str, Any]) -> Iterator["BigQueryBuild"]:
        from jobs.warehouse.bigquery import credentials_setting

        settings = self.settings
        self.root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"incident-{label}-", dir=self.root))
        try:
            with BigQuerySandbox.create(self.client, incident_id=label, location=settings.location,
                                        org=settings.org, expiration=settings.sandbox_expiration) as sandbox:
                sandbox.write_profile(work, profile, production_project=settings.project,
                                      credentials=credentials_setting(settings, self.config_root),
                                      maximum_bytes_billed=settings.budget_bytes, api_endpoint=settings.api_endpoint)
                yield BigQueryBuild(sandbox, work, project_dir, settings, self.snapshot_at, self.now)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def gc(self, older_than: timedelta, now: datetime) -> list[str]:
        # Datasets expire on their own clock (sandbox_expiration); `older_than` is the local files'.
        return gc_sandboxes(self.client, org=self.settings.org, now=now)


class BigQueryBuild:
    """One verification's sandbox on BigQuery, as the sandbox protocol sees it."""

    network = True  # dbt-bigquery calls the BigQuery API

    def __init__(self, sandbox: BigQuerySandbox, work: Path, project_dir: Path, settings: Any,
                 snapshot_at: datetime | None, now: datetime):
        self.sandbox, self.project_dir, self.settings = sandbox, project_dir, settings
        self.snapshot_at, self.now = snapshot_at, now
        self.profiles_dir, self.target, self.target_path = work, sandbox.target, work / "target"
        self.connection = sandbox.warehouse(settings.budget_bytes)
        self.estimated = 0

    @property
    def clone_id(self) -> str:
        return self.sandbox.clone_id

    @property
    def guard(self) -> str:
        return str(self.sandbox.dataset)  # layer (a) inside the child that runs dbt

    @property
    def notes(self) -> str:
        return "".join(f" {c.target}: {c.note}." for c in self.sandbox.clones if c.note)

    def plan(self, dbt: Any) -> Mapping[str, Any]:
        """Parse with every write redirected into the dataset (Cairn's macros, unless the project has its own)."""
        if redirect_macros(self.project_dir, dbt.parse(), self.sandbox.dataset):
            dbt.parse()  # again, with Cairn's schema/database macros in place
        return dbt.manifest()

    def prepare(self, production: Mapping[str, Any], expected: set[str]) -> None:
        check_relations(dbt_manifest(self.target_path), expected, self.sandbox.dataset)  # layer (b)
        self.sandbox.clone(self.connection, stateful_sources(production, expected, self.settings.project),
                           at=self.snapshot_at, now=self.now, time_travel=self.settings.time_travel)

    def admit(self, dbt: Any, select: str, extra: tuple[str, ...], expected: set[str]) -> None:
        """The dry run of every node the build runs, summed against bigquery.budget_bytes."""
        from jobs.warehouse.cost_guard import check_budget, estimate

        with guarded(self.sandbox.dataset):
            try:
                result = dbt.invoke("compile", select=select, extra=(*extra, "--log-level", "none"))
                compiled = dbt.manifest() if result.success else None
            except DbtError:
                compiled = None
        if compiled is None:
            raise DbtError("dbt compile failed in the sandbox; see its log")
        guess = estimate(self.connection.dry_run, compiled, expected)
        self.estimated = guess.total
        check_budget(guess, self.settings.budget_bytes, self.clone_id)

    def guarded(self) -> AbstractContextManager[None]:
        return guarded(self.sandbox.dataset)  # dbt's own requests: layer (a) for hooks and macros too

    def after_build(self) -> None:
        return None  # layers (a) and (b) refused any write outside the dataset before it was sent

    @contextmanager
    def warehouse(self) -> Iterator[BigQueryWarehouse]:
        yield self.connection  # closed with the sandbox: its spend is the verification's

    def deltas(self, manifest: Mapping[str, Any], production: Mapping[str, Any], models: Sequence[str]) -> list:
        from jobs.warehouse.row_deltas import relation_deltas

        return relation_deltas(self.connection, manifest, production, models)

    def spend(self) -> dict[str, Any]:
        from jobs.warehouse.cost_guard import billed_by_dbt

        clones = tuple({"source": c.source, "target": c.target, "statement": c.statement,
                        "snapshot": c.snapshot.isoformat() if c.snapshot else None,
                        **({"note": c.note} if c.note else {})} for c in self.sandbox.clones)
        return {"estimated_bytes": self.estimated, "clones": clones,
                "billed_bytes": billed_by_dbt(self.target_path) + self.connection.spend.billed}


def dbt_manifest(target_path: Path) -> dict[str, Any]:
    import json

    return json.loads((Path(target_path) / "manifest.json").read_text())
