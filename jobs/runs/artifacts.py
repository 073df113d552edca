"""A finished run's artifacts (run_results.json, manifest.json, sources.json) read into a `Run`.

Every error names the file and the field: `<where>/run_results.json: results[3].status: ...`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jobs.core.errors import ArtifactError
from jobs.core.runs import BUILD, FRESHNESS, NodeRun, Run

RUN_RESULTS, MANIFEST, SOURCES = "run_results.json", "manifest.json", "sources.json"


@dataclass(frozen=True)
class Artifacts:
    """The parsed JSON of one run's artifacts and where they came from (a directory, a dbt Cloud run)."""

    where: str
    run_results: dict[str, Any]
    manifest: dict[str, Any]
    sources: dict[str, Any] | None = None


def read_target(target_dir: Path) -> Artifacts:
    """The artifacts dbt left in `target_dir`; run_results.json and manifest.json must be there."""
    target_dir = Path(target_dir)
    if not target_dir.is_dir():
        raise ArtifactError(f"{target_dir}: no such directory; give the target directory of a finished dbt run")
    where = str(target_dir)
    found = {}
    for name in (RUN_RESULTS, MANIFEST, SOURCES):
        path = target_dir / name
        if not path.is_file():
            if name == SOURCES:
                continue
            raise ArtifactError(f"{where}/{name}: no such file; a finished `dbt build`, `run` or `test` writes "
                                f"{RUN_RESULTS} and {MANIFEST} in its target directory")
        found[name] = loads(path.read_bytes(), where, name)
    return Artifacts(where, found[RUN_RESULTS], found[MANIFEST], found.get(SOURCES))


def loads(raw: bytes, where: str, name: str) -> dict[str, Any]:
    """One artifact's JSON: an object, or ArtifactError naming the file."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        position = f" (line {exc.lineno}, column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise ArtifactError(f"{where}/{name}: not valid JSON{position}") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{where}/{name}: expected a JSON object, got {type(data).__name__}")
    return data


def parse_run(artifacts: Artifacts, source: str = "artifacts") -> Run:
    """The run the artifacts describe, without a SHA (jobs.detect.ingest finds it)."""
    results = _Reader(artifacts.where, RUN_RESULTS, artifacts.run_results)
    manifest = _Reader(artifacts.where, MANIFEST, artifacts.manifest)
    meta = results.section("metadata")
    manifest_nodes = {key: node for section in ("sources", "nodes", "exposures")
                      for key, node in _optional_mapping(artifacts.manifest, section).items()}
    manifest_meta = manifest.section("metadata")
    args = artifacts.run_results.get("args")
    nodes = [_build_node(results, i, item, manifest_nodes)
             for i, item in enumerate(results.sequence("results", artifacts.run_results))]
    if artifacts.sources is not None:
        sources = _Reader(artifacts.where, SOURCES, artifacts.sources)
        nodes += [_freshness_node(sources, i, item, manifest_nodes)
                  for i, item in enumerate(sources.sequence("results", artifacts.sources))]
    return Run(
        invocation_id=results.text("metadata.invocation_id", meta, "invocation_id"),
        generated_at=results.time("metadata.generated_at", meta, "generated_at"),
        started_at=results.time("metadata.invocation_started_at", meta, "invocation_started_at", required=False),
        source=source,
        command=_text_or_none(args, "which") if isinstance(args, dict) else None,
        dbt_version=_text_or_none(meta, "dbt_version"), project=_text_or_none(manifest_meta, "project_name"),
        elapsed=results.number("elapsed_time", artifacts.run_results, "elapsed_time", required=False),
        nodes=tuple(nodes),
    )


def manifest_generated_at(artifacts: Artifacts) -> datetime:
    """When dbt wrote the manifest: the moment the deployed code was read."""
    manifest = _Reader(artifacts.where, MANIFEST, artifacts.manifest)
    return manifest.time("metadata.generated_at", manifest.section("metadata"), "generated_at")


def run_env(artifacts: Artifacts) -> dict[str, str]:
    """The DBT_ENV_CUSTOM_ENV_ variables the run recorded (prefix stripped), from run_results.json."""
    meta = artifacts.run_results.get("metadata")
    env = meta.get("env") if isinstance(meta, dict) else None
    return {k: v for k, v in env.items() if isinstance(v, str)} if isinstance(env, dict) else {}


def _build_node(reader: _Reader, i: int, item: Any, manifest_nodes: dict[str, Any]) -> NodeRun:
    item, common, declared = _node(reader, i, item, manifest_nodes)
    failures = item.get("failures")
    return NodeRun(
        **common, phase=BUILD, resource_type=declared.get("resource_type") or common["unique_id"].split(".", 1)[0],
        message=_text_or_none(item, "message"),
        failures=failures if isinstance(failures, int) and not isinstance(failures, bool) else None,
        relation_name=_text_or_none(item, "relation_name"), compiled_code=_text_or_none(item, "compiled_code"),
    )


def _freshness_node(reader: _Reader, i: int, item: Any, manifest_nodes: dict[str, Any]) -> NodeRun:
    item, common, _ = _node(reader, i, item, manifest_nodes)
    details = {key: item[key] for key in ("max_loaded_at", "snapshotted_at", "max_loaded_at_time_ago_in_s", "criteria")
               if key in item}
    return NodeRun(**common, phase=FRESHNESS, resource_type="source", message=_text_or_none(item, "error"),
                   details=details)


def _node(reader: _Reader, i: int, item: Any, manifest_nodes: dict[str, Any]):
    """results[i] as an object, the fields every node result has, and the node as the manifest declares it."""
    at = f"results[{i}]"
    item = reader.mapping(at, item)
    unique_id = reader.text(f"{at}.unique_id", item, "unique_id")
    started, completed = _timing(reader, at, item)
    declared = manifest_nodes.get(unique_id) if isinstance(manifest_nodes.get(unique_id), dict) else {}
    common = dict(unique_id=unique_id, status=reader.text(f"{at}.status", item, "status"),
                  execution_time=reader.number(f"{at}.execution_time", item, "execution_time", required=False),
                  started_at=started, completed_at=completed, path=declared.get("original_file_path"))
    return item, common, declared


def _text_or_none(item: dict[str, Any], key: str) -> str | None:
    return item[key] if isinstance(item.get(key), str) else None


def _timing(reader: _Reader, at: str, item: dict[str, Any]) -> tuple[datetime | None, datetime | None]:
    """The first step's start and the last step's end (compile, then execute)."""
    steps = item.get("timing") or []
    if not isinstance(steps, list):
        raise ArtifactError(f"{reader.where}/{reader.name}: {at}.timing: expected a list, got {type(steps).__name__}")
    times = []
    for j, step in enumerate(steps):
        step = reader.mapping(f"{at}.timing[{j}]", step)
        times.append((reader.time(f"{at}.timing[{j}].started_at", step, "started_at", required=False),
                      reader.time(f"{at}.timing[{j}].completed_at", step, "completed_at", required=False)))
    starts = [s for s, _ in times if s is not None]
    ends = [e for _, e in times if e is not None]
    return (min(starts) if starts else None, max(ends) if ends else None)


def _optional_mapping(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


class _Reader:
    """Typed reads from one artifact whose errors name the file and the field."""

    def __init__(self, where: str, name: str, data: dict[str, Any]):
        self.where, self.name, self.data = where, name, data

    def fail(self, field: str, problem: str) -> ArtifactError:
        return ArtifactError(f"{self.where}/{self.name}: {field}: {problem}")

    def section(self, key: str) -> dict[str, Any]:
        """A top-level object such as `metadata`."""
        if self.data.get(key) is None:
            raise self.fail(key, "missing")
        return self.mapping(key, self.data[key])

    def mapping(self, field: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(field, f"expected an object, got {_kind(value)}")
        return value

    def sequence(self, field: str, data: dict[str, Any]) -> list[Any]:
        value = data.get(field)
        if value is None:
            raise self.fail(field, "missing")
        if not isinstance(value, list):
            raise self.fail(field, f"expected a list, got {_kind(value)}")
        return value

    def text(self, field: str, data: dict[str, Any], key: str) -> str:
        value = data.get(key)
        if value is None:
            raise self.fail(field, "missing")
        if not isinstance(value, str) or not value.strip():
            raise self.fail(field, f"expected a non-empty string, got {value!r}")
        return value

    def number(self, field: str, data: dict[str, Any], key: str, required: bool = True) -> float | None:
        value = data.get(key)
        if value is None and not required:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(field, f"expected a number, got {value!r}")
        return float(value)

    def time(self, field: str, data: dict[str, Any], key: str, required: bool = True) -> datetime | None:
        value = data.get(key)
        if value is None and not required:
            return None
        if value is None:
            raise self.fail(field, "missing")
        try:
            parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
        except ValueError:
            parsed = None
        if parsed is None:
            raise self.fail(field, f"{value!r} is not an ISO 8601 time")
        # dbt writes UTC, some fields without an offset
        return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__
