"""The PR a report shows: the store's row, refreshed from the code host while it can still change there."""

from __future__ import annotations

import logging

from jobs.attribute import groups
from jobs.core.errors import CairnError
from jobs.core.records import Incident, PullRequest
from jobs.runtime import Runtime

log = logging.getLogger(__name__)


def current_pull_request(rt: Runtime, incident: Incident) -> PullRequest | None:
    """The PR that carries the incident's fix as the forge sees it now (a person may have merged or closed it
    on GitHub); a merged one is final and not asked about again; the store's row if the host is unreachable."""
    stored = groups.pull_request(rt.store, incident)
    if stored is None or stored.state == "merged":
        return stored
    try:
        return rt.forge.refresh(stored.incident_id) or stored
    except (CairnError, OSError) as exc:  # a report still answers, with what the store knows
        log.warning("PR of incident %s not refreshed from the forge: %s", incident.id, exc)
        return stored
