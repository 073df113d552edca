"""What dbt parses for a sandbox build: only the files the incident's scope needs, the rest in .dbtignore.

A sandbox build parses the whole worktree project (its profile differs from production's, so no
parse state can be reused), and on a project of 1,000 models parsing costs far more than building
the few models between a reverted commit and a metric. The build selects `changed+,+metric`, so
what it needs is every ancestor of the metric models and of the changed models; whatever else a
kept file declares (a YAML file patches several models, holds tests, exposures, semantic models)
is kept with it, with its own ancestors, until nothing new is pulled in; and every test or unit
test on a kept node is kept, so the build runs exactly the tests it would on the whole project.
Every other file production's manifest names is written to the worktree's `.dbtignore`.

Files the manifest does not name (a file the revert brings back) are never ignored, nor macros,
docs or group definitions. A revert that makes a kept model refer to an ignored one fails to parse:
`Narrowed.fallback` then restores `.dbtignore` and runs the call again on the whole project.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from jobs.core.errors import DbtError, DbtExited

log = logging.getLogger(__name__)

IGNORE_FILE = ".dbtignore"
MARKER = "# cairn: parse only the incident's scope (a sandbox build; removed with the worktree)"
SECTIONS = ("nodes", "sources", "exposures", "metrics", "semantic_models", "saved_queries", "unit_tests")
PROTECTED = ("macros", "docs", "groups")  # never ignored: anything may use them
TESTS = ("test", "unit_test")
_GLOB = re.compile(r"([\\\[\]*?!#])")

T = TypeVar("T")


def kept_files(manifest: Mapping[str, Any], roots: Iterable[str]) -> set[str]:
    """Project-relative files the build of `roots` (unique_ids) needs parsed."""
    project = manifest.get("metadata", {}).get("project_name")
    resources = _resources(manifest, project)
    by_file: dict[str, set[str]] = {}
    for uid, files in resources.items():
        for file in files:
            by_file.setdefault(file, set()).add(uid)
    parents, children = manifest.get("parent_map", {}), manifest.get("child_map", {})
    queue = list(roots)
    scope: set[str] = set()
    kept: set[str] = set()
    while queue:
        uid = queue.pop()
        if uid in scope:
            continue
        scope.add(uid)
        queue.extend(parents.get(uid, ()))
        queue.extend(_depends_on(manifest, uid))
        queue.extend(c for c in children.get(uid, ()) if c.split(".", 1)[0] in TESTS)
        for file in resources.get(uid, ()):
            if file not in kept:
                kept.add(file)
                queue.extend(by_file[file])
    return kept


def ignored_files(manifest: Mapping[str, Any], roots: Iterable[str]) -> list[str]:
    """Files production's manifest names that the build of `roots` does not need (see `kept_files`)."""
    project = manifest.get("metadata", {}).get("project_name")
    named = {f for files in _resources(manifest, project).values() for f in files}
    protected = {f for section in PROTECTED for item in manifest.get(section, {}).values()
                 if item.get("package_name") == project for f in _files(item)}
    return sorted(named - protected - kept_files(manifest, roots))


@dataclass
class Narrowed:
    """A worktree project whose .dbtignore leaves out what the build does not need."""

    path: Path
    original: str | None  # the project's own .dbtignore, if it had one
    ignored: int

    def fallback(self, call: Callable[[], T]) -> T:
        """`call()`; if dbt cannot run it on the narrowed project, widen it to the whole and call again."""
        try:
            return call()
        except DbtExited:
            raise  # the process died running it: the whole project would only run the same code again
        except DbtError as error:
            if not self.widen():
                raise
            log.info("the narrowed parse failed (%s); building with the whole project", error)
            return call()

    def widen(self) -> bool:
        """Restore the project's own .dbtignore; False when already whole."""
        if self.ignored == 0:
            return False
        if self.original is None:
            self.path.unlink(missing_ok=True)
        else:
            self.path.write_text(self.original)
        self.ignored = 0
        return True


def narrow(project_dir: Path, manifest: Mapping[str, Any], roots: Sequence[str | None]) -> Narrowed:
    """Write the files `roots` (unique_ids) do not need into `project_dir`'s .dbtignore, after any lines
    of its own; nothing when a root is not in the manifest (None) or there is none."""
    path = Path(project_dir) / IGNORE_FILE
    original = path.read_text() if path.is_file() else None
    known = [r for r in roots if r is not None and r in manifest.get("nodes", {})]
    ignored = ignored_files(manifest, known) if known and len(known) == len(roots) else []
    if ignored:
        lines = [MARKER, *("/" + _GLOB.sub(r"\\\1", f) for f in patterns(Path(project_dir), ignored))]
        head = original if original is None or original.endswith("\n") else original + "\n"
        path.write_text((head or "") + "\n".join(lines) + "\n")
    return Narrowed(path, original, len(ignored))


def patterns(project_dir: Path, ignored: Iterable[str]) -> list[str]:
    """`ignored` in the fewest paths: a directory whose files on disk are all ignored stands for them.

    dbt matches every pattern against every file it finds, so a thousand file patterns cost more
    than the parse they save; a file on disk the manifest does not name keeps its directory listed.
    """
    ignored = set(ignored)
    whole: set[str] = set()
    for top in sorted({f.split("/", 1)[0] for f in ignored if "/" in f}):
        for current, dirs, files in os.walk(project_dir / top, topdown=False):
            rel = Path(current).relative_to(project_dir).as_posix()
            if all(f"{rel}/{d}" in whole for d in dirs) and all(f"{rel}/{f}" in ignored for f in files):
                whole.add(rel)
    return sorted(p for p in ignored | {d + "/" for d in whole}
                  if not any(parent in whole for parent in _parents(p.rstrip("/"))))


def _parents(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:k]) for k in range(1, len(parts))]


def _resources(manifest: Mapping[str, Any], project: str | None) -> dict[str, set[str]]:
    """unique_id -> the files that declare or patch it, for the root project's resources."""
    return {uid: _files(item) for section in SECTIONS for uid, item in manifest.get(section, {}).items()
            if item.get("package_name") == project}


def _files(item: Mapping[str, Any]) -> set[str]:
    files = {item.get("original_file_path")}
    patch = item.get("patch_path")
    if patch:
        files.add(patch.split("://", 1)[-1])
    return {f for f in files if f}


def _depends_on(manifest: Mapping[str, Any], uid: str) -> list[str]:
    """What a resource outside the parent map (an exposure, a metric, a semantic model) depends on."""
    for section in SECTIONS[2:]:
        if uid in manifest.get(section, {}):
            return list(manifest[section][uid].get("depends_on", {}).get("nodes", ()))
    return []

