"""Attribution: from a broken metric to the commits that could have broken it, ranked with evidence."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from jobs.attribute.history import candidates as suspect_commits
from jobs.attribute.ranking import FAILED_RUN, METRIC, score
from jobs.contracts.spec import Contract
from jobs.core.records import Candidate, Incident, Ranking
from jobs.project.lineage import Lineage, metric_columns, upstream
from jobs.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attribution:
    """The suspects of one incident: revertable ones ranked, intentional ones set aside."""

    lineage: Lineage
    candidates: tuple[Candidate, ...]
    ranking: Ranking

    @property
    def intentional(self) -> tuple[Candidate, ...]:
        return tuple(c for c in self.candidates if c.intentional)

    def candidate(self, sha: str) -> Candidate:
        return next(c for c in self.candidates if c.sha == sha)

    def lineage_path(self, sha: str) -> list[str]:
        """Model names from the first model the commit touches to the metric's (empty: it touches none)."""
        models = self.candidate(sha).models
        return [self.lineage.names.get(m, m) for m in self.lineage.path_to(models[0])] if models else []

    @property
    def revertable(self) -> tuple[Candidate, ...]:
        """Ranked order, without intentional or docs-only commits: those are never reverted."""
        ranked = [self.candidate(cause.sha) for cause in self.ranking.causes]
        return tuple(c for c in ranked if not c.intentional and not c.docs_only)


def attribute(rt: Runtime, incident: Incident, contract: Contract | None) -> Attribution:
    """Lineage ⋈ git history → candidates → ranking (scorer, then the LLM when configured). A failed run's
    incident (no contract) walks up from its failing node, and the LLM reads its failing node and error."""
    settings = rt.config.settings.attribution
    run = incident.details.run
    if contract is None and run is None:
        raise ValueError(f"incident {incident.id} has neither a contract nor a failed run to attribute")
    lineage = upstream(rt.manifest, run.node, ()) if contract is None else \
        upstream(rt.manifest, contract.relation_name, metric_columns(contract))
    found = suspect_commits(rt.git, lineage, incident.last_good_sha, incident.first_bad_sha or rt.deployed_sha(),
                            project_subdir=rt.project_subdir, intentional_markers=settings.intentional_markers,
                            dialect=rt.dialect)[: settings.max_candidates]
    ranking = score(found, subject=METRIC if run is None else FAILED_RUN)
    if found and rt.config.env.anthropic_api_key:
        ranking = _rerank(rt, incident, contract, found, ranking)
    return Attribution(lineage, tuple(found), ranking)


def _rerank(rt: Runtime, incident: Incident, contract: Contract | None, found: list[Candidate],
            ranking: Ranking) -> Ranking:
    import anthropic

    from jobs.attribute.llm import evidence_bundle, rerank

    settings = rt.config.settings.attribution
    client = anthropic.Anthropic(api_key=rt.config.env.anthropic_api_key, base_url=settings.llm_base_url,
                                 max_retries=1, timeout=settings.llm_timeout)
    bundle = evidence_bundle(incident, contract, found, ranking)
    return rerank(found, ranking, bundle, client=client, model=settings.llm_model, timeout=settings.llm_timeout)
