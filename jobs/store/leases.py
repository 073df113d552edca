"""The store's stage leases: which job is working on an incident right now; mixed into `Store`.

A job takes the incident's lease before its stage and renews it while it runs (`jobs.loop.lease`);
a job killed mid-stage stops renewing, and once the lease expires a check may resume the incident.
Lease times are the wall clock's, handed in by the caller: they measure whether a process is alive,
not where the data is (a replay's pinned clock would never expire anything).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from jobs.store.database import stage_leases


class LeaseStore:
    """Take, renew and release leases; needs the `_transaction()` of `jobs.store.store.Store`."""

    def take_lease(self, incident_id: int, stage: str, holder: str, now: datetime, ttl: timedelta) -> bool:
        """True if `holder` now holds the incident's lease: it was free, expired, or already its own (a
        retry of the same job takes over from its killed predecessor)."""
        values = dict(stage=stage, holder=holder, expires_at=now + ttl)
        try:
            with self._transaction(write=True) as conn:
                conn.execute(stage_leases.insert().values(incident_id=incident_id, **values))
            return True
        except IntegrityError:
            pass
        free = sa.and_(stage_leases.c.incident_id == incident_id,
                       sa.or_(stage_leases.c.expires_at < now, stage_leases.c.holder == holder))
        with self._transaction(write=True) as conn:
            return conn.execute(stage_leases.update().where(free).values(values)).rowcount == 1

    def renew_lease(self, incident_id: int, holder: str, now: datetime, ttl: timedelta) -> bool:
        """Extend a lease still held by `holder`; False if someone else took it over."""
        mine = sa.and_(stage_leases.c.incident_id == incident_id, stage_leases.c.holder == holder)
        with self._transaction(write=True) as conn:
            return conn.execute(stage_leases.update().where(mine).values(expires_at=now + ttl)).rowcount == 1

    def release_lease(self, incident_id: int, holder: str) -> None:
        mine = sa.and_(stage_leases.c.incident_id == incident_id, stage_leases.c.holder == holder)
        with self._transaction(write=True) as conn:
            conn.execute(stage_leases.delete().where(mine))

    def live_leases(self, now: datetime) -> dict[int, str]:
        """Incidents whose lease has not expired at `now`, and the stage each is in."""
        query = sa.select(stage_leases.c.incident_id, stage_leases.c.stage).where(stage_leases.c.expires_at >= now)
        with self._transaction() as conn:
            return {row.incident_id: row.stage for row in conn.execute(query)}
