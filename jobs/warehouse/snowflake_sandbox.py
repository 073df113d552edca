"""An incident-scoped Snowflake sandbox: one transient schema holding zero-copy clones.

Production stays read-only in three layers (docs/snowflake.md):
(a) every statement Cairn sends, and every statement dbt sends during a sandbox build, passes
    `snowflake_guard.check` with this schema as the only target;
(b) before a dbt build, `check_relations` proves every relation the selected nodes would write
    lies in this schema (`redirect_macros` puts them there when the project lets it);
(c) grants: Cairn's role can write the sandbox database only (`cairn doctor` checks).

The schema's name carries its creation time on Cairn's clock (`CAIRN_SBX_<yyyymmddhhmm>_…`), so
`cairn sandbox gc` finds what a crashed worker left by name alone.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from jobs.core.errors import WarehouseError
from jobs.project.isolation import Isolation, resolve
from jobs.warehouse.clone_build import (
    TARGET,
    Clone,
    CloneBuild,
    ClonedSandbox,
    snapshot_point,
    work_directory,
    write_profiles_yml,
)
from jobs.warehouse.snowflake import SnowflakeWarehouse, connect, private_key_path
from jobs.warehouse.snowflake_guard import check
from jobs.warehouse.statement_guard import Dataset

log = logging.getLogger(__name__)

PREFIX = "CAIRN_SBX_"
STAMP = "%Y%m%d%H%M"
_NAME = re.compile(rf"^{PREFIX}(\d{{12}})_", re.I)
_lock = threading.Lock()


def query_tag(org: str, purpose: str, **fields: str) -> str:
    """The QUERY_TAG of Cairn's sessions: JSON naming the org, the purpose and the incident."""
    return json.dumps({"app": "cairn", "org": org, "purpose": purpose, **fields}, separators=(",", ":"))


class SnowflakeSandbox(ClonedSandbox):
    """The schema `<sandbox_database>.CAIRN_SBX_<stamp>_<label>_<short>`; dropped on exit."""

    kind = "snowflake"

    def __init__(self, warehouse: SnowflakeWarehouse, schema: Dataset, label: str):
        self.connection, self.dataset, self.label = warehouse, schema, label
        self.clones: list[Clone] = []
        self.target = TARGET

    @classmethod
    def create(cls, warehouse: SnowflakeWarehouse, *, database: str, label: str, org: str,
               now: datetime) -> "SnowflakeSandbox":
        """CREATE TRANSIENT SCHEMA: no fail-safe or time travel to pay for on what dbt builds there."""
        safe = re.sub(r"\W", "_", label)  # a deploy check's label has a hyphen
        name = f"{PREFIX}{now.astimezone(timezone.utc):{STAMP}}_{safe}_{uuid.uuid4().hex[:6]}"
        schema = Dataset(database.upper(), name.upper())
        sandbox = cls(warehouse, schema, label)
        warehouse.sandbox = schema
        comment = f"Cairn sandbox (org {org}) for {label}; dropped when verification ends, or by cairn sandbox gc."
        try:
            warehouse.execute(f"CREATE TRANSIENT SCHEMA {schema} DATA_RETENTION_TIME_IN_DAYS = 0 "
                              f"COMMENT = '{comment}'")
        except WarehouseError as error:
            raise WarehouseError(f"cannot create sandbox schema {schema}: {error}. Cairn's role needs CREATE "
                                 f"SCHEMA on database {schema.project}.") from None
        log.info("sandbox %s created for %s", schema, label)
        return sandbox

    def clone(self, sources: Iterable[tuple[str, str, str]], *, at: datetime | None, now: datetime,
              time_travel: timedelta) -> list[Clone]:
        """`CREATE TABLE sandbox.t CLONE source AT(TIMESTAMP => at)` for each source, table by table.

        Outside the time-travel window (or with `at` None, or where Snowflake holds no history that
        far back for the table) the current state is cloned, and the clone's note says so.
        """
        made = []
        for database, schema, table in sources:
            snapshot, note = snapshot_point(at, now, time_travel)
            source, target = f"{database}.{schema}.{table}", f"{self.dataset}.{table}"
            statement = f"CREATE TABLE {target} CLONE {source}"
            if snapshot is not None:
                travel = f"{statement} AT(TIMESTAMP => '{_timestamp(snapshot)}'::TIMESTAMP_TZ)"
                try:
                    self.connection.execute(travel)
                    made.append(Clone(source, target, snapshot, travel))
                    continue
                except WarehouseError as error:
                    if "time travel" not in str(error).lower():
                        raise
                    snapshot, note = None, (f"Snowflake holds no time travel for it at {at.isoformat()} "
                                            f"({error}): cloned at its current state instead")
            self.connection.execute(statement)
            made.append(Clone(source, target, None, statement, note))
        self.clones += made
        return made

    def write_profile(self, directory: Path, profile: str, settings: Any, *, tag: str,
                      key_path: Path | None, threads: int = 4) -> Path:
        """profiles.yml with one target: the sandbox schema, the warehouse and role Cairn's config names.

        The target's `database` stays production's, so sources and unredirected names resolve
        exactly as in production; `redirect_macros` and `check_relations` place every write here.
        Secrets stay out of the file: dbt reads them from the environment Cairn was started with.
        """
        output: dict[str, Any] = {
            "type": "snowflake", "account": settings.account, "user": settings.user, "role": settings.role,
            "warehouse": settings.warehouse, "database": settings.database, "schema": self.dataset.dataset,
            "threads": threads, "query_tag": tag, "client_session_keep_alive": False, "connect_retries": 1,
            "connect_timeout": 60, "protocol": settings.protocol,
        }
        if key_path is not None:
            output["private_key_path"] = str(key_path)
            output["private_key_passphrase"] = "{{ env_var('SNOWFLAKE_PRIVATE_KEY_PASSPHRASE', '') }}"
        else:
            output["password"] = "{{ env_var('SNOWFLAKE_PASSWORD') }}"
        if settings.host:
            output.update(host=settings.host, port=settings.port or 443)
        return write_profiles_yml(directory, profile, output)

    def remove(self) -> None:
        """DROP SCHEMA … CASCADE: the clones and everything dbt built go with it."""
        try:
            self.connection.execute(f"DROP SCHEMA IF EXISTS {self.dataset} CASCADE")
        except WarehouseError as error:  # `cairn sandbox gc` removes it after the retention
            log.error("sandbox %s was not dropped (%s); `cairn sandbox gc` removes it later", self.dataset, error)

    def __enter__(self) -> "SnowflakeSandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def created_at(schema: str) -> datetime | None:
    """When Cairn made a sandbox schema, from its name; None for any other schema."""
    match = _NAME.match(schema)
    if match is None:
        return None
    return datetime.strptime(match.group(1), STAMP).replace(tzinfo=timezone.utc)


def gc_sandboxes(warehouse: SnowflakeWarehouse, *, database: str, older_than: timedelta, now: datetime,
                 dry_run: bool = False) -> list[str]:
    """Drop the sandbox schemas in `database` created at least `older_than` before `now`."""
    database = database.upper()
    listed = warehouse.query(f"SHOW SCHEMAS LIKE '{PREFIX}%' IN DATABASE {database}")
    removed = []
    for row in listed:
        name = str(row.get("name") or "")
        made = created_at(name)
        if made is None or made + older_than > now:
            continue
        schema = Dataset(database, name)
        if not dry_run:
            warehouse.sandbox = schema
            warehouse.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        removed.append(str(schema))
    warehouse.sandbox = None
    return removed


@contextmanager
def guarded(sandbox: Dataset, timeout_seconds: int) -> Iterator[None]:
    """Check every statement any Snowflake cursor in this process sends, and give every session
    opened meanwhile the statement timeout, until the block ends (dbt makes its own connections)."""
    from snowflake.connector.connection import SnowflakeConnection
    from snowflake.connector.cursor import SnowflakeCursor

    with _lock:  # dbt runs one invocation per process at a time; so do sandbox builds
        execute, init = SnowflakeCursor.execute, SnowflakeConnection.__init__

        def checked(self, command, *args, **kwargs):
            check(command, sandbox=sandbox)
            return execute(self, command, *args, **kwargs)

        def timed(self, *args, **kwargs):
            kwargs["session_parameters"] = {**(kwargs.get("session_parameters") or {}),
                                            "STATEMENT_TIMEOUT_IN_SECONDS": int(timeout_seconds)}
            init(self, *args, **kwargs)

        SnowflakeCursor.execute, SnowflakeConnection.__init__ = checked, timed
        try:
            yield
        finally:
            SnowflakeCursor.execute, SnowflakeConnection.__init__ = execute, init


def _timestamp(at: datetime) -> str:
    return at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f +00:00")


class SnowflakeSandboxes:
    """The Snowflake adapter of `jobs.warehouse.sandboxes`: a schema of zero-copy clones per build.

    `snapshot_at` is the production state the clones hold (an incident's last good time, so an
    incremental model rebuilds what the bad code wrote); `now` decides whether it is still inside
    the time-travel window and stamps the schema's name.
    """

    name = "snowflake"
    network = True  # its builds call Snowflake
    checks_deploys = False  # a build per deploy is not under the warehouse-time budget's admission yet
    protected: tuple[Path, ...] = ()  # production is remote: the statement guard and grants keep it read-only
    # The generated profile reads these through env_var(): the child that runs dbt gets them, nothing else of Cairn's.
    PROFILE_ENVIRONMENT = ("SNOWFLAKE_PASSWORD", "SNOWFLAKE_PRIVATE_KEY_PASSPHRASE")

    def __init__(self, settings: Any, *, password: str | None, passphrase: str | None = None, root: Path,
                 now: datetime, snapshot_at: datetime | None = None, config_root: Path | None = None,
                 isolation: Isolation | None = None):
        self.settings, self.password, self.passphrase = settings, password, passphrase
        self.root, self.now, self.snapshot_at, self.config_root = Path(root), now, snapshot_at, config_root
        isolation = isolation or resolve()
        self.isolation = replace(isolation, environment=(*isolation.environment, *self.PROFILE_ENVIRONMENT))

    def connection(self, tag: str) -> SnowflakeWarehouse:
        """A Cairn session (guarded: reads anywhere, writes nowhere until it is given a sandbox)."""
        return SnowflakeWarehouse(connect(self.settings, password=self.password, passphrase=self.passphrase,
                                          query_tag=tag, root=self.config_root),
                                  database=self.settings.database)

    @contextmanager
    def sandbox(self, label: str, project_dir: Path, profile: str,
                production: Mapping[str, Any]) -> Iterator["SnowflakeBuild"]:
        settings = self.settings
        with work_directory(self.root, label) as work, \
                self.connection(query_tag(settings.org, "verify", incident=label)) as warehouse, \
                SnowflakeSandbox.create(warehouse, database=settings.sandbox_database_name, label=label,
                                        org=settings.org, now=self.now) as sandbox:
            tag = query_tag(settings.org, "verify", incident=label, sandbox=sandbox.dataset.dataset)
            sandbox.write_profile(work, profile, settings, tag=tag,
                                  key_path=private_key_path(settings, self.config_root))
            yield SnowflakeBuild(sandbox, work, project_dir, settings, self.snapshot_at, self.now)

    def gc(self, older_than: timedelta, now: datetime) -> list[str]:
        # Schemas age by snowflake.sandbox_retention; `older_than` is the local files'.
        with self.connection(query_tag(self.settings.org, "gc")) as warehouse:
            return gc_sandboxes(warehouse, database=self.settings.sandbox_database_name,
                                older_than=self.settings.sandbox_retention, now=now)


class SnowflakeBuild(CloneBuild):
    """One verification's sandbox on Snowflake, as the sandbox protocol sees it."""

    network = True  # dbt-snowflake calls Snowflake

    def __init__(self, sandbox: SnowflakeSandbox, work: Path, project_dir: Path, settings: Any,
                 snapshot_at: datetime | None, now: datetime):
        super().__init__(sandbox, work, project_dir, settings, snapshot_at, now)
        self.connection = sandbox.connection
        self.estimated: int | None = None

    @property
    def production_database(self) -> str:
        return self.settings.database

    def clone(self, sources: list[tuple[str, str, str]]) -> None:
        self.sandbox.clone(sources, at=self.snapshot_at, now=self.now, time_travel=self.settings.time_travel)

    def scan(self, sql: str) -> int:
        return self.connection.explain(sql)  # bytes the plan assigns to scan

    def check_budget(self, estimate: Any) -> None:
        """The scan in warehouse-seconds against snowflake.budget_seconds."""
        from jobs.warehouse.snowflake_cost import check_budget

        check_budget(estimate, self.settings.budget_seconds, self.settings.scan_bytes_per_second, self.clone_id)

    @property
    def guard(self) -> str:
        """Layer (a) for dbt's statements and the statement timeout, in the child that runs dbt."""
        return f"snowflake:{self.sandbox.dataset}:{int(self.settings.budget_seconds)}"

    def guarded(self) -> AbstractContextManager[None]:
        return guarded(self.sandbox.dataset, self.settings.budget_seconds)  # Cairn's own statements meanwhile

    def spend(self) -> dict[str, Any]:
        return {"estimated_bytes": self.estimated, "clones": self.clones()}
