"""The detect stage as `cairn check` runs it: observe every contract, judge each value, then deploy checks.

Its own module so imports run one way: deploy checks (`jobs.detect.deploy_check`) open and follow
incidents through `jobs.detect.observe`, and this module runs both.
"""

from __future__ import annotations

from collections.abc import Sequence

from jobs.contracts.spec import Contract
from jobs.detect.deploy_check import check_deploys
from jobs.detect.observe import Outcome, detect, observe
from jobs.runtime import Runtime


def check(rt: Runtime, contracts: Sequence[Contract] | None = None) -> list[Outcome]:
    """Observe at the Runtime's clock, judge each observation and move its contract's incident, then
    measure what a new deploy did to the contracts it reaches (`jobs.detect.deploy_check`)."""
    contracts = list(rt.contracts if contracts is None else contracts)
    observations = observe(rt, rt.clock.now(), contracts)
    return check_deploys(rt, [detect(rt, contract, obs) for contract, obs in zip(contracts, observations)])
