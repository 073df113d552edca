"""A stage holds its incident's lease while it runs, renewed by a heartbeat thread.

A worker killed mid-stage (SIGKILL, a lost machine) stops renewing: once the lease expires, the next
check's reconcile (`jobs.loop.reconcile`) knows no one is working on the incident and resumes it.
Leases run on the wall clock, handed in: they say whether a process is alive, which a replay's
pinned clock cannot.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from jobs.core.clock import Clock
from jobs.core.errors import StoreError

log = logging.getLogger(__name__)


@contextmanager
def held(store, incident_id: int, stage: str, holder: str, ttl: timedelta, wall: Clock) -> Iterator[bool]:
    """Hold the incident's lease for the block (True), or yield False: another live job holds it."""
    if not store.take_lease(incident_id, stage, holder, wall.now(), ttl):
        yield False
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(ttl.total_seconds() / 3):
            try:
                if not store.renew_lease(incident_id, holder, wall.now(), ttl):
                    log.warning("incident %s: lease for %s taken over by another job", incident_id, stage)
                    return
            except StoreError as exc:  # the stage finds out itself; the heartbeat must not die silently
                log.warning("incident %s: lease not renewed: %s", incident_id, exc)

    heart = threading.Thread(target=beat, name=f"cairn-lease-{incident_id}", daemon=True)
    heart.start()
    try:
        yield True
    finally:
        stop.set()
        heart.join()
        store.release_lease(incident_id, holder)
