"""A deployed copy of the shop: dbt project, git repository and cairn.yml in one directory, as in the demo."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path

from click.testing import CliRunner

from bot.cli import main
from bot.demo import REGRESSION, commit
from jobs.config import load_config
from jobs.core.records import Incident, Observation
from jobs.project.dbt import Dbt
from jobs.project.git import Git
from jobs.runtime import Runtime
from tests.conftest import copy_shop

# Build output and Cairn's own state never belong in the analytics repository's commits.
GITIGNORE = "*.duckdb\n*.duckdb.wal\n.cairn/\ntarget/\nlogs/\ndbt_packages/\n"
# A docs-only edit: a commit that changes no table.
DOCS_EDIT = ("models/marts/_marts.yml", "Primary key; the day.", "Primary key; the calendar day (UTC).")


def at(day: date, hour: int = 1) -> datetime:
    return datetime.combine(day, time(hour), tzinfo=timezone.utc)


def open_incident(store, contract_id: str, at: datetime, change_pct: float, sha: str) -> Incident:
    """An open incident on one bad observation of a metric that was 100: what detection leaves behind."""
    value = 100.0 * (1 + change_pct / 100)
    bad = store.add_observation(Observation(contract_id, at + timedelta(hours=1), value, at - timedelta(days=1), at, sha))
    return store.open_incident(contract_id, severity="high", first_bad=bad, last_good=None, value=value,
                               baseline=None, change_pct=change_pct, reason=f"down {-change_pct:g}%")


def check_at(rt: Runtime, when: datetime, contracts=None) -> list:
    """`jobs.detect.check.check` with the Runtime's clock pinned at `when`, as `cairn check --at` runs it."""
    from jobs.detect.check import check

    rt.clock.set(when)
    return check(rt, contracts)


@dataclass(frozen=True)
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


def run_cli(*args: str, env: dict[str, str] | None = None) -> CliResult:
    """`cairn ARGS` in-process through the real entry point, which turns errors into exit codes."""
    with CliRunner().isolation(env=env) as (stdout, stderr, _):
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        return CliResult(code, stdout.getvalue().decode(), stderr.getvalue().decode())


@dataclass(frozen=True)
class Deployment:
    """The shop project under git, its warehouse file, and the cairn.yml beside them."""

    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / "cairn.yml"

    @property
    def warehouse(self) -> Path:
        return self.root / "warehouse.duckdb"

    @property
    def git(self) -> Git:
        return Git(self.root)

    def head(self) -> str:
        return self.git.head_sha("main")

    def commit(self, message: str, when: datetime) -> str:
        return commit(self.root, message, when)

    def edit(self, path: str, old: str, new: str) -> None:
        target = self.root / path
        text = target.read_text()
        assert old in text, f"{target} no longer holds {old!r}"
        target.write_text(text.replace(old, new, 1))

    def land_regression(self, when: datetime) -> str:
        """Commit bot.demo's REGRESSION (coupon and PayPal payments fall out of order revenue)."""
        REGRESSION.apply(self.root)
        return self.commit(REGRESSION.message, when)

    def rebuild(self, select: str = "int_order_payments+") -> None:
        """Deploy the checked-out code: rebuild `select` from scratch (all days, not the incremental tail)."""
        result = self.production_dbt().invoke("run", select=select, extra=("--full-refresh",))
        assert result.success and result.nodes, result.nodes

    def production_dbt(self) -> Dbt:
        """The deploy's own dbt, building the warehouse file beside the project."""
        return Dbt(self.root, self.root, env={"CAIRN_DUCKDB_PATH": str(self.warehouse)},
                   target_path=self.root / "target")

    def run(self) -> None:
        """The nightly production run: `dbt run` of the checked-out code, incremental models incrementally."""
        result = self.production_dbt().invoke("run")
        assert result.success and result.nodes, result.nodes

    def checkout(self, sha: str) -> None:
        """Point the deployed branch (and the working tree) at `sha`."""
        self.git.run("reset", "-q", "--hard", sha)

    def install(self, warehouse: Path) -> None:
        """Put a warehouse file built elsewhere in place, as a deploy would leave it."""
        shutil.copyfile(warehouse, self.warehouse)

    def runtime(self, store_url: str) -> Runtime:
        """A Runtime on this deployment with its own store; the dbt parse state is shared."""
        return Runtime(load_config(self.config_path, env={"CAIRN_DATABASE_URL": store_url}))

    def cli(self, *args: str, store_url: str) -> CliResult:
        return run_cli("--config", str(self.config_path), *args, env={"CAIRN_DATABASE_URL": store_url})


def deploy_shop(root: Path, warehouse: Path, first_commit_at: datetime) -> Deployment:
    """Copy examples/shop and a built warehouse to `root`; `git init` and commit the project."""
    copy_shop(root)
    (root / ".gitignore").write_text(GITIGNORE)
    shutil.copyfile(warehouse, root / "warehouse.duckdb")
    deployment = Deployment(root)
    deployment.git.run("init", "-q", "-b", "main")
    deployment.commit("Shop analytics project", first_commit_at)
    return deployment


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"
