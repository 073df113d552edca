"""dbt on candidate code runs in a child process: no secret in its environment, production out of reach.

A revert's project is code Cairn did not write: its Jinja runs when dbt parses it, its Python
models run inside the dbt process. Every dbt invocation on a worktree (deps, parse, compile,
build) therefore runs in a child whose environment is an allowlist (never Cairn's tokens, store or
Redis URLs), and, where bubblewrap works, inside its own mount, user, PID, IPC and UTS namespaces:
the whole filesystem read-only except the paths the invocation must write (the sandbox directory,
the worktree for `dbt deps`), production's DuckDB file bound read-only over itself, secret files
replaced by an empty one, a fresh /proc and a minimal /dev, no capabilities, and no network unless
the warehouse is reached over one. We run as root, so permissions alone protect nothing: the
read-only binds do.

Cairn's own parse of the deployed project stays in-process (`jobs.project.dbt`): it runs no revert.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from jobs.core.errors import DbtError
from jobs.core.masking import mask

log = logging.getLogger(__name__)

MODES = ("auto", "bwrap", "none")
# What dbt and a generated sandbox profile need; anything else must be named in verification.environment.
PASSED = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
          "GOOGLE_APPLICATION_CREDENTIALS", "CLOUDSDK_CONFIG", "LD_PRELOAD")
# FAKETIME* and LD_PRELOAD: a clock faked for Cairn (libfaketime, .ci/run) is faked for its dbt too.
PASSED_PREFIXES = ("LC_", "DBT_", "FAKETIME")
# Cairn's own credentials and connections: never passed, whatever the configuration says.
NEVER_PREFIXES = ("GITHUB_", "SLACK_", "ANTHROPIC_", "CAIRN_", "REDIS_")
_ROOT = str(Path(__file__).resolve().parents[2])  # where `jobs` is importable from, for the child


def never_passed(name: str) -> bool:
    return name.upper().startswith(NEVER_PREFIXES)


def scrubbed(environ: Mapping[str, str], extra: Sequence[str] = (), overlay: Mapping[str, str] | None = None
             ) -> dict[str, str]:
    """The child's environment: the allowlist, the configured extras and `overlay`, minus Cairn's secrets."""
    env = {k: v for k, v in environ.items() if k in PASSED or k.startswith(PASSED_PREFIXES) or k in extra}
    env.update(overlay or {})
    env = {k: v for k, v in env.items() if not never_passed(k)}
    env["DBT_SEND_ANONYMOUS_USAGE_STATS"] = "false"
    env["PYTHONPATH"] = _ROOT
    env.setdefault("PATH", os.defpath)
    return env


@dataclass(frozen=True)
class Isolation:
    """How sandbox dbt runs here: `bwrap` is the working binary, or None (unisolated, and `reason` says why)."""

    mode: str = "auto"
    bwrap: str | None = None
    reason: str = ""
    environment: tuple[str, ...] = ()  # more variables the sandbox profile reads (verification.environment)
    hidden: tuple[Path, ...] = ()  # files no build may read (Cairn's key file, its SQLite store)

    @property
    def isolated(self) -> bool:
        return self.bwrap is not None

    @property
    def refuses_all(self) -> bool:
        """`bwrap` was required and does not work: nothing builds."""
        return self.mode == "bwrap" and not self.isolated

    def describe(self) -> str:
        """What the evidence says: 'built isolated (bwrap)' or why not."""
        if self.isolated:
            return "built isolated (bwrap): no secrets in its environment, production read-only, no network"
        return f"built without OS isolation ({self.reason}); secrets removed from its environment"


def resolve(mode: str = "auto", bwrap: str = "bwrap", environment: Sequence[str] = (),
            hidden: Sequence[Path] = ()) -> Isolation:
    """The isolation `verification.isolation` asks for, as this machine can give it (bwrap self-tested once)."""
    if mode not in MODES:
        raise ValueError(f"isolation mode {mode!r}; use one of {', '.join(MODES)}")
    common = dict(mode=mode, environment=tuple(environment), hidden=tuple(Path(p) for p in hidden))
    if mode == "none":
        return Isolation(**common, reason="verification.isolation is none")
    found = shutil.which(bwrap)
    problem = f"no bwrap at {bwrap}" if found is None else _self_test(found)
    if problem:
        log.warning("sandbox builds are not OS-isolated: %s", problem)
        return Isolation(**common, reason=problem)
    return Isolation(**common, bwrap=found)


@lru_cache(maxsize=8)
def _self_test(bwrap: str) -> str:
    """'' when bwrap jails as `jail_argv` needs: a writable bind writes, a read-only one and the root do not."""
    with tempfile.TemporaryDirectory(prefix="cairn-bwrap-") as scratch:
        writable, protected = Path(scratch, "w"), Path(scratch, "p")
        writable.mkdir()
        protected.write_text("")
        script = (f"echo ok > {writable}/ok && ! (echo x >> {protected}) 2>/dev/null "
                  f"&& ! (echo x > /cairn-bwrap-probe) 2>/dev/null")
        argv = jail_argv(bwrap, ["/bin/sh", "-c", script], writable=[writable], readonly=[protected], network=False)
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"bwrap failed its self-test: {error}"
        if proc.returncode != 0 or not (writable / "ok").is_file() or protected.read_text():
            return f"bwrap failed its self-test (exit {proc.returncode}: {proc.stderr.strip()[:200]})"
    return ""


def jail_argv(bwrap: str, argv: Sequence[str], *, writable: Sequence[Path], readonly: Sequence[Path] = (),
              hidden: Sequence[Path] = (), network: bool) -> list[str]:
    """`argv` under bwrap: everything read-only but `writable`; `readonly` re-bound read-only after them."""
    args = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
            "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--cap-drop", "ALL", "--die-with-parent", "--new-session"]
    if not network:
        args.append("--unshare-net")
    for path in writable:
        args += ["--bind", str(path), str(path)]
    for path in readonly:  # after the writable binds: production stays read-only even beneath one
        if Path(path).exists():
            args += ["--ro-bind", str(path), str(path)]
    for path in hidden:
        if Path(path).is_file():
            args += ["--ro-bind", "/dev/null", str(path)]
    return [*args, "--", *argv]


@dataclass(frozen=True)
class Child:
    """Where a dbt invocation on candidate code runs: the isolation, and what it may write and reach."""

    isolation: Isolation
    writable: tuple[Path, ...]
    readonly: tuple[Path, ...] = ()  # production's files: readable, never writable
    network: bool = False
    guard: str | None = None  # the sandbox's write guard, run in the child (`Sandbox.guard`; jobs.project.dbt_child)

    def run(self, argv: Sequence[str], result_dir: Path, overlay: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Run `dbt argv` in the child; its result as `jobs.project.dbt_child` wrote it."""
        result_dir.mkdir(parents=True, exist_ok=True)
        result = result_dir / "cairn-invocation.json"
        result.unlink(missing_ok=True)
        command = [sys.executable, "-m", "jobs.project.dbt_child", str(result),
                   *(["--guard", self.guard] if self.guard else []), "--", *argv]
        if self.isolation.isolated:
            command = jail_argv(self.isolation.bwrap, command, writable=self.writable, readonly=self.readonly,
                                hidden=self.isolation.hidden, network=self.network)
        env = scrubbed(os.environ, self.isolation.environment, overlay)
        proc = subprocess.run(command, env=env, capture_output=True, text=True, cwd=str(self.writable[0]))
        if not result.is_file():
            tail = mask((proc.stderr or proc.stdout or "").strip()[-1500:])
            raise DbtError(f"dbt {argv[0]} exited ({proc.returncode}) without a result: {tail}")
        return json.loads(result.read_text())
