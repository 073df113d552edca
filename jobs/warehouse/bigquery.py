"""BigQuery as a warehouse, through google-cloud-bigquery: every statement passes the guard first."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.core.errors import ConfigError, WarehouseError
from jobs.warehouse import identifier, qualified_name
from jobs.warehouse.statement_guard import Dataset, check

log = logging.getLogger(__name__)

ADC, ANONYMOUS = "adc", "anonymous"
_REQUEST = re.compile(r"^[A-Z]+ https?://\S+: ")  # google-api-core prefixes the method and URL


def credentials_for(setting: str, source: str = "cairn.yml: bigquery.credentials") -> Any:
    """Google credentials for `adc`, `anonymous` (local test servers only) or a key file's path.

    Errors name the setting and the path, never the file's contents.
    """
    if setting == ANONYMOUS:
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials()
    if setting == ADC:
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError

        try:
            credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/bigquery"])
        except DefaultCredentialsError:
            raise ConfigError(
                f"{source}: 'adc' found no Application Default Credentials; run `gcloud auth "
                "application-default login`, set GOOGLE_APPLICATION_CREDENTIALS to a key file's "
                "path, or give the key file's path here.") from None
        return credentials
    from google.oauth2 import service_account

    path = Path(setting).expanduser()
    if not path.is_file():
        raise ConfigError(f"{source}: {str(path)!r} is not a file; give the path of a service-account "
                          "JSON key file, 'adc' or 'anonymous'.")
    try:
        return service_account.Credentials.from_service_account_file(
            str(path), scopes=["https://www.googleapis.com/auth/bigquery"])
    except (ValueError, KeyError, OSError):  # their messages may quote the key: never shown
        raise ConfigError(f"{source}: {str(path)!r} is not a service-account JSON key file "
                          "(type service_account, with client_email and private_key).") from None


def make_client(project: str, location: str, credentials: Any, api_endpoint: str | None = None):
    """A google.cloud.bigquery.Client whose jobs run (and bill) in `project` at `location`."""
    from google.api_core.client_options import ClientOptions
    from google.cloud import bigquery

    options = ClientOptions(api_endpoint=api_endpoint) if api_endpoint else None
    return bigquery.Client(project=project, credentials=credentials, location=location,
                           client_options=options)


def credentials_setting(settings: Any, root: Path | None = None) -> str:
    """`bigquery.credentials` with a relative key-file path resolved against cairn.yml's directory."""
    value = settings.credentials
    if value in (ADC, ANONYMOUS) or root is None or Path(value).expanduser().is_absolute():
        return value
    return str(root / value)


def client_for(settings: Any, root: Path | None = None):
    """The client Cairn uses for a BigQuery org (jobs bill the sandbox project); `settings` is cairn.yml's."""
    credentials = credentials_for(credentials_setting(settings, root))
    return make_client(settings.sandbox_project_id, settings.location, credentials, settings.api_endpoint)


@dataclass
class Spend:
    """Bytes BigQuery processed and billed for the queries one warehouse object sent."""

    processed: int = 0
    billed: int = 0
    jobs: int = 0


class BigQueryWarehouse:
    """A BigQuery connection that reads anywhere and writes only inside `sandbox` (if one is given)."""

    dialect = "bigquery"

    def __init__(self, client: Any, *, maximum_bytes_billed: int | None = None,
                 sandbox: Dataset | None = None, labels: dict[str, str] | None = None):
        self.client = client
        self.project: str = client.project
        self.location: str | None = client.location
        self.maximum_bytes_billed = maximum_bytes_billed
        self.sandbox = sandbox
        self.labels = dict(labels or {})
        self.spend = Spend()
        self._column_types: dict[str, dict[str, Any]] = {}

    def _config(self, dry_run: bool = False):
        from google.cloud import bigquery

        config = bigquery.QueryJobConfig(dry_run=dry_run, use_query_cache=not dry_run,
                                         use_legacy_sql=False, labels=self.labels)
        if self.maximum_bytes_billed and not dry_run:
            config.maximum_bytes_billed = self.maximum_bytes_billed
        return config

    def _job(self, sql: str, dry_run: bool = False):
        check(sql, default_project=self.project, sandbox=self.sandbox)  # raises before sending
        from google.api_core.exceptions import GoogleAPIError

        try:
            job = self.client.query(sql, job_config=self._config(dry_run), location=self.location,
                                    job_id_prefix="cairn_")
            rows = None if dry_run else job.result()
        except GoogleAPIError as error:
            raise WarehouseError(f"BigQuery refused the query: {api_reason(error)}") from None
        if not dry_run:
            self.spend.jobs += 1
            self.spend.processed += job.total_bytes_processed or 0
            self.spend.billed += job.total_bytes_billed or 0
        return job, rows

    def query(self, sql: str) -> list[dict[str, Any]]:
        """Run one statement (a write only inside the sandbox); rows as dicts keyed by column name."""
        _, rows = self._job(sql)
        return [dict(row.items()) for row in rows]

    def execute(self, sql: str) -> Any:
        """Run DDL/DML (the guard allows only the sandbox as its target); the finished job."""
        job, _ = self._job(sql)
        return job

    def dry_run(self, sql: str) -> int:
        """Bytes `sql` would process, from a dry run (free; nothing runs)."""
        job, _ = self._job(sql, dry_run=True)
        return int(job.total_bytes_processed or 0)

    def relation_name(self, node: dict[str, Any]) -> str:
        return qualified_name(node.get("database") or self.project, node["schema"], identifier(node),
                              self.dialect)

    def column_types(self, relation: str) -> dict[str, Any]:
        """The relation's top-level columns and their types, from tables.get (metadata: free)."""
        if relation not in self._column_types:
            from sqlglot import exp

            name = exp.to_table(relation, dialect=self.dialect)
            table = self.table(name.catalog or self.project, name.db, name.name)
            self._column_types[relation] = {
                f.name.lower(): exp.DataType.build(f.field_type, dialect=self.dialect) for f in table.schema
                if f.mode != "REPEATED" and f.field_type not in ("RECORD", "STRUCT")}
        return self._column_types[relation]

    def columns(self, relation: str) -> dict[str, str] | None:
        """The relation's top-level columns and their BigQuery types (tables.get: free); None if it is gone."""
        from google.api_core.exceptions import GoogleAPIError, NotFound
        from sqlglot import exp

        name = exp.to_table(relation, dialect=self.dialect)
        try:
            table = self.client.get_table(f"{name.catalog or self.project}.{name.db}.{name.name}")
        except NotFound:
            return None
        except GoogleAPIError as error:
            raise WarehouseError(f"BigQuery table {relation}: {api_reason(error)}") from None
        return {f.name.lower(): f.field_type for f in table.schema}

    def table(self, project: str, dataset: str, table: str) -> Any:
        """A table's metadata (tables.get): schema, type, size, clone definition."""
        from google.api_core.exceptions import GoogleAPIError

        try:
            return self.client.get_table(f"{project}.{dataset}.{table}")
        except GoogleAPIError as error:
            raise WarehouseError(f"BigQuery table {project}.{dataset}.{table}: {api_reason(error)}") from None

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "BigQueryWarehouse":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def api_reason(error: Exception) -> str:
    """BigQuery's own message (what was refused and why), without request URLs or headers."""
    message = getattr(error, "message", None) or str(error)
    return _REQUEST.sub("", message.splitlines()[0])
