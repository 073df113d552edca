"""Verification on a clone: real git worktrees, real dbt builds on a locked-down DuckDB copy."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from statistics import median

import duckdb
import pytest
import yaml

from jobs.contracts.measure import evaluate
from jobs.contracts.spec import Contract
from jobs.core.records import BaselineStats, Candidate, Verdict, Verification
from jobs.project.dbt import Dbt
from jobs.project.followers import conflicting_followers
from jobs.project.git import Git
from jobs.project.worktree import Worktree
from jobs.verify.bisect import find_fix
from jobs.verify.verification import Target, VerifyError, selector, verify_revert
from jobs.warehouse.duckdb import DuckDBWarehouse
from jobs.warehouse.sandbox import LOCKDOWN, DuckDBSandboxes, ProductionModified, Sandbox, SandboxError, gc_sandboxes
from tests.conftest import SHOP, copy_shop

os.environ["DBT_SEND_ANONYMOUS_USAGE_STATS"] = "false"

UTC = timezone.utc
AT = datetime(2026, 10, 6, 6, tzinfo=UTC)  # the shop's last loaded day, Oct 5, is the window
PAYMENTS_SQL = "shop/models/intermediate/int_order_payments.sql"
REVENUE_SQL = "shop/models/marts/fct_revenue.sql"
ORDERS_SQL = "shop/models/marts/fct_orders.sql"
SUCCEEDED = "      and payment_status = 'succeeded'\n"
# Two more of the shop's contracts (models/marts/_marts.yml), for a group's build: one the payments
# regression's revert rebuilds, one it cannot reach.
ORDERS_COUNT = Contract(id="orders.daily_count", kind="row_count", model="fct_orders", time_column="ordered_at",
                        window="day", direction="drop")
MRR_LEVEL = Contract(id="mrr.level", kind="volume", model="fct_mrr", expr="max(mrr)", time_column="date_day",
                     window="day", direction="drop")


@dataclass(frozen=True)
class History:
    """A git repo of the shop with a regression deployed and built, and side branches per scenario."""

    repo: Path
    prod_db: Path
    prod_state: Path
    sandboxes: Path
    sha: dict[str, str]
    contract: Contract
    band: BaselineStats
    healthy: float
    before: float


def _git(repo: Path, *args: str) -> str:
    return Git(repo).run("-c", "user.name=Cairn Test", "-c", "user.email=test@cairn.invalid", *args)


def _commit(repo: Path, message: str, path: str, old: str, new: str) -> str:
    file = repo / path
    text = file.read_text()
    assert old in text, f"{old!r} not in {path}"
    file.write_text(text.replace(old, new, 1))
    _git(repo, "commit", "-qam", message)
    return Git(repo).head_sha()


def _measure(db: Path, manifest: dict, contract: Contract, at: datetime) -> float:
    with DuckDBWarehouse(db) as warehouse:
        [observation] = evaluate(warehouse, manifest, [contract], at)
    return observation.value


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def history(built_shop, tmp_path_factory) -> History:
    """Healthy production from the session build, then the regression deployed and built on it."""
    root = tmp_path_factory.mktemp("verify")
    repo = root / "repo"
    copy_shop(repo / "shop")
    Git(repo).run("init", "-q", "-b", "main")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "Shop project")
    sha = {"base": Git(repo).head_sha()}
    prod_db = root / "prod" / "warehouse.duckdb"
    prod_db.parent.mkdir()
    shutil.copyfile(built_shop.db_path, prod_db)

    declared = yaml.safe_load((SHOP / "cairn.yml").read_text())["contracts"]
    contract = Contract.model_validate(next(c for c in declared if c["id"] == "revenue.net_daily"))
    same_weekday = [_measure(prod_db, built_shop.manifest, contract, AT - timedelta(weeks=weeks))
                    for weeks in (1, 2, 3, 4)]
    # Four healthy same-weekday values, widened by the 10% a noisy business moves day to day.
    band = BaselineStats(expected=median(same_weekday), lower=0.9 * min(same_weekday), upper=1.1 * max(same_weekday),
                         n=4, seasonal=True)
    healthy = _measure(prod_db, built_shop.manifest, contract, AT)

    sha["regression"] = _commit(repo, "Only count card and bank payments", PAYMENTS_SQL, SUCCEEDED,
                                SUCCEEDED + "      and payment_method in ('card', 'bank_transfer')\n")
    production = Dbt(repo / "shop", repo / "shop", target_path=root / "prod-target",
                     env={"CAIRN_DUCKDB_PATH": str(prod_db)})
    assert production.build().success
    prod_state = root / "prod-state"
    prod_state.mkdir()
    shutil.copyfile(root / "prod-target" / "manifest.json", prod_state / "manifest.json")
    before = _measure(prod_db, production.manifest(), contract, AT)

    sha["comment"] = _commit(repo, "Explain revenue", REVENUE_SQL, "-- Daily revenue.",
                             "-- Daily revenue (net).")
    for branch, change in {
        "conflicting": ("Also count PayPal", PAYMENTS_SQL, "'card', 'bank_transfer')",
                        "'card', 'bank_transfer', 'paypal')"),
        "adds_column": ("Count payment methods", PAYMENTS_SQL, "count(*) as payment_count,",
                        "count(*) as payment_count,\n        count(distinct payment_method) as method_count,"),
        "escape": ("Sneaky hook", REVENUE_SQL, "-- Daily revenue.", (
            "{{ config(pre_hook=[\"DETACH DATABASE IF EXISTS prod2\", "
            f"\"ATTACH '{prod_db}' AS prod2\", "
            "\"INSERT INTO prod2.main.fct_revenue SELECT * FROM prod2.main.fct_revenue LIMIT 1\"]) }}\n"
            "-- Daily revenue.")),
    }.items():
        _git(repo, "checkout", "-q", "-b", branch, sha["regression"])
        sha[branch] = _commit(repo, *change)
    sha["uses_column"] = _commit(repo, "Show payment methods per order", ORDERS_SQL,
                                 "payments.primary_payment_method,",
                                 "payments.primary_payment_method,\n        payments.method_count,")
    # The culprit, a later commit rewriting its line, and a decoy after it in another file.
    _git(repo, "checkout", "-q", "-b", "followed", sha["regression"])
    sha["paypal"] = _commit(repo, "Also count PayPal", PAYMENTS_SQL, "'card', 'bank_transfer')",
                            "'card', 'bank_transfer', 'paypal')")
    sha["followed"] = _commit(repo, "Explain revenue", REVENUE_SQL, "-- Daily revenue.", "-- Daily revenue (net).")
    _git(repo, "checkout", "-q", "main")
    return History(repo, prod_db, prod_state, root / "sandboxes", sha, contract, band, healthy, before)


def _verify(h: History, deployed: str, shas: list[str], models: list[str], **overrides) -> Verification:
    arguments = dict(
        sandboxes=DuckDBSandboxes(h.prod_db, h.sandboxes),
        repo=h.repo, project_subdir="shop", deployed_sha=h.sha[deployed], shas=[h.sha[s] for s in shas],
        models=models, contract=h.contract, metric_model="fct_revenue",
        prod_state=h.prod_state, band=h.band, before=h.before, at=AT, incident_id=12,
        sandboxes_root=h.sandboxes,
    )
    return verify_revert(**{**arguments, **overrides})


@pytest.fixture
def leaves_nothing(history):
    """Every test using this asserts: no sandbox, worktree or worktree registration survives it."""
    yield
    # Worktrees are made under the sandboxes root, so this also covers them.
    assert not history.sandboxes.exists() or not any(history.sandboxes.iterdir())
    assert Git(history.repo).run("worktree", "list", "--porcelain").count("worktree ") == 1


@pytest.mark.slow
def test_scenario_is_a_real_regression(history) -> None:
    assert history.band.contains(history.healthy)
    assert not history.band.contains(history.before)


@pytest.mark.slow
def test_reverting_the_regression_is_verified(history, leaves_nothing) -> None:
    prod_bytes = _sha256(history.prod_db)
    v = _verify(history, "regression", ["regression"], ["model.shop.int_order_payments"])
    assert v.verdict is Verdict.verified, v.detail
    assert history.band.contains(v.after) and v.after == pytest.approx(history.healthy)
    assert v.before == history.before and v.sha == v.reverted[0] == history.sha["regression"]
    assert v.clone_id.startswith("duckdb:incident-12-")
    assert "--select int_order_payments+,+fct_revenue" in v.dbt_command
    assert f"--defer --state {history.prod_state} --favor-state" in v.dbt_command
    assert "--target cairn_sandbox" in v.dbt_command and str(history.sandboxes) in v.dbt_command
    assert v.tests["pass"] > 10 and v.tests["fail"] == v.tests["error"] == v.tests["skip"] == 0
    assert set(v.durations) == {"worktree", "revert", "packages", "scope", "clone", "build", "measure", "evidence"}
    assert [d.model for d in v.deltas] == ["int_order_payments"] and v.deltas[0].removed > 0
    assert v.packages is None  # the shop declares no dbt packages
    assert _sha256(history.prod_db) == prod_bytes


@pytest.mark.slow
def test_reverting_an_innocent_commit_does_not_recover(history, leaves_nothing) -> None:
    v = _verify(history, "comment", ["comment"], ["fct_revenue"])
    assert v.verdict is Verdict.not_recovered, v.detail
    assert v.after == pytest.approx(history.before)
    assert v.tests["pass"] > 0 and v.tests["fail"] == 0


@pytest.mark.slow
def test_a_groups_build_measures_every_members_contract_on_the_same_sandbox(history, leaves_nothing) -> None:
    """One culprit, three broken contracts: one build through all their models, each judged in its own band."""
    orders, mrr = ORDERS_COUNT, MRR_LEVEL
    at_least_one = BaselineStats(expected=1.0, lower=1.0, upper=math.inf, n=4)
    v = _verify(history, "regression", ["regression"], ["model.shop.int_order_payments"],
                also=[Target(13, orders, at_least_one, 0.0), Target(14, mrr, at_least_one, 0.0)])
    assert ("--select int_order_payments+,+fct_revenue int_order_payments+,+fct_orders "
            "int_order_payments+,+fct_mrr") in v.dbt_command
    revenue, counted, unreached = v.members
    assert (revenue.incident_id, revenue.verdict, revenue.before) == (12, Verdict.verified, history.before)
    assert revenue.after == pytest.approx(history.healthy) and v.after == revenue.after
    production = json.loads((history.prod_state / "manifest.json").read_text())
    assert (counted.incident_id, counted.verdict) == (13, Verdict.verified)
    assert counted.after == _measure(history.prod_db, production, orders, AT) > 0  # rebuilt on the sandbox
    # The revert cannot reach fct_mrr: it is not measured, and it keeps the group from verifying.
    assert (unreached.incident_id, unreached.verdict, unreached.after) == (14, Verdict.not_recovered, None)
    assert "does not reach fct_mrr" in unreached.detail
    assert v.verdict is Verdict.not_recovered and "2 of the group's 3 contracts recovered" in v.detail


@pytest.mark.slow
def test_models_that_do_not_feed_the_metric_do_not_recover(history, leaves_nothing) -> None:
    v = _verify(history, "comment", ["comment"], ["dim_customers"])
    assert v.verdict is Verdict.not_recovered and "feeds fct_revenue" in v.detail
    assert v.after is None and v.tests["fail"] == v.tests["error"] == 0


@pytest.mark.slow
def test_a_conflicting_revert_is_a_conflict(history, leaves_nothing) -> None:
    v = _verify(history, "conflicting", ["regression"], ["int_order_payments"])
    assert v.verdict is Verdict.conflict
    assert history.sha["regression"][:7] in v.detail and "int_order_payments.sql" in v.detail
    assert v.clone_id == "" and v.after is None and "build" not in v.durations


@pytest.mark.slow
def test_a_revert_that_breaks_the_build_is_build_failed(history, leaves_nothing) -> None:
    v = _verify(history, "uses_column", ["adds_column"], ["int_order_payments"])
    assert v.verdict is Verdict.build_failed
    assert "model.shop.fct_orders: error" in v.detail and "method_count" in v.detail
    assert "model.shop.fct_revenue: skipped" in v.detail
    assert v.after is None and v.clone_id


@pytest.mark.slow
def test_sql_in_a_model_cannot_write_production(history, leaves_nothing) -> None:
    """THE safety test: a pre-hook detaches, re-attaches production read-write and inserts."""
    prod_bytes, prod_stat = _sha256(history.prod_db), history.prod_db.stat()
    v = _verify(history, "escape", ["regression"], ["int_order_payments"])
    assert v.verdict is Verdict.build_failed
    assert "model.shop.fct_revenue: error" in v.detail
    assert "file system operations are disabled by configuration" in v.detail
    assert _sha256(history.prod_db) == prod_bytes
    assert history.prod_db.stat().st_mtime_ns == prod_stat.st_mtime_ns


@pytest.mark.slow
def test_an_escaping_exception_still_cleans_up(history, leaves_nothing) -> None:
    with pytest.raises(VerifyError, match="fct_nowhere"):
        _verify(history, "regression", ["regression"], ["int_order_payments"], metric_model="fct_nowhere",
                contract=history.contract.model_copy(update={"model": "fct_nowhere"}))


@pytest.mark.slow
def test_a_missing_deployed_sha_leaves_nothing(history, leaves_nothing) -> None:
    with pytest.raises(Exception, match="worktree add"):
        _verify(history, "regression", ["regression"], ["x"], deployed_sha="0" * 40)
    with pytest.raises(VerifyError, match="pass the contract's own model"):
        _verify(history, "regression", ["regression"], ["x"], metric_model="fct_orders")


def test_selector_is_a_union_of_intersections() -> None:
    assert selector(["model.shop.a", "b", "b"], "m") == "a+,+m b+,+m"
    assert selector(["model.shop.c.v2"], "model.shop.m") == "c.v2+,+m"
    assert selector(["a", "b"], "m", "model.shop.n", "m") == "a+,+m b+,+m a+,+n b+,+n"  # a group's metrics


# --- sandbox and worktree on their own ----------------------------------------------------------


@pytest.fixture
def small_prod(tmp_path) -> Path:
    path = tmp_path / "prod" / "shop.duckdb"
    path.parent.mkdir()
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE orders AS SELECT range AS id FROM range(100)")
    return path


def test_sandbox_copies_and_locks_down(small_prod, tmp_path) -> None:
    with Sandbox.create(small_prod, tmp_path / "boxes", 7, profile="shop") as box:
        assert box.path.name == small_prod.name and box.dir.name.startswith("incident-7-")
        profile = yaml.safe_load((box.profiles_dir / "profiles.yml").read_text())
        assert profile["shop"]["outputs"]["cairn_sandbox"]["config_options"] == LOCKDOWN
        with duckdb.connect(str(box.path), config=LOCKDOWN) as con:
            con.execute("INSERT INTO orders VALUES (100)")  # the copy is writable
            for sql in (f"ATTACH '{small_prod}' AS p", "SET enable_external_access = true",
                        "SET lock_configuration = false", f"COPY orders TO '{small_prod.parent}/x.csv'"):
                with pytest.raises(duckdb.Error):
                    con.execute(sql)
        box.check_production()
    assert not box.dir.exists()


def test_a_changed_production_is_loud(small_prod, tmp_path) -> None:
    with Sandbox.create(small_prod, tmp_path / "boxes", 7, profile="shop") as box:
        with duckdb.connect(str(small_prod)) as con:
            con.execute("INSERT INTO orders VALUES (100)")
        with pytest.raises(ProductionModified, match="PRODUCTION CHANGED"):
            box.check_production()


def test_sandbox_refuses_a_production_held_for_writing(small_prod, tmp_path) -> None:
    with duckdb.connect(str(small_prod)):
        with pytest.raises(SandboxError, match="verify again after that run"):
            Sandbox.create(small_prod, tmp_path / "boxes", 7, profile="shop")
    assert not any((tmp_path / "boxes").iterdir())


def test_sandbox_is_removed_on_exception(small_prod, tmp_path) -> None:
    with pytest.raises(RuntimeError):
        with Sandbox.create(small_prod, tmp_path / "boxes", 7, profile="shop") as box:
            raise RuntimeError("boom")
    assert not box.dir.exists()


def test_gc_removes_only_stale_sandboxes(tmp_path) -> None:
    stale, fresh, other = tmp_path / "incident-1-aaaaaa", tmp_path / "incident-2-bbbbbb", tmp_path / "keep"
    now = datetime(2026, 11, 23, 6, tzinfo=timezone.utc)
    for directory, age in ((stale, 2), (fresh, 0.5), (other, 2)):
        directory.mkdir()
        made = (now - timedelta(hours=age)).timestamp()
        os.utime(directory, (made, made))
    assert gc_sandboxes(tmp_path, older_than=timedelta(hours=1), now=now) == [stale]
    assert not stale.exists() and fresh.exists() and other.exists()
    assert gc_sandboxes(tmp_path / "missing", older_than=timedelta(0), now=now) == []


@pytest.mark.slow
def test_worktree_reverts_newest_first_and_is_removed(history) -> None:
    with Worktree.create(history.repo, history.sha["comment"]) as tree:
        assert tree.revert([history.sha["regression"], history.sha["comment"]])
        payments = (tree.path / PAYMENTS_SQL).read_text()
        assert "payment_method in" not in payments and "(net)" not in (tree.path / REVENUE_SQL).read_text()
        assert Git(tree.path).head_sha() == history.sha["comment"]  # nothing committed
    assert not tree.path.exists()
    assert Git(history.repo).run("worktree", "list", "--porcelain").count("worktree ") == 1


@pytest.mark.slow
def test_worktree_conflict_names_the_commit(history) -> None:
    with Worktree.create(history.repo, history.sha["conflicting"]) as tree:
        assert not tree.revert([history.sha["regression"]])
        assert tree.conflict == history.sha["regression"]
        assert tree.conflict_files == (PAYMENTS_SQL,)
        assert not subprocess.run(["git", "-C", str(tree.path), "status", "--porcelain"],
                                  capture_output=True, text=True).stdout


def _search(h: History, deployed: str, culprit: str):
    """find_fix over the one suspect, building on the clone as the verify stage does."""
    suspect = Candidate(sha=h.sha[culprit], author="T", authored_at=AT, message=culprit, files=(PAYMENTS_SQL,),
                        models=("model.shop.int_order_payments",), distance=2, touches_metric_columns=True)

    def try_revert(group, followers=()):
        return _verify(h, deployed, [culprit], list(group[0].models), followers=followers)

    return find_fix([suspect], try_revert, max_builds=8, followers=lambda c: conflicting_followers(
        h.repo, c.sha, h.sha[deployed], h.sandboxes, label="12"))


@pytest.mark.slow
def test_a_conflicting_revert_is_verified_with_the_commit_that_changes_its_lines(history, leaves_nothing) -> None:
    search = _search(history, "followed", "regression")
    conflict, group = search.attempts
    assert conflict.verdict is Verdict.conflict and conflict.reverted == (history.sha["regression"],)
    assert search.fix is group and group.verdict is Verdict.verified, group.detail
    # Newest first, and the decoy (a later commit of another file) is not reverted.
    assert group.reverted == (history.sha["paypal"], history.sha["regression"])
    assert group.sha == history.sha["regression"] and group.followers == (history.sha["paypal"],)
    assert group.after == pytest.approx(history.healthy)


@pytest.mark.slow
def test_a_culprit_that_reverts_cleanly_is_still_a_single_commit_revert(history, leaves_nothing) -> None:
    search = _search(history, "comment", "regression")
    assert search.builds == 1 and search.fix is not None and search.fix.verdict is Verdict.verified
    assert search.fix.reverted == (history.sha["regression"],) and search.fix.followers == ()
