"""dbt packages for the projects Cairn parses and builds, as production has them.

Nearly every real repository git-ignores `dbt_packages/` and installs it with `dbt deps`, so a
fresh worktree holds none, and dbt refuses to parse it ("dbt found 3 package(s) specified in
packages.yml, but only 0 package(s) installed").

- Production's checkout (the manifest Cairn parses): when packages are declared and none are
  installed, `dbt deps` installs them there first.
- A verification worktree: when the revert leaves packages.yml, dependencies.yml and
  package-lock.yml unchanged and touches no local package inside the repository, production's
  installed packages are copied in (symlinks kept: `dbt deps` links a `local:` package, and the
  link is what production built with). Otherwise, or when production has none installed, `dbt deps`
  runs in the worktree, so a revert that changes packages is verified with the packages it declares.

`dbt deps` needs whatever the packages name (the package hub, git remotes, local paths) to be
reachable from where Cairn runs; its error names the file and the package.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from jobs.core.errors import DbtError
from jobs.project.dbt import Dbt
from jobs.project.isolation import Child

log = logging.getLogger(__name__)

PACKAGE_FILES = ("packages.yml", "dependencies.yml", "package-lock.yml")


def install_dir(project_dir: Path) -> Path:
    """Where `dbt deps` installs: `packages-install-path` in dbt_project.yml, else dbt_packages/."""
    project = _yaml(project_dir / "dbt_project.yml") or {}
    return project_dir / str(project.get("packages-install-path") or "dbt_packages")


def declared(project_dir: Path) -> list[dict[str, Any]]:
    """The packages packages.yml or dependencies.yml declares (dbt reads the first that has any)."""
    for name in ("packages.yml", "dependencies.yml"):
        found = (_yaml(project_dir / name) or {}).get("packages") or []
        if found:
            return list(found)
    return []


def installed(project_dir: Path) -> bool:
    where = install_dir(project_dir)
    return where.is_dir() and any(where.iterdir())


def ensure_installed(dbt: Dbt) -> str | None:
    """Install production's declared packages if none are; say what was done (None: nothing)."""
    if not declared(dbt.project_dir) or installed(dbt.project_dir):
        return None
    dbt.deps()
    return f"installed the packages {dbt.project_dir / 'packages.yml'} declares with dbt deps"


def provide(worktree_project: Path, production_project: Path, changed: Iterable[str], repo: Path,
            worktree_repo: Path, env: dict[str, str] | None = None, child: Child | None = None) -> str | None:
    """Give a verification worktree its packages (see the module docstring); say how (None: none declared).

    `changed` are the repository paths the revert changes; `repo` and `worktree_repo` the two roots;
    `child` where `dbt deps` runs (the revert's packages.yml is candidate code: its Jinja reads env_var).
    """
    packages = declared(worktree_project)
    if not packages:
        return None
    changed = set(changed)
    project_rel = worktree_project.relative_to(worktree_repo)
    touched = sorted(p for p in changed if Path(p).parent == project_rel and Path(p).name in PACKAGE_FILES)
    touched += sorted(p for p in changed for local in _local_in_repo(packages, worktree_project, worktree_repo)
                      if Path(p) == local or local in Path(p).parents)
    if not touched and installed(production_project):
        target = install_dir(worktree_project)
        shutil.copytree(install_dir(production_project), target, symlinks=True, dirs_exist_ok=True)
        return f"reused production's installed packages ({install_dir(production_project).relative_to(repo)})"
    Dbt(worktree_project, worktree_project, env=env, child=child).deps()
    why = f"the revert changes {', '.join(touched)}" if touched else "production has none installed"
    return f"ran dbt deps in the worktree: {why}"


def _local_in_repo(packages: list[dict[str, Any]], project: Path, repo: Path) -> list[Path]:
    """`local:` packages inside the repository, as repository paths: a revert may change their code."""
    inside = []
    for package in packages:
        local = package.get("local") if isinstance(package, dict) else None
        if not local:
            continue
        path = (project / str(local)).resolve()
        try:
            inside.append(path.relative_to(repo.resolve()))
        except ValueError:
            continue  # outside the repository: the same files for production and the worktree
    return inside


def _yaml(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DbtError(f"{path}: not valid YAML: {exc}") from exc
