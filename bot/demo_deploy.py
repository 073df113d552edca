"""The demo's production deploys: `dbt build` told its SHA as docs/runs.md recommends, its run recorded by the
code `cairn ingest` runs, so the demo's failed run is met exactly as a real deploy's would be."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

# dbt stamps its artifacts with these; the demo moves them onto its own calendar.
STAMPS = {"generated_at", "invocation_started_at", "run_started_at", "started_at", "completed_at"}


def deploy(dbt, sha: str, at: datetime, keep: Path) -> Path:
    """Build production at `sha` as the deploy would, telling dbt its SHA; the run's artifacts are copied to `keep`
    (the next deploy overwrites dbt's target) and dated as if dbt had finished at `at`. A failing build is a run
    to record, not an error."""
    from dbt_common.events.functions import reset_metadata_vars

    from jobs.detect.ingest import SHA_ENV
    from jobs.project.dbt import Dbt

    built = Dbt(dbt.project_dir, dbt.profiles_dir, dbt.target, target_path=dbt.target_path,
                      env={**dbt.env, f"DBT_ENV_CUSTOM_ENV_{SHA_ENV}": sha})
    reset_metadata_vars()  # dbt keeps a process's first DBT_ENV_CUSTOM_ENV_ values: this run records its own SHA
    try:
        built.build(extra=("--log-level", "none"))  # the run's failures are shown as Cairn records them
    finally:
        reset_metadata_vars()
    if keep.exists():
        shutil.rmtree(keep)
    shutil.copytree(dbt.target_path, keep)
    on_calendar(keep, at)
    return keep


def record(rt, target: Path):
    """Ingest the run in `target` as `cairn ingest TARGET_DIR` does: its failures open incidents and the loop
    starts for them (here, or as jobs for the workers with REDIS_URL). Returns what the run moved."""
    from jobs.detect.ingest import ingest_target
    from jobs.loop.queue import for_runtime, heal_run

    return heal_run(rt, for_runtime(rt), ingest_target(rt, target))


def on_calendar(target: Path, at: datetime) -> None:
    """Shift every time dbt wrote into the run's artifacts so that the run finished at `at`: the demo tells
    its story on a fixed calendar (bot.demo.DEMO_TODAY), while dbt writes today's wall clock. Durations keep."""
    results_path = target / "run_results.json"
    results = json.loads(results_path.read_text())
    delta = at - _parse(results["metadata"]["generated_at"])
    results_path.write_text(json.dumps(_shifted(results, delta)))
    manifest_path = target / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["metadata"] = _shifted(manifest["metadata"], delta)  # only its metadata carries the run's times
    manifest_path.write_text(json.dumps(manifest))


def _shifted(value, delta):
    if isinstance(value, dict):
        return {key: _format(_parse(item) + delta) if key in STAMPS and isinstance(item, str) else _shifted(item, delta)
                for key, item in value.items()}
    if isinstance(value, list):
        return [_shifted(item, delta) for item in value]
    return value


def _parse(stamp: str) -> datetime:
    parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _format(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
