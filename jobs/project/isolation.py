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

The child is a dbt server (`jobs.project.dbt_server`, `DbtServer`): it imports dbt once and answers
invocations one at a time. A verification's builds share one (`DbtServers`, jailed with the sandboxes
root writable), so only its first build pays for a cold dbt; a build that kills the server fails alone,
and the next starts another.

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
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from jobs.core.errors import DbtExited
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
    """Where a dbt invocation on candidate code runs: the isolation, and what it may write and reach.

    With `servers` (the verification's `DbtServers`), the invocation goes to that verification's warm
    server when its paths lie under the servers' root; otherwise to a server started for it alone."""

    isolation: Isolation
    writable: tuple[Path, ...]
    readonly: tuple[Path, ...] = ()  # production's files: readable, never writable
    network: bool = False
    guard: str | None = None  # the sandbox's write guard, run in the child (`Sandbox.guard`; jobs.project.dbt_server)
    servers: DbtServers | None = field(default=None, compare=False)

    def run(self, argv: Sequence[str], overlay: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Run `dbt argv` in the child; its result as `jobs.project.dbt_server` answered it."""
        request = {"argv": list(argv), "cwd": str(self.writable[0]), "guard": self.guard,
                   "env": {k: v for k, v in (overlay or {}).items() if not never_passed(k)}}
        if self.servers is not None and self.servers.serves(self):
            return self.servers.run(self, request)
        with DbtServer(self.isolation, self.writable, self.readonly, self.network) as server:
            return server.run(request)


class DbtServer:
    """A dbt process in one jail (`jobs.project.dbt_server`), answering invocations one at a time until closed.

    Its environment is the allowlist (`scrubbed`); a request's own variables pass the same filter."""

    def __init__(self, isolation: Isolation, writable: Sequence[Path], readonly: Sequence[Path] = (),
                 network: bool = False):
        command = [sys.executable, "-m", "jobs.project.dbt_server"]
        if isolation.isolated:
            command = jail_argv(isolation.bwrap, command, writable=writable, readonly=readonly,
                                hidden=isolation.hidden, network=network)
        self.proc = subprocess.Popen(command, env=scrubbed(os.environ, isolation.environment), cwd=str(writable[0]),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._stderr: deque[str] = deque(maxlen=400)  # the tail, for the error when it dies
        self._drain = threading.Thread(target=self._stderr.extend, args=(self.proc.stderr,), daemon=True)
        self._drain.start()
        self._lock = threading.Lock()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(self, request: Mapping[str, Any]) -> dict[str, Any]:
        with self._lock:
            try:
                self.proc.stdin.write(json.dumps(request) + "\n")
                self.proc.stdin.flush()
                answer = self.proc.stdout.readline()
            except (BrokenPipeError, OSError):
                answer = ""
            if answer:
                return json.loads(answer)
            code = self.proc.wait()
            self._drain.join(timeout=5)
            tail = mask("".join(self._stderr).strip()[-1500:])
            raise DbtExited(f"dbt {request['argv'][0]} exited ({code}) without a result: {tail}")

    def close(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()  # end of requests: the server returns
            except OSError:
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._drain.join(timeout=5)
        self.proc.stdout.close()

    def __enter__(self) -> DbtServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DbtServers:
    """The warm dbt servers of one verification, jailed with the whole sandboxes root writable.

    Every build of a bisection runs in the same server (per network need), so dbt starts cold once per
    verification, not once per build. What that shares: the builds of one verification may write each
    other's sandboxes under the root, and a Python model of one build stays in the process for the next.
    Neither reaches Cairn's secrets or production (the jail is the same), and a revert's code can fake its
    own build's result anyway; verifications of different incidents never share a server."""

    def __init__(self, isolation: Isolation, root: Path, readonly: Sequence[Path] = (), *,
                 prestart: Sequence[bool] = ()):
        """`prestart`: the network needs to start a server for now, so dbt imports while Cairn makes the
        worktree and the clone of the first build (the sandboxes adapter's `network`)."""
        self.isolation, self.root, self.readonly = isolation, Path(root).resolve(), tuple(readonly)
        self._servers: dict[bool, DbtServer] = {}
        self.started = 0  # dbt processes started cold: one per network need, unless a build killed one
        for network in prestart:
            self._server(network)

    def serves(self, child: Child) -> bool:
        return (child.isolation == self.isolation and tuple(child.readonly) == self.readonly
                and all(Path(p).resolve().is_relative_to(self.root) for p in child.writable))

    def run(self, child: Child, request: Mapping[str, Any]) -> dict[str, Any]:
        return self._server(child.network).run(request)

    def _server(self, network: bool) -> DbtServer:
        server = self._servers.get(network)
        if server is None or not server.alive:  # first use, or the last build killed it
            self.root.mkdir(parents=True, exist_ok=True)
            self.started += 1
            server = self._servers[network] = DbtServer(self.isolation, (self.root,), self.readonly, network)
        return server

    def close(self) -> None:
        for server in self._servers.values():
            server.close()
        self._servers.clear()

    def __enter__(self) -> DbtServers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
