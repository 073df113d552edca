"""Record a finished production run: its artifacts, the SHA it deployed, every node's result.

The deployed SHA, first found wins (docs/runs.md):
1. given with the run (`cairn ingest --sha`, or the `git_sha` dbt Cloud reports for its run);
2. `CAIRN_SHA` in the run's recorded environment (the deploy sets `DBT_ENV_CUSTOM_ENV_CAIRN_SHA`);
3. the last commit on the configured branch at the time dbt wrote the manifest. Commit dates are not
   deploy times, so this guess is recorded as such (`sha_source`), for deploys that give neither.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from jobs.core.errors import ArtifactError, ConfigError
from jobs.core.runs import Run
from jobs.detect.run_incidents import RunIncidents, record_failures, recorded_key
from jobs.project.git import GitError
from jobs.runs.artifacts import Artifacts, manifest_generated_at, parse_run, read_target, run_env
from jobs.runs.dbt_cloud import DbtCloudClient

SHA_ENV = "CAIRN_SHA"  # DBT_ENV_CUSTOM_ENV_CAIRN_SHA, as dbt records it


@dataclass(frozen=True)
class Ingested:
    run: Run
    new: bool  # False: the run was already recorded and nothing changed
    incidents: RunIncidents = field(default_factory=RunIncidents)  # what its failures opened, updated, resolved


def ingest_target(rt, target_dir: Path, sha: str | None = None) -> Ingested:
    """Ingest the run whose artifacts dbt left in `target_dir`."""
    return ingest(rt, read_target(target_dir), sha=sha, sha_source="given" if sha else None)


def build_and_ingest(rt) -> Ingested | None:
    """Run the production build at the deployed SHA (`schedule.build`), then ingest it: the clock's own deploy.
    A kill switch, org-wide or scoped, holds it (None): building production is a side effect beyond reading it."""
    from dbt_common.events.functions import reset_metadata_vars

    from jobs.project.dbt import Dbt
    from jobs.store import switches

    if (kill := switches.kill_switch(rt.store)) is not None:
        rt.store.audit("run.build_held", data={"reason": kill.reason, "by": kill.by})
        return None
    sha = rt.deployed_sha()
    target = rt.config.root / ".cairn" / "production-run"  # apart from Cairn's own parse in .cairn/target
    dbt = Dbt(rt.config.project_dir, rt.config.profiles_dir, rt.config.settings.target, target_path=target,
              env={f"DBT_ENV_CUSTOM_ENV_{SHA_ENV}": sha})
    reset_metadata_vars()  # dbt keeps a process's first DBT_ENV_CUSTOM_ENV_ values: this run records its own SHA
    dbt.build()  # a failing build is a run to record, not an error; DbtError only when dbt could not run
    dbt.invoke("source", "freshness")  # sources.json beside run_results.json; it leaves run_results.json alone
    reset_metadata_vars()
    return ingest(rt, read_target(target), source="scheduler")


def ingest_cloud_run(rt, run_id: int, client: DbtCloudClient | None = None) -> Ingested:
    """Fetch a finished dbt Cloud run's artifacts through its API and ingest them (a webhook's job)."""
    known = rt.store.cloud_run(run_id)
    if known is not None and rt.store.has_audit(recorded_key(known)):  # a delivery dbt Cloud retried
        return Ingested(known, False)
    client = client or cloud_client(rt.config)
    run = client.run(run_id)
    sha = run.get("git_sha") if isinstance(run.get("git_sha"), str) and run.get("git_sha") else None
    return ingest(rt, client.artifacts(run_id), source="dbt_cloud", sha=sha,
                  sha_source="dbt Cloud run" if sha else None, cloud_run_id=run_id)


def cloud_client(config) -> DbtCloudClient:
    """The API client of the configured dbt Cloud account, with the token from the environment."""
    settings = config.settings.dbt_cloud
    if settings is None or not config.env.dbt_cloud_api_token:
        raise ConfigError(f"{config.path}: ingesting dbt Cloud runs needs a `dbt_cloud:` section (account_id) "
                          "and DBT_CLOUD_API_TOKEN in the environment (docs/runs.md)")
    return DbtCloudClient(settings.base_url, settings.account_id, config.env.dbt_cloud_api_token)


def ingest(rt, artifacts: Artifacts, *, source: str = "artifacts", sha: str | None = None,
           sha_source: str | None = None, cloud_run_id: int | None = None) -> Ingested:
    """Record the run the artifacts describe, once: the same invocation again changes nothing."""
    run = parse_run(artifacts, source)
    known = rt.store.find_run(run.invocation_id)
    if known is not None and known.invocation_id == run.invocation_id:
        # Recorded by a job that died before its incidents were: this retry finishes the job.
        unfinished = not rt.store.has_audit(recorded_key(known))
        return Ingested(known, False, record_failures(rt, known, artifacts.manifest) if unfinished else RunIncidents())
    if sha is None:
        sha, sha_source = deployed_sha(rt, artifacts)
    run = dataclasses.replace(run, sha=sha, sha_source=sha_source, cloud_run_id=cloud_run_id)
    stored, new = rt.store.record_run(run)  # a racing writer's run comes back as known: its incidents are its
    if new:
        rt.store.audit("run.ingested", dedup_key=f"run.ingested:{run.invocation_id}", data={
            "invocation_id": run.invocation_id, "source": source, "sha": sha, "sha_source": sha_source,
            "status": stored.status, "failures": [node.unique_id for node in stored.failures]})
        return Ingested(stored, new, record_failures(rt, stored, artifacts.manifest))
    return Ingested(stored, new)


def deployed_sha(rt, artifacts: Artifacts) -> tuple[str | None, str]:
    """The SHA the run deployed and how it was found (the module's docstring gives the order)."""
    recorded = run_env(artifacts).get(SHA_ENV)
    if recorded:
        return recorded, "run environment"
    branch = rt.config.settings.branch
    written = manifest_generated_at(artifacts)
    try:
        found = rt.git.run("rev-list", "-1", f"--before={written.isoformat()}", branch, "--").strip()
    except GitError as exc:
        raise ArtifactError(f"{artifacts.where}: cannot tell which commit the run deployed: {exc}; pass --sha "
                            f"or set DBT_ENV_CUSTOM_ENV_{SHA_ENV} in the deploy") from None
    return (found or None), f"{branch} at manifest time"
