"""dbt, in-process (one runner per process, one invocation at a time) or in an isolated child, artifacts kept apart."""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.core.errors import DbtError
from jobs.project.isolation import Child

# dbt reads this at import time in some versions: set it before dbt is imported anywhere.
os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")

# dbt's adapter and connections are process-global: two invocations at once corrupt each other.
_INVOCATION_LOCK = threading.Lock()


@dataclass(frozen=True)
class NodeResult:
    unique_id: str
    status: str
    message: str | None = None


@dataclass(frozen=True)
class InvocationResult:
    args: tuple[str, ...]
    success: bool
    nodes: tuple[NodeResult, ...] = field(default_factory=tuple)

    @property
    def command(self) -> str:
        return "dbt " + " ".join(self.args)

    @property
    def failures(self) -> list[NodeResult]:
        return [n for n in self.nodes if n.status in ("error", "fail", "runtime error")]


class Dbt:
    """A dbt project at one target, invoked through dbtRunner with its own target path.

    With `child`, every invocation runs in a child process (`jobs.project.isolation`): the project
    is a revert's, candidate code that must not run beside Cairn's secrets or reach production.
    """

    def __init__(self, project_dir: Path, profiles_dir: Path, target: str | None = None,
                 target_path: Path | None = None, env: dict[str, str] | None = None, child: Child | None = None):
        self.project_dir = Path(project_dir)
        self.profiles_dir = Path(profiles_dir)
        self.target = target
        self.target_path = Path(target_path or self.project_dir / "target")
        self.env = dict(env or {})
        self.child = child

    def invoke(self, *args: str, select: str | None = None, extra: tuple[str, ...] = ()) -> InvocationResult:
        """Run one dbt command; raise DbtError when dbt itself could not run."""
        argv = [*args, "--project-dir", str(self.project_dir), "--profiles-dir", str(self.profiles_dir),
                "--target-path", str(self.target_path), "--log-path", str(self.target_path / "logs"),
                "--quiet", "--no-use-colors"]
        if self.target:
            argv += ["--target", self.target]
        if select:
            argv += ["--select", select]
        argv += list(extra)
        return self._run(argv)

    def deps(self) -> InvocationResult:
        """`dbt deps`: install the packages the project declares (it takes no target or target path)."""
        argv = ["deps", "--project-dir", str(self.project_dir), "--profiles-dir", str(self.profiles_dir),
                "--log-path", str(self.target_path / "logs"), "--quiet", "--no-use-colors"]
        result = self._run(argv)
        if not result.success:
            raise DbtError(f"dbt deps failed in {self.project_dir}: check packages.yml and that every "
                           "package it names is reachable from here")
        return result

    def _run(self, argv: list[str]) -> InvocationResult:
        if self.child is not None:
            reported = self.child.run(argv, self.env)
            success, exception = reported["success"], reported["exception"]
            nodes = tuple(NodeResult(*node) for node in reported["nodes"])
        else:
            success, exception, nodes = self._in_process(argv)
        if exception is not None:
            raise DbtError(f"dbt {argv[0]} failed to run in {self.project_dir}: {exception}")
        return InvocationResult(tuple(argv), bool(success), nodes)

    def _in_process(self, argv: list[str]) -> tuple[bool, Any, tuple[NodeResult, ...]]:
        from dbt.cli.main import dbtRunner

        with _INVOCATION_LOCK, environment(self.env):
            try:
                result = dbtRunner().invoke(argv)
            finally:
                release_duckdb()
        nodes = tuple(
            NodeResult(r.node.unique_id, str(getattr(r.status, "value", r.status)), r.message)
            for r in (getattr(result.result, "results", None) or [])
        )
        return bool(result.success), result.exception, nodes

    def parse(self) -> dict[str, Any]:
        """Parse the project and return manifest.json as a dict."""
        result = self.invoke("parse")
        if not result.success:
            raise DbtError(f"dbt parse failed in {self.project_dir}; run `dbt parse` there to see why")
        return self.manifest()

    def manifest(self) -> dict[str, Any]:
        path = self.target_path / "manifest.json"
        if not path.is_file():
            raise DbtError(f"{path}: no manifest; parse the project first")
        return json.loads(path.read_text())

    def build(self, select: str | None = None, extra: tuple[str, ...] = ()) -> InvocationResult:
        return self.invoke("build", select=select, extra=extra)

    def credentials(self) -> Any:
        """The rendered credentials of the profile's target, through dbt's own profile renderer."""
        from argparse import Namespace

        import yaml
        from dbt.config.profile import Profile, read_profile
        from dbt.config.renderer import ProfileRenderer
        from dbt.flags import set_from_args
        from dbt_common.context import set_invocation_context

        project = yaml.safe_load((self.project_dir / "dbt_project.yml").read_text())
        with _INVOCATION_LOCK, environment(self.env):
            set_from_args(Namespace(PROFILES_DIR=str(self.profiles_dir)), None)
            set_invocation_context(os.environ)
            raw = read_profile(str(self.profiles_dir))
            try:
                profile = Profile.from_raw_profiles(raw, project["profile"], ProfileRenderer({}),
                                                    target_override=self.target)
            except Exception as exc:  # dbt raises its own hierarchy; present it as ours
                raise DbtError(f"{self.profiles_dir / 'profiles.yml'}: {exc}") from exc
        return profile.credentials


def release_duckdb() -> None:
    """dbt-duckdb keeps the file open read-write after a run, which locks Cairn's readers out."""
    connections = sys.modules.get("dbt.adapters.duckdb.connections")
    if connections is not None:
        connections.DuckDBConnectionManager.close_all_connections()
        gc.collect()


class environment:
    """Temporarily overlay environment variables (dbt reads env_var() from os.environ)."""

    def __init__(self, overlay: dict[str, str]):
        self.overlay, self.saved = overlay, {}

    def __enter__(self) -> None:
        for key, value in self.overlay.items():
            self.saved[key] = os.environ.get(key)
            os.environ[key] = value

    def __exit__(self, *exc: object) -> None:
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
