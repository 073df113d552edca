"""What "recovered" means for an incident: the band a fix must bring its metric back into.

Verification judges a revert on a clone by it, and detection closes an incident that follows
another when a later observation is back inside it.

- Freshness: under `max_lag`.
- An incident that follows another (a later deploy made an open incident worse): back at the
  level the metric held before that deploy, give or take the baseline band's own width. Not the
  baseline: the earlier incident's cause is still there, and reverting this deploy cannot undo it.
- An incident a deploy check opened or confirmed (`jobs.detect.deploy_check`): back at the value measured
  without the deploy on the same data, give or take the contract's materiality floors. Its bad
  value may sit inside the baseline band (noise hid it), so the baseline proves nothing there.
- Otherwise: back inside the baseline band of the first bad observation.
- One-sided, like detection: a drop recovers at or above the lower edge (a growing metric's revert
  may land above a band it never alerts on), a rise at or below the upper edge.
"""

from __future__ import annotations

import math
from dataclasses import replace

from jobs.contracts.spec import Contract, Direction, Kind
from jobs.core.errors import CairnError
from jobs.core.records import BaselineStats, Incident
from jobs.detect.baseline import materiality


def recovery_band(contract: Contract, incident: Incident) -> BaselineStats:
    """The band incident's metric must return into (see the module docstring)."""
    if contract.kind is Kind.freshness and contract.max_lag is not None:
        limit = contract.max_lag.total_seconds()
        return BaselineStats(expected=limit / 2, lower=0.0, upper=limit, n=0)
    deploy = incident.details.deploy
    if deploy and deploy.without is not None:
        return _one_sided(floors_around(contract, deploy.without),
                          Direction.drop if (incident.value or 0.0) < deploy.without else Direction.rise)
    if incident.baseline is None:
        raise CairnError(f"incident {incident.id} has no baseline to recover into: its contract "
                         f"{contract.id} was still learning when it opened")
    band, direction = incident.baseline, contract.effective_direction
    level = previous_level(incident)
    if level is not None:
        band = around(band, level)
        direction = Direction.drop if (incident.value or 0.0) < level else Direction.rise
    return _one_sided(band, direction)


def floors_around(contract: Contract, level: float) -> BaselineStats:
    """`level` give or take the contract's materiality floors (the wider of relative and absolute)."""
    floor = materiality(contract.threshold, level)
    return BaselineStats(expected=level, lower=level - floor, upper=level + floor, n=0)


def _one_sided(band: BaselineStats, direction: Direction) -> BaselineStats:
    if direction is Direction.drop:
        return replace(band, upper=math.inf)
    if direction is Direction.rise:
        return replace(band, lower=-math.inf)
    return band


def previous_level(incident: Incident) -> float | None:
    """The level before the deploy an incident follows (None: it follows nothing)."""
    follows = incident.details.follows
    return follows.level if follows and incident.follows_id is not None else None


def around(band: BaselineStats, level: float) -> BaselineStats:
    """`band`'s width moved to sit around `level` (scaled with it when both are positive: widths are relative)."""
    scale = level / band.expected if band.expected > 0 and level > 0 else 1.0
    return replace(band, expected=level, lower=level - (band.expected - band.lower) * scale,
                   upper=level + (band.upper - band.expected) * scale)
