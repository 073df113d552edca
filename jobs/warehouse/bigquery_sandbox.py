"""An incident-scoped BigQuery sandbox: one labelled, expiring dataset holding zero-copy clones.

Production stays read-only in three layers (docs/bigquery.md):
(a) every statement Cairn sends passes `statement_guard.check` with this dataset as the only target;
(b) before a dbt build, `check_relations` proves every relation the selected nodes would write
    lies in this dataset (`redirect_macros` puts them there when the project lets it);
(c) IAM: Cairn's credentials can write the sandbox project only (`cairn doctor` checks).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from jobs.core.errors import WarehouseError
from jobs.project.isolation import Isolation, resolve
from jobs.warehouse.bigquery import ADC, ANONYMOUS, BigQueryWarehouse, api_reason
from jobs.warehouse.clone_build import (
    TARGET,
    Clone,
    CloneBuild,
    ClonedSandbox,
    snapshot_point,
    work_directory,
    write_profiles_yml,
)
from jobs.warehouse.request_guard import guarded
from jobs.warehouse.statement_guard import Dataset

log = logging.getLogger(__name__)

PREFIX = "cairn_sbx_"
LABEL_INCIDENT, LABEL_ORG = "cairn-incident", "cairn-org"


class BigQuerySandbox(ClonedSandbox):
    """The dataset `cairn_sbx_<incident>_<short>` in the sandbox project; dropped on exit."""

    kind = "bigquery"

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
            snapshot, note = snapshot_point(at, now, time_travel)
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
        return write_profiles_yml(directory, profile, output)

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
    network = True  # its builds call the BigQuery API
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
        with work_directory(self.root, label) as work, \
                BigQuerySandbox.create(self.client, incident_id=label, location=settings.location,
                                       org=settings.org, expiration=settings.sandbox_expiration) as sandbox:
            sandbox.write_profile(work, profile, production_project=settings.project,
                                  credentials=credentials_setting(settings, self.config_root),
                                  maximum_bytes_billed=settings.budget_bytes, api_endpoint=settings.api_endpoint)
            yield BigQueryBuild(sandbox, work, project_dir, settings, self.snapshot_at, self.now)

    def gc(self, older_than: timedelta, now: datetime) -> list[str]:
        # Datasets expire on their own clock (sandbox_expiration); `older_than` is the local files'.
        return gc_sandboxes(self.client, org=self.settings.org, now=now)


class BigQueryBuild(CloneBuild):
    """One verification's sandbox on BigQuery, as the sandbox protocol sees it."""

    network = True  # dbt-bigquery calls the BigQuery API

    def __init__(self, sandbox: BigQuerySandbox, work: Path, project_dir: Path, settings: Any,
                 snapshot_at: datetime | None, now: datetime):
        super().__init__(sandbox, work, project_dir, settings, snapshot_at, now)
        self.connection = sandbox.warehouse(settings.budget_bytes)
        self.estimated = 0

    @property
    def production_database(self) -> str:
        return self.settings.project

    @property
    def guard(self) -> str:
        return f"bigquery:{self.sandbox.dataset}"  # layer (a) inside the child that runs dbt

    def clone(self, sources: list[tuple[str, str, str]]) -> None:
        self.sandbox.clone(self.connection, sources, at=self.snapshot_at, now=self.now,
                           time_travel=self.settings.time_travel)

    def scan(self, sql: str) -> int:
        return self.connection.dry_run(sql)  # bytes the dry run would process

    def check_budget(self, estimate: Any) -> None:
        from jobs.warehouse.cost_guard import check_budget

        check_budget(estimate, self.settings.budget_bytes, self.clone_id)  # against bigquery.budget_bytes

    def guarded(self) -> AbstractContextManager[None]:
        return guarded(self.sandbox.dataset)  # dbt's own requests: layer (a) for hooks and macros too

    def spend(self) -> dict[str, Any]:
        from jobs.warehouse.cost_guard import billed_by_dbt

        return {"estimated_bytes": self.estimated, "clones": self.clones(),
                "billed_bytes": billed_by_dbt(self.target_path) + self.connection.spend.billed}
