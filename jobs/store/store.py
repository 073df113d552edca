"""Cairn's durable store: observations, incidents, the audit log, rebaselines, org state, PRs and runs."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError

from jobs.core.clock import Clock
from jobs.core.errors import ContractError, NotFound, StoreError
from jobs.core.records import AuditEvent, BaselineStats, Incident, IncidentDetails, IncidentStatus, Observation
from jobs.store.chat import ChatMessageStore
from jobs.store.database import (
    alembic_config,
    audit_events,
    create_engine,
    incidents,
    observations,
    org_state,
    rebaselines,
)
from jobs.store.leases import LeaseStore
from jobs.store.prs import PullRequestStore
from jobs.store.runs import RunStore

_INCIDENT_FIELDS = {"status", "severity", "value", "baseline", "change_pct", "reason", "details", "resolved_at",
                    "group_id"}


# Pull requests, chat messages, stage leases and runs are mixins so this module stays one concept's size.
class Store(PullRequestStore, ChatMessageStore, LeaseStore, RunStore):
    """Every read and write Cairn makes to its own database; each method is one transaction."""

    def __init__(self, url: str, clock: Clock | None = None) -> None:
        self.engine = create_engine(url)
        self.clock = clock or Clock()  # every timestamp the store writes comes from it
        self.url = self.engine.url.render_as_string(hide_password=True)

    @classmethod
    def open(cls, url: str, migrate: bool = True, clock: Clock | None = None) -> Store:
        """A store ready to use: migrated to head, or checked to be at head when `migrate` is false."""
        store = cls(url, clock)
        if migrate:
            store.migrate()
        else:
            store.check()
        return store

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def close(self) -> None:
        self.engine.dispose()

    # -- schema -------------------------------------------------------------------------------

    def migrate(self) -> None:
        """Upgrade the schema to the latest migration; safe to run from several workers at once."""
        from alembic import command

        with self._transaction(write=True) as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('cairn.migrate'))"))
            command.upgrade(alembic_config(conn), "head")

    def check(self) -> None:
        """Raise StoreError unless the schema is at the latest migration."""
        from alembic.migration import MigrationContext
        from alembic.script import ScriptDirectory

        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        with self._transaction() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
        if current != head:
            raise StoreError(
                f"the store at {self.url} is at schema revision {current or 'none'}, Cairn needs {head}; "
                "migrate it with Store.open(url, migrate=True)"
            )

    # -- observations -------------------------------------------------------------------------

    def add_observation(self, obs: Observation) -> Observation:
        row = {f.name: getattr(obs, f.name) for f in dataclasses.fields(obs) if f.name != "id"}
        with self._transaction(write=True) as conn:
            new_id = conn.execute(observations.insert().values(row).returning(observations.c.id)).scalar_one()
        return dataclasses.replace(obs, id=new_id)

    def observations(
        self, contract_id: str, *, since: datetime | None = None, until: datetime | None = None
    ) -> list[Observation]:
        """A contract's observations in time order; `since` inclusive, `until` exclusive.

        An observation's time is its window start, or when it was observed if it has no window,
        so a backfilled observation sits where its window is, not where it was taken.
        """
        at = sa.func.coalesce(observations.c.window_start, observations.c.observed_at)
        query = observations.select().where(observations.c.contract_id == contract_id)
        if since is not None:
            query = query.where(at >= since)
        if until is not None:
            query = query.where(at < until)
        query = query.order_by(at, observations.c.observed_at, observations.c.id)
        with self._transaction() as conn:
            return [_observation(row) for row in conn.execute(query)]

    def observation(self, observation_id: int) -> Observation:
        with self._transaction() as conn:
            row = conn.execute(observations.select().where(observations.c.id == observation_id)).first()
        if row is None:
            raise NotFound(f"observation {observation_id} does not exist in the store")
        return _observation(row)

    def latest_observation(self, contract_id: str) -> Observation | None:
        """The last observation in the order of `observations()`."""
        at = sa.func.coalesce(observations.c.window_start, observations.c.observed_at)
        query = (
            observations.select()
            .where(observations.c.contract_id == contract_id)
            .order_by(at.desc(), observations.c.observed_at.desc(), observations.c.id.desc())
            .limit(1)
        )
        with self._transaction() as conn:
            row = conn.execute(query).first()
        return _observation(row) if row else None

    def previous_observation(self, contract_id: str, current: Observation) -> Observation | None:
        """The contract's observation taken just before `current` (any verdict, any window): the code
        deployed then is what this one's is compared with."""
        query = (observations.select()
                 .where(observations.c.contract_id == contract_id,
                        sa.or_(observations.c.observed_at < current.observed_at,
                               sa.and_(observations.c.observed_at == current.observed_at,
                                       observations.c.id < current.id)))
                 .order_by(observations.c.observed_at.desc(), observations.c.id.desc()).limit(1))
        with self._transaction() as conn:
            row = conn.execute(query).first()
        return _observation(row) if row is not None else None

    def mark_anomalous(self, observation_id: int, anomalous: bool = True) -> None:
        self._update_observation(observation_id, anomalous=anomalous)

    def record_judgement(self, observation_id: int, anomalous: bool, band: BaselineStats | None) -> Observation:
        """What detection made of an observation: anomalous or not, and the band it was judged against."""
        self._update_observation(observation_id, anomalous=anomalous, expected=band.expected if band else None,
                                 lower=_finite(band.lower) if band else None,
                                 upper=_finite(band.upper) if band else None)
        return self.observation(observation_id)

    def _update_observation(self, observation_id: int, **values: Any) -> None:
        query = observations.update().where(observations.c.id == observation_id).values(values)
        with self._transaction(write=True) as conn:
            if conn.execute(query).rowcount == 0:
                raise NotFound(f"observation {observation_id} does not exist in the store")

    # -- incidents ----------------------------------------------------------------------------

    def open_incident(
        self,
        contract_id: str,
        *,
        severity: str,
        first_bad: Observation,
        last_good: Observation | None,
        value: float | None,
        baseline: BaselineStats | None,
        change_pct: float | None,
        reason: str,
        status: IncidentStatus = IncidentStatus.detected,
        follows: Incident | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> Incident:
        """Open an incident for the contract, or one that `follows` an open one; if it is already open,
        return that one unchanged.

        The database holds at most one open incident per contract that follows nothing, and one open
        follower per incident, so two workers racing to open one both get the same incident. Compare
        `first_bad_observation_id` to tell which won.
        """
        now = self.clock.now()
        row = dict(
            contract_id=contract_id,
            status=IncidentStatus(status).value,
            open=IncidentStatus(status).is_open,
            severity=severity,
            detected_at=now,
            updated_at=now,
            first_bad_at=first_bad.observed_at,
            first_bad_sha=first_bad.sha,
            first_bad_observation_id=first_bad.id,
            last_good_at=last_good.observed_at if last_good else None,
            last_good_sha=last_good.sha if last_good else None,
            last_good_observation_id=last_good.id if last_good else None,
            value=value,
            baseline=dataclasses.asdict(baseline) if baseline else None,
            change_pct=change_pct,
            reason=reason,
            details=IncidentDetails().merged(details or {}).to_json(),
            follows_id=follows.id if follows else None,
        )
        return self._open(row, follows)

    def open_run_incident(self, contract_id: str, *, severity: str, failed_at: datetime, failed_sha: str | None,
                          green_at: datetime | None, green_sha: str | None, value: float | None, reason: str,
                          details: Mapping[str, Any]) -> Incident:
        """Open the incident of a node that failed in a production run (`jobs.detect.run_incidents`), between
        the node's last green run and the failed one; if one is open already, return it unchanged."""
        now = self.clock.now()
        row = dict(contract_id=contract_id, status=IncidentStatus.detected.value, open=True, severity=severity,
                   detected_at=now, updated_at=now, first_bad_at=failed_at, first_bad_sha=failed_sha,
                   last_good_at=green_at, last_good_sha=green_sha, value=value, reason=reason,
                   details=IncidentDetails().merged(details).to_json())
        return self._open(row, None)

    def _open(self, row: dict[str, Any], follows: Incident | None) -> Incident:
        contract_id = row["contract_id"]
        for _attempt in range(3):  # the open incident may close between our conflict and our read
            try:
                with self._transaction(write=True) as conn:
                    new_id = conn.execute(incidents.insert().values(row).returning(incidents.c.id)).scalar_one()
                return self.incident(new_id)
            except IntegrityError as exc:
                error = exc
                chain = self.open_incidents_for(contract_id)
                existing = next((i for i in chain if i.follows_id == (follows.id if follows else None)), None)
                if existing is not None:
                    return existing
        raise StoreError(f"could not open an incident for {contract_id}: {_reason(error)}") from error

    def open_incidents_for(self, contract_id: str) -> list[Incident]:
        """The contract's open incidents, oldest first: one that follows nothing, then each that follows the last."""
        query = (incidents.select().where(incidents.c.contract_id == contract_id, incidents.c.open.is_(True))
                 .order_by(incidents.c.id))
        with self._transaction() as conn:
            found = [_incident(row) for row in conn.execute(query)]
        chain = [i for i in found if i.follows_id is None or i.follows_id not in {f.id for f in found}]
        while chain and (after := next((i for i in found if i.follows_id == chain[-1].id), None)):
            chain.append(after)
        return chain

    def open_incident_for(self, contract_id: str) -> Incident | None:
        """The contract's latest open incident (the end of its chain), if it has one."""
        chain = self.open_incidents_for(contract_id)
        return chain[-1] if chain else None

    def update_incident(self, incident_id: int, **fields: Any) -> Incident:
        """Change an incident's fields; `details` (parts of `IncidentDetails`, typed or as JSON) is merged
        part by part into the existing details (a part given None is removed).

        Moving to a closed status sets `resolved_at` to now, to an open one clears it, unless it is given.
        """
        unknown = set(fields) - _INCIDENT_FIELDS
        if unknown:
            raise TypeError(f"update_incident() cannot change {', '.join(sorted(unknown))}")
        values = dict(fields, updated_at=self.clock.now())
        if "status" in fields:
            status = IncidentStatus(fields["status"])
            values.update(status=status.value, open=status.is_open)
            values.setdefault("resolved_at", None if status.is_open else values["updated_at"])
        if fields.get("baseline") is not None:
            values["baseline"] = dataclasses.asdict(fields["baseline"])
        query = incidents.select().where(incidents.c.id == incident_id).with_for_update()
        try:
            with self._transaction(write=True) as conn:
                row = conn.execute(query).first()
                if row is None:
                    raise NotFound(f"incident {incident_id} does not exist in the store")
                if "details" in fields:
                    current = IncidentDetails.model_validate(row.details or {})
                    values["details"] = current.merged(fields["details"] or {}).to_json()
                conn.execute(incidents.update().where(incidents.c.id == incident_id).values(values))
        except IntegrityError as exc:
            raise StoreError(
                f"cannot reopen incident {incident_id}: contract {row.contract_id} already has an open incident"
            ) from exc
        return self.incident(incident_id)

    def incident(self, incident_id: int) -> Incident:
        with self._transaction() as conn:
            row = conn.execute(incidents.select().where(incidents.c.id == incident_id)).first()
        if row is None:
            raise NotFound(f"incident {incident_id} does not exist in the store")
        return _incident(row)

    def incidents(self, *, status: IncidentStatus | str | None = None, open_only: bool = False,
                  group_id: int | None = None) -> list[Incident]:
        """Incidents, oldest first, optionally of one status, only the open ones, or one group's."""
        query = incidents.select().order_by(incidents.c.detected_at, incidents.c.id)
        if status is not None:
            query = query.where(incidents.c.status == IncidentStatus(status).value)
        if open_only:
            query = query.where(incidents.c.open.is_(True))
        if group_id is not None:
            query = query.where(incidents.c.group_id == group_id)
        with self._transaction() as conn:
            return [_incident(row) for row in conn.execute(query)]

    # -- audit log (append-only: there is deliberately no update or delete) -------------------

    def audit(
        self,
        name: str,
        *,
        incident_id: int | None = None,
        actor: str = "cairn",
        data: dict[str, Any] | None = None,
        dedup_key: str | None = None,
    ) -> AuditEvent | None:
        """Append an event; return None, writing nothing, if an event with `dedup_key` exists."""
        event = AuditEvent(name=name, at=self.clock.now(), actor=actor, incident_id=incident_id, data=dict(data or {}))
        row = dict(dataclasses.asdict(event), dedup_key=dedup_key)
        del row["id"]
        try:
            with self._transaction(write=True) as conn:
                new_id = conn.execute(audit_events.insert().values(row).returning(audit_events.c.id)).scalar_one()
        except IntegrityError as exc:
            if dedup_key is not None and self._has_audit_key(dedup_key):
                return None
            raise StoreError(f"cannot record audit event {name!r}: {_reason(exc)}") from exc
        return dataclasses.replace(event, id=new_id)

    def audit_events(self, incident_id: int | None = None) -> list[AuditEvent]:
        """Events in the order they were appended: all of them, or one incident's."""
        query = audit_events.select().order_by(audit_events.c.id)
        if incident_id is not None:
            query = query.where(audit_events.c.incident_id == incident_id)
        with self._transaction() as conn:
            return [
                AuditEvent(name=r.name, at=r.at, actor=r.actor, incident_id=r.incident_id, data=r.data, id=r.id)
                for r in conn.execute(query)
            ]

    def has_audit(self, dedup_key: str) -> bool:
        """Whether an event was recorded under `dedup_key` (a step that marks itself done)."""
        return self._has_audit_key(dedup_key)

    def _has_audit_key(self, dedup_key: str) -> bool:
        query = sa.select(audit_events.c.id).where(audit_events.c.dedup_key == dedup_key)
        with self._transaction() as conn:
            return conn.execute(query).first() is not None

    # -- rebaselines and org state ------------------------------------------------------------

    def rebaseline(self, contract_id: str, since: datetime, actor: str, reason: str) -> None:
        """Record that the contract's baseline starts at `since`; the latest recorded rebaseline wins.

        A future `since` would drop every observation until then from the baseline, muting the contract
        silently; a rebaseline without a reason leaves the audit trail unexplained: both are refused.
        """
        now = self.clock.now()
        if not reason.strip():
            raise ContractError(f"rebaseline {contract_id}: the reason is empty; say why the metric changed on "
                                "purpose (it is kept in the audit trail)")
        if since > now:
            raise ContractError(f"rebaseline {contract_id}: {since.isoformat()} is in the future (now "
                                f"{now.isoformat()}); a baseline restarts at a time already observed")
        row = dict(contract_id=contract_id, since=since, actor=actor, reason=reason.strip(), at=now)
        with self._transaction(write=True) as conn:
            conn.execute(rebaselines.insert().values(row))

    def baseline_since(self, contract_id: str) -> datetime | None:
        query = (
            sa.select(rebaselines.c.since)
            .where(rebaselines.c.contract_id == contract_id)
            .order_by(rebaselines.c.at.desc(), rebaselines.c.id.desc())
            .limit(1)
        )
        with self._transaction() as conn:
            return conn.execute(query).scalar()

    def get_state(self, key: str, default: Any = None) -> Any:
        with self._transaction() as conn:
            row = conn.execute(sa.select(org_state.c.value).where(org_state.c.key == key)).first()
        return default if row is None else row.value

    def set_state(self, key: str, value: Any, actor: str) -> None:
        """Set a shared value (JSON) that every worker sees on its next read."""
        insert = (postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert)(org_state)
        now = self.clock.now()
        query = insert.values(key=key, value=value, updated_at=now, updated_by=actor).on_conflict_do_update(
            index_elements=[org_state.c.key], set_=dict(value=insert.excluded.value, updated_at=now, updated_by=actor)
        )
        with self._transaction(write=True) as conn:
            conn.execute(query)

    # -- plumbing -----------------------------------------------------------------------------

    @contextmanager
    def _transaction(self, *, write: bool = False) -> Iterator[Connection]:
        """One transaction; driver errors become StoreError with the URL's password masked."""
        try:
            conn = self.engine.connect()
        except DBAPIError as exc:
            raise StoreError(
                f"cannot connect to the store at {self.url}: {self._masked(exc)}; "
                "check that the database is running and the URL, user and password are right"
            ) from exc
        try:
            with conn:
                conn.execution_options(cairn_write=write)
                with conn.begin():
                    yield conn
        except IntegrityError:
            raise  # the caller knows which constraint it was racing on
        except DBAPIError as exc:
            raise StoreError(
                f"the store at {self.url} failed: {self._masked(exc)}; if a table is missing, "
                "migrate it with Store.open(url, migrate=True)"
            ) from exc
        except sa.exc.StatementError as exc:
            if isinstance(exc.orig, ValueError):
                raise exc.orig from None  # a value we refuse to bind, e.g. a naive datetime
            raise

    def _masked(self, exc: sa.exc.StatementError) -> str:
        reason = _reason(exc)
        password = self.engine.url.password
        return reason.replace(password, "***") if password else reason


def _reason(exc: DBAPIError) -> str:
    lines = str(exc.orig if exc.orig is not None else exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _finite(value: float) -> float | None:
    """A one-sided band's open edge is stored as no edge: JSON and some databases refuse infinity."""
    return value if math.isfinite(value) else None


def _observation(row: sa.Row) -> Observation:
    return Observation(**{f.name: getattr(row, f.name) for f in dataclasses.fields(Observation)})


def _incident(row: sa.Row) -> Incident:
    values = {f.name: getattr(row, f.name) for f in dataclasses.fields(Incident)}
    values["status"] = IncidentStatus(row.status)
    values["baseline"] = BaselineStats.from_json(row.baseline) if row.baseline is not None else None
    values["details"] = IncidentDetails.model_validate(row.details or {})
    return Incident(**values)
