"""Deploy checks: a deploy's own effect on each contract it reaches, measured on the same data.

Statistics alone cannot see a 20% drop on a day whose noise is 9%. Cairn can: when the deployed
SHA changed since a contract's previous observation and commits in that range touch its lineage,
those commits are reverted in a worktree and the reverted models are built on a sandbox copy of
production, through every affected contract's model (the verification build, unselected parents
deferred to production). Each contract is measured there, without the deploy, and compared with
what production measured with it: the difference is the code's own effect, free of day-to-day
noise. One build per deploy, however many contracts it reaches.

- An effect past the contract's materiality floors (`threshold.relative` and `.absolute`), on the
  side the contract alerts on, opens an incident at once, attributed to that deploy's commits,
  both values its evidence; the observation is kept out of baselines. If detection opened one
  for the same deploy, the evidence is added to it. An open incident on the contract is followed
  (the new deploy gets its own incident and suspect range), unless the deploy brings the metric
  back into that incident's recovery band: a fix is not a regression.
- An incident a deploy check opened recovers into the level measured without the deploy, give or
  take the floors (`jobs.detect.recovery`), and stays open while its code stays deployed.
- A material effect whose commits include one marked intentional re-baselines the contract from
  this window instead.
- Contracts still learning (a new or re-baselined contract) open nothing, so are not checked.
- Freshness and distribution contracts are not deploy-checked (a clone build's freshness is its
  own; profiles are not verified on a clone). Where the warehouse adapter does not check deploys
  yet (BigQuery: a build per deploy is not yet under its byte budget), they are skipped and audited.
- `deploy_checks` in the policy turns them off, org-wide or for selectors.

Every check that builds is audited (`deploy.checked`) with the commits, the clone, the exact dbt
command, how the build was isolated, each contract's two values and the durations; a build that fails is audited and opens
nothing: it proves nothing either way.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from jobs.contracts.spec import Contract, Kind
from jobs.core.errors import CairnError
from jobs.core.formatting import fmt_number
from jobs.core.records import (
    AssessmentStatus,
    BaselineStats,
    Candidate,
    DeployDetail,
    Incident,
    Observation,
    Verdict,
)
from jobs.detect.baseline import alerts_in_direction, change_pct, crosses_floors, metric_label
from jobs.detect.observe import Change, follow, open_incident
from jobs.project.isolation import DbtServers
from jobs.runtime import Runtime

log = logging.getLogger(__name__)

UNCHECKED = (Kind.freshness, Kind.distribution)


@dataclass(frozen=True)
class Deploy:
    """The code that changed between two observations of the contracts it reaches."""

    from_sha: str
    to_sha: str

    @property
    def label(self) -> str:
        return f"deploy-{self.to_sha[:7]}"


@dataclass(frozen=True)
class Effect:
    """One contract measured with the deploy (production) and without it (the sandbox)."""

    contract: Contract
    observation: Observation
    without: float | None
    commits: tuple[Candidate, ...]

    @property
    def with_deploy(self) -> float | None:
        return self.observation.value

    @property
    def change_pct(self) -> float | None:
        if self.without is None or self.with_deploy is None:
            return None
        return change_pct(self.with_deploy, self.without)

    @property
    def material(self) -> bool:
        """Past both floors, on the side the contract alerts on."""
        if self.without is None or self.with_deploy is None:
            return False
        dev = self.with_deploy - self.without
        return alerts_in_direction(self.contract.effective_direction, dev) and \
            crosses_floors(self.contract.threshold, dev, self.without)

    @property
    def intentional(self) -> tuple[Candidate, ...]:
        return tuple(c for c in self.commits if c.intentional)

    def reason(self, clone_id: str) -> str:
        shas = [c.short_sha for c in self.commits]
        named = "" if shas == [self.observation.sha[:7]] else f" ({', '.join(shas)})"
        pct = self.change_pct
        moved = f"by {pct:+.1f}%" if pct is not None else "materially"
        return (f"deploy {self.observation.sha[:7]}{named} changes {metric_label(self.contract)} {moved} on the "
                f"same data: {fmt_number(self.with_deploy)} with it, {fmt_number(self.without)} without it "
                f"(clone {clone_id})")

    def evidence(self, deploy: Deploy, verification) -> DeployDetail:
        """What the incident keeps: enough to judge a revert and to show both values."""
        return DeployDetail(from_sha=deploy.from_sha, to_sha=deploy.to_sha, with_deploy=self.with_deploy,
                            without=self.without, change_pct=self.change_pct,
                            commits=tuple(c.sha for c in self.commits), clone_id=verification.clone_id,
                            dbt_command=verification.dbt_command, reverted=verification.reverted)


def deploys(rt: Runtime, outcomes: Sequence) -> dict[Deploy, list]:
    """The outcomes whose contract saw a new deploy since its previous observation, by deploy."""
    found: dict[Deploy, list] = {}
    for outcome in outcomes:
        obs = outcome.observation
        if outcome.contract.kind in UNCHECKED or obs.value is None or \
                outcome.assessment.status is AssessmentStatus.learning or not _enabled(rt, outcome.contract):
            continue  # a learning contract opens no incident, whatever a deploy did
        previous = rt.store.previous_observation(outcome.contract.id, obs)
        if previous is None or previous.sha is None or previous.sha == obs.sha:
            continue
        found.setdefault(Deploy(previous.sha, obs.sha), []).append(outcome)
    return found


def check_deploys(rt: Runtime, outcomes: list) -> list:
    """Run the deploy check for every deploy this check is the first to see; the outcomes it changed."""
    by_deploy = deploys(rt, outcomes)
    if not by_deploy:
        return outcomes
    sandboxes = rt.sandboxes()
    if not sandboxes.checks_deploys:
        for deploy in by_deploy:
            rt.store.audit("deploy.skipped", data={"from_sha": deploy.from_sha, "to_sha": deploy.to_sha,
                                                   "reason": f"no deploy checks on {sandboxes.name} yet"},
                           dedup_key=f"deploy:{deploy.from_sha}:{deploy.to_sha}:skipped")
        return outcomes
    changed = {}
    live = [(deploy, reached) for deploy, reached in by_deploy.items() if not _killed(rt, deploy, reached)]
    if not live:
        return outcomes
    with DbtServers(sandboxes.isolation, rt.sandboxes_root, sandboxes.protected,
                    prestart=(sandboxes.network,)) as servers:
        for deploy, reached in live:
            for outcome in _check(rt, sandboxes, servers, deploy, reached):
                changed[outcome.contract.id] = outcome
    return [changed.get(o.contract.id, o) for o in outcomes]


def _check(rt: Runtime, sandboxes, servers: DbtServers, deploy: Deploy, reached: list) -> list:
    from jobs.verify.verification import Target, verify_revert

    affected = [(o, commits) for o in reached if (commits := _commits(rt, deploy, o.contract))]
    if not affected:
        return []
    commits = {c.sha: c for _, found in affected for c in found}
    shas = [c.sha for c in sorted(commits.values(), key=lambda c: c.authored_at, reverse=True)]
    models = tuple(dict.fromkeys(m for c in commits.values() for m in c.models))
    unbounded = BaselineStats(expected=0.0, lower=-math.inf, upper=math.inf, n=0)  # values only, no verdict
    first, *rest = [o for o, _ in affected]
    try:
        result = verify_revert(
            sandboxes=sandboxes, repo=rt.config.repo_dir, project_subdir=rt.project_subdir, deployed_sha=deploy.to_sha,
            shas=shas, models=models, contract=first.contract, metric_model=first.contract.relation_name,
            prod_state=rt.state_dir, band=unbounded, before=first.observation.value,
            at=first.observation.observed_at, incident_id=0, label=deploy.label, sandboxes_root=rt.sandboxes_root,
            also=[Target(i, o.contract, unbounded, o.observation.value) for i, o in enumerate(rest, start=1)],
            deltas=False, servers=servers)
    except CairnError as error:
        _audit_failed(rt, deploy, shas, str(error))
        return []
    if result.verdict in (Verdict.conflict, Verdict.build_failed):
        _audit_failed(rt, deploy, shas, result.detail)
        return []
    without = [result.after, *(m.after for m in result.members[1:])]
    effects = [Effect(o.contract, o.observation, value, found) for (o, found), value in zip(affected, without)]
    rt.store.audit("deploy.checked", data={
        "from_sha": deploy.from_sha, "to_sha": deploy.to_sha, "reverted": shas, "clone_id": result.clone_id,
        "dbt_command": result.dbt_command, "isolation": result.isolation, "durations": result.durations,
        "tests": result.tests,
        "effects": [{"contract": e.contract.id, "with": e.with_deploy, "without": e.without,
                     "change_pct": e.change_pct, "material": e.material} for e in effects]},
        dedup_key=f"deploy:{deploy.from_sha}:{deploy.to_sha}:{','.join(sorted(e.contract.id for e in effects))}")
    outcomes = {o.contract.id: o for o, _ in affected}
    return [moved for effect in effects if effect.material
            for moved in [_act(rt, deploy, result, effect, outcomes[effect.contract.id])] if moved is not None]


def _act(rt: Runtime, deploy: Deploy, verification, effect: Effect, outcome):
    """Open, follow or annotate an incident for a material effect, or re-baseline an intended one."""
    contract, observation, store = effect.contract, effect.observation, rt.store
    if effect.intentional:
        since = observation.window_start or observation.observed_at
        intended = effect.intentional[0]
        store.rebaseline(contract.id, since, actor="cairn", reason=(
            f"commit {intended.short_sha} marks this change as intentional; {effect.reason(verification.clone_id)}"))
        store.audit("contract.rebaselined", data={"contract": contract.id, "since": since.isoformat(),
                                                  "commit": intended.sha, "change_pct": effect.change_pct})
        return None
    evidence = {"deploy": effect.evidence(deploy, verification)}
    if outcome.change is Change.opened and outcome.incident.first_bad_sha == deploy.to_sha:
        incident = store.update_incident(outcome.incident.id, details=evidence, change_pct=effect.change_pct)
        return replace(outcome, incident=incident)
    chain = store.open_incidents_for(contract.id)
    if chain and chain[-1].first_bad_sha != deploy.to_sha and _brings_back(contract, chain[-1], effect):
        return None  # the deploy is a fix for the open incident: detection resolves it as it recovers
    if chain and chain[-1].first_bad_sha == deploy.to_sha:
        return None  # already opened for this deploy by an earlier check
    assessment = replace(outcome.assessment, status=AssessmentStatus.anomalous, change_pct=effect.change_pct,
                         reason=effect.reason(verification.clone_id))
    observation = store.record_judgement(observation.id, True, outcome.assessment.baseline)
    last_good = store.previous_observation(contract.id, observation)
    if chain:
        incident = follow(rt, contract, observation, assessment, chain[-1], last_good, details=evidence)
        others = (store.incident(chain[-1].id),)
    else:
        incident, others = open_incident(rt, contract, observation, assessment, last_good, details=evidence), ()
    return replace(outcome, observation=observation, assessment=assessment, change=Change.opened,
                   incident=incident, others=others)


def _brings_back(contract: Contract, head: Incident, effect: Effect) -> bool:
    from jobs.detect.recovery import recovery_band

    try:
        return recovery_band(contract, head).contains(effect.with_deploy)
    except CairnError:  # an incident opened while learning has no band: any move of the deploy is news
        return False


def _commits(rt: Runtime, deploy: Deploy, contract: Contract) -> tuple[Candidate, ...]:
    """The deploy's commits that touch the contract's lineage (docs-only changes cannot move a value)."""
    from jobs.attribute.history import candidates
    from jobs.project.lineage import metric_columns, upstream

    lineage = upstream(rt.manifest, contract.relation_name, metric_columns(contract))
    found = candidates(rt.git, lineage, deploy.from_sha, deploy.to_sha, project_subdir=rt.project_subdir,
                       intentional_markers=rt.config.settings.attribution.intentional_markers, dialect=rt.dialect)
    return tuple(c for c in found if not c.docs_only and c.models)


def _enabled(rt: Runtime, contract: Contract) -> bool:
    from jobs.project.lineage import model_refs, model_uid
    from policies.model import matches

    settings = rt.policy.deploy_checks
    if not settings.enabled:
        return False
    if not settings.skip:
        return True
    uid = model_uid(rt.manifest, contract.relation_name)
    refs = model_refs(rt.manifest, [uid]) if uid else []
    return not any(matches(selector, ref) for selector in settings.skip for ref in refs)


def _killed(rt: Runtime, deploy: Deploy, reached: list) -> bool:
    """The kill switch covers a contract the deploy reaches: no clone is built; recorded as skipped."""
    from jobs.project.lineage import model_uid

    kill = rt.kill_switch_over([uid for o in reached if (uid := model_uid(rt.manifest, o.contract.relation_name))])
    if kill is None:
        return False
    rt.store.audit("deploy.skipped", data={"from_sha": deploy.from_sha, "to_sha": deploy.to_sha,
                                           "reason": f"kill switch on ({kill.reason}, by {kill.by}): "
                                                     "the deploy check's clone build was not run"},
                   dedup_key=f"deploy:{deploy.from_sha}:{deploy.to_sha}:killed")
    return True


def _audit_failed(rt: Runtime, deploy: Deploy, shas: Sequence[str], detail: str) -> None:
    log.warning("deploy check %s..%s: the build without the deploy failed: %s", deploy.from_sha[:7],
                deploy.to_sha[:7], detail)
    rt.store.audit("deploy.check_failed", data={"from_sha": deploy.from_sha, "to_sha": deploy.to_sha,
                                                "reverted": list(shas), "detail": detail[:2000]},
                   dedup_key=f"deploy:{deploy.from_sha}:{deploy.to_sha}:failed")

