"""The store's database: its tables, the engine that reaches them and the migrations that build them."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from jobs.core.errors import StoreError

MIGRATIONS = Path(__file__).parent / "migrations"


class UTCDateTime(sa.TypeDecorator):
    """A timestamp written as UTC and always read back tz-aware (SQLite drops the offset)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} given to the store; pass a tz-aware (UTC) one")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

observations = sa.Table(
    "observations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("contract_id", sa.String(200), nullable=False),
    sa.Column("observed_at", UTCDateTime, nullable=False),
    sa.Column("value", sa.Float, nullable=True),
    sa.Column("window_start", UTCDateTime, nullable=True),
    sa.Column("window_end", UTCDateTime, nullable=True),
    sa.Column("sha", sa.String(64), nullable=True),
    sa.Column("profile", sa.JSON, nullable=True),
    sa.Column("backfilled", sa.Boolean, nullable=False, default=False),
    sa.Column("anomalous", sa.Boolean, nullable=False, default=False),
    sa.Column("count", sa.BigInteger, nullable=True),  # rows in the window, or a rate's denominator
    sa.Column("expected", sa.Float, nullable=True),  # the band it was judged against, for the chart
    sa.Column("lower", sa.Float, nullable=True),
    sa.Column("upper", sa.Float, nullable=True),
    sa.Index(None, "contract_id", "window_start"),
    sa.Index(None, "contract_id", "observed_at"),
)

incidents = sa.Table(
    "incidents",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("contract_id", sa.String(200), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    # Mirrors status.is_open so the database itself can hold one open incident per contract.
    sa.Column("open", sa.Boolean, nullable=False),
    sa.Column("severity", sa.String(32), nullable=False),
    sa.Column("detected_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("resolved_at", UTCDateTime, nullable=True),
    sa.Column("first_bad_at", UTCDateTime, nullable=False),
    sa.Column("first_bad_sha", sa.String(64), nullable=True),
    sa.Column("last_good_at", UTCDateTime, nullable=True),
    sa.Column("last_good_sha", sa.String(64), nullable=True),
    sa.Column("first_bad_observation_id", sa.Integer, sa.ForeignKey("observations.id"), nullable=True),
    sa.Column("last_good_observation_id", sa.Integer, sa.ForeignKey("observations.id"), nullable=True),
    sa.Column("value", sa.Float, nullable=True),
    sa.Column("baseline", sa.JSON, nullable=True),
    sa.Column("change_pct", sa.Float, nullable=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("details", sa.JSON, nullable=False),
    # A later deploy that made an open incident worse opens one that follows it (jobs.detect.observe).
    sa.Column("follows_id", sa.Integer, sa.ForeignKey("incidents.id"), nullable=True),
    # Incidents one culprit caused on several contracts: the leader's ID, on the leader too.
    sa.Column("group_id", sa.Integer, nullable=True),
    sa.Index(None, "status"),
    sa.Index(None, "group_id"),
)
# Held by the database even when workers race: one open incident per contract that follows nothing,
# and at most one open incident following any incident (so the open ones form a single chain).
sa.Index(
    "uq_incidents_one_open_root_per_contract",
    incidents.c.contract_id,
    unique=True,
    sqlite_where=incidents.c.open & incidents.c.follows_id.is_(None),
    postgresql_where=incidents.c.open & incidents.c.follows_id.is_(None),
)
sa.Index(
    "uq_incidents_one_open_follower",
    incidents.c.follows_id,
    unique=True,
    sqlite_where=incidents.c.open & incidents.c.follows_id.is_not(None),
    postgresql_where=incidents.c.open & incidents.c.follows_id.is_not(None),
)

audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("incident_id", sa.Integer, sa.ForeignKey("incidents.id"), nullable=True),
    sa.Column("data", sa.JSON, nullable=False),
    # A retried job passes the same key, so its event is written once.
    sa.Column("dedup_key", sa.String(200), nullable=True),
    sa.UniqueConstraint("dedup_key"),
    sa.Index(None, "incident_id"),
)

rebaselines = sa.Table(
    "rebaselines",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("contract_id", sa.String(200), nullable=False),
    sa.Column("since", UTCDateTime, nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Index(None, "contract_id"),
)

org_state = sa.Table(
    "org_state",
    metadata,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("value", sa.JSON, nullable=True),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("updated_by", sa.String(200), nullable=False),
)


pull_requests = sa.Table(
    "pull_requests",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    # One PR per incident whatever retries happen: the database refuses a second.
    sa.Column("incident_id", sa.Integer, sa.ForeignKey("incidents.id"), nullable=False),
    sa.Column("forge", sa.String(32), nullable=False),  # "local" or "github"
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("branch", sa.String(255), nullable=False),
    sa.Column("base_branch", sa.String(255), nullable=False),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("labels", sa.JSON, nullable=False),
    sa.Column("reverted", sa.JSON, nullable=False),  # the SHAs the PR reverts, newest first
    sa.Column("state", sa.String(16), nullable=False),  # open, merged, closed
    sa.Column("head_sha", sa.String(64), nullable=False),
    sa.Column("url", sa.Text, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("merged_at", UTCDateTime, nullable=True),
    sa.Column("merged_by", sa.String(200), nullable=True),
    sa.Column("closed_reason", sa.Text, nullable=True),
    sa.UniqueConstraint("incident_id"),
    sa.UniqueConstraint("forge", "number"),
)

chat_messages = sa.Table(
    "chat_messages",
    metadata,
    # What Cairn posted about an incident (key "card", "chart" or a thread step), so a retried or
    # duplicated notify job updates the card in place instead of posting a second one.
    sa.Column("incident_id", sa.Integer, sa.ForeignKey("incidents.id"), primary_key=True),
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("channel", sa.String(64), nullable=True),
    sa.Column("ts", sa.String(64), nullable=True),  # None while a job holds the claim to post it
    sa.Column("claim", sa.String(64), nullable=True),
    sa.Column("claimed_at", UTCDateTime, nullable=False),
)


stage_leases = sa.Table(
    "stage_leases",
    metadata,
    # Which job is running an incident's stage right now: held while it runs, renewed by a heartbeat,
    # so a check can tell an incident whose worker died (an expired lease) from one still being worked.
    sa.Column("incident_id", sa.Integer, sa.ForeignKey("incidents.id"), primary_key=True),
    sa.Column("stage", sa.String(32), nullable=False),
    sa.Column("holder", sa.String(128), nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
)

# Production dbt runs (jobs.detect.ingest): one row per dbt invocation, so a re-ingested run is refused
# by the database itself, and one row per node result (a build's, or a source's freshness).
runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("invocation_id", sa.String(64), nullable=False),
    sa.Column("source", sa.String(16), nullable=False),  # "artifacts" or "dbt_cloud"
    sa.Column("cloud_run_id", sa.BigInteger, nullable=True),
    sa.Column("command", sa.String(32), nullable=True),
    sa.Column("dbt_version", sa.String(32), nullable=True),
    sa.Column("project", sa.String(200), nullable=True),
    sa.Column("generated_at", UTCDateTime, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=True),
    sa.Column("elapsed", sa.Float, nullable=True),
    sa.Column("sha", sa.String(64), nullable=True),
    sa.Column("sha_source", sa.String(64), nullable=True),
    sa.Column("ingested_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("invocation_id"),
    sa.Index(None, "generated_at"),
)

run_nodes = sa.Table(
    "run_nodes",
    metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("phase", sa.String(16), primary_key=True),  # "build" or "freshness"
    sa.Column("unique_id", sa.String(512), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),  # its place in the artifact: the order dbt ran it in
    sa.Column("resource_type", sa.String(32), nullable=True),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("message", sa.Text, nullable=True),
    sa.Column("failures", sa.BigInteger, nullable=True),
    sa.Column("execution_time", sa.Float, nullable=True),
    sa.Column("started_at", UTCDateTime, nullable=True),
    sa.Column("completed_at", UTCDateTime, nullable=True),
    sa.Column("relation_name", sa.Text, nullable=True),
    sa.Column("path", sa.Text, nullable=True),
    sa.Column("compiled_code", sa.Text, nullable=True),
    sa.Column("details", sa.JSON, nullable=False),
)


def alembic_config(connection: Connection | None = None, url: str | None = None):
    """The Alembic config for Cairn's migrations, built in code (no alembic.ini)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def create_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets WAL, foreign keys, a busy timeout and real transactions."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        # The cause may quote the raw URL, password included: drop it.
        raise StoreError(
            "the store URL is not a database URL; expected e.g. sqlite:///path/cairn.db "
            "or postgresql+psycopg://user:password@host/db"
        ) from None
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise StoreError(f"cannot use the store at {shown}: Cairn's store runs on SQLite or PostgreSQL")
    try:
        # pool_pre_ping: a pooled connection the server closed while it sat idle (a PostgreSQL restart during a
        # long dbt build) is replaced on checkout instead of failing the check (the fault suite's PostgreSQL test).
        engine = sa.create_engine(parsed, future=True, pool_pre_ping=parsed.get_backend_name() == "postgresql")
    except (NoSuchModuleError, ImportError) as exc:
        raise StoreError(f"cannot use the store at {shown}: {exc}; install its database driver") from None
    if engine.dialect.name == "sqlite":
        try:
            _prepare_sqlite(engine)
        except OSError as exc:
            raise StoreError(f"cannot create the directory of the store at {shown}: {exc}") from exc
    return engine


def _prepare_sqlite(engine: Engine) -> None:
    database = engine.url.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # Take transaction control away from pysqlite so BEGIN is ours (and DDL is transactional).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the lock up front, so a read-then-write never fails half-way on a busy snapshot.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("cairn_write") else "BEGIN")
